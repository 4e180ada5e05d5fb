"""Pure policy decisions for dialgate: no sockets, no clock reads, no imports from gateway.

Entry points for the gateway:

- `build_context(...)` → `CallContext` (raises `AddressIncompleteError`, 484);
- `build_pipeline(PolicyDeps(...))` → `Pipeline`; `pipeline.decide(ctx)` → `Decision`;
- `Decision.reason_header` / `Decision.retry_after_header` for the SIP answer;
- storage protocols the store implements: `CardSource`, `CardUsageView`,
  `DestinationHistory`, `AgentUsageView`, `ConsentLookup`, `DncLookup`;
  `would_exceed` for the store's atomic re-check.
"""

from policies.agent import AgentLimits, AgentLimitsPolicy, AgentUsage, AgentUsageView
from policies.allowlist import DestinationPolicy
from policies.consent import (
    ConsentLookup,
    ConsentMode,
    ConsentPolicy,
    ConsentRecord,
    ConsentRegistry,
    ConsentStatus,
    parse_consent_csv,
)
from policies.context import CallContext, Destination, build_context, normalize
from policies.decision import Decision, RejectReason, reason_header
from policies.dnc import DncEntry, DncList, DncLookup, DncPolicy, DncRegistry, DncSource
from policies.emergency import EmergencyBypass, EmergencyNumbers
from policies.errors import AddressIncompleteError, PolicyError, StoreUnavailableError
from policies.frequency import (
    DestinationHistory,
    FrequencyCap,
    FrequencyPolicy,
    FrequencyRule,
    HistoryKind,
)
from policies.hours import CallingHours, CallingHoursPolicy
from policies.pipeline import (
    DEFAULT_ORDER,
    POLICY_FACTORIES,
    Pipeline,
    Policy,
    PolicyDeps,
    build_pipeline,
    register_policy,
)
from policies.privacy import mask_number
from policies.quotas import (
    CallOutcome,
    CardSnapshot,
    CardState,
    CardUsage,
    CardUsageView,
    Exhausted,
    Headroom,
    QuotaLimit,
    QuotaProfile,
    evaluate_card,
    would_exceed,
)
from policies.selection import CardSelection, CardSource, rank_cards
from policies.timeutil import day_bounds, parse_windows

__all__ = [
    "DEFAULT_ORDER",
    "POLICY_FACTORIES",
    "AddressIncompleteError",
    "AgentLimits",
    "AgentLimitsPolicy",
    "AgentUsage",
    "AgentUsageView",
    "CallContext",
    "CallOutcome",
    "CallingHours",
    "CallingHoursPolicy",
    "CardSelection",
    "CardSnapshot",
    "CardSource",
    "CardState",
    "CardUsage",
    "CardUsageView",
    "ConsentLookup",
    "ConsentMode",
    "ConsentPolicy",
    "ConsentRecord",
    "ConsentRegistry",
    "ConsentStatus",
    "Decision",
    "Destination",
    "DestinationHistory",
    "DestinationPolicy",
    "DncEntry",
    "DncList",
    "DncLookup",
    "DncPolicy",
    "DncRegistry",
    "DncSource",
    "EmergencyBypass",
    "EmergencyNumbers",
    "Exhausted",
    "FrequencyCap",
    "FrequencyPolicy",
    "FrequencyRule",
    "Headroom",
    "HistoryKind",
    "Pipeline",
    "Policy",
    "PolicyDeps",
    "PolicyError",
    "QuotaLimit",
    "QuotaProfile",
    "RejectReason",
    "StoreUnavailableError",
    "build_context",
    "build_pipeline",
    "day_bounds",
    "evaluate_card",
    "mask_number",
    "normalize",
    "parse_consent_csv",
    "parse_windows",
    "rank_cards",
    "reason_header",
    "register_policy",
    "would_exceed",
]
