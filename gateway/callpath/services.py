"""The call path's services, composed once from the settings: what the B2BUA is given.

:class:`CallServices` is the bundle the relay works with (store, usage ledger,
card manager, policy pipeline, card picker, CDR writer, the settings);
:func:`services_from_settings` builds it (SQLite alone, or with ``[store] redis``
the shared ledger and card states), recovers the ledger's open reservations and
replays the CDR spool a dead process left.

This module must never handle a SIP message, decide a call, or hold state of
its own after it has built the services.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from gateway.cards import CardManager
from gateway.store import StoreUnavailable
from gateway.store.spool import CdrWriter

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.store import CallPathStore, SQLiteStore, UsageLedger
    from gateway.workers import WorkerRole
    from policies.emergency import EmergencyNumbers
    from policies.pipeline import Pipeline
    from policies.quotas import QuotaProfile
    from policies.selection import CardSelection

__all__ = ["CallServices", "services_from_settings", "spool_path"]

log = structlog.get_logger("gateway.callpath.services")


@dataclass(slots=True)
class CallServices:
    """What the B2BUA needs besides the endpoint: store, cards, policies, settings."""

    settings: Settings
    store: CallPathStore  # CDRs, calls in progress, agent bindings (gateway.store.protocols)
    ledger: UsageLedger
    cards: CardManager
    pipeline: Pipeline
    emergency: EmergencyNumbers
    profiles: dict[str, QuotaProfile]
    timezones: dict[str, str]
    probation_of: dict[str, str]
    selection: CardSelection | None = None  # the one card picker (failover); None: no failover
    cdrs: CdrWriter | None = None  # None: CDRs straight to ``store``, spooled in memory only


def services_from_settings(
    settings: Settings,
    store: SQLiteStore,
    *,
    now: float,
    carrier_available: Callable[[str], bool] | None = None,
    worker: WorkerRole | None = None,
) -> CallServices:
    """Wire the store, the card manager and the policy pipeline for the call path.

    The pipeline runs every policy of DESIGN.md in order over the SQLite store
    (DNC, consent, destination history and agent usage all live there); card
    selection reserves through the usage ledger (Redis when ``[store] redis``
    is set) before the INVITE leaves.

    With ``[store] redis``: the ledger is a ``MirroredLedger`` (Redis decides
    for every instance, SQLite keeps the record), card states go through a
    ``SharedCardRepository`` (``HealthRunner`` syncs them on a timer and
    closes the Redis client at stop), and the ledger's ``recover`` orphans
    this node's reservations left open and rehydrates cold cards first.

    ``worker`` (one process of ``dialgate run --workers N``): the store's
    ``owner`` must already be set (:attr:`gateway.store.sqlite.SQLiteStore.owner`);
    the Redis node name gets the worker's owner appended and the CDR spool is
    the worker's own.
    """
    from gateway.cards import (
        StoreCardSource,
        card_defs_from_settings,
        probation_profiles_from_settings,
        quota_profiles_from_settings,
        rules_from_settings,
        terms_from_settings,
    )
    from gateway.policy_config import policy_deps_kwargs
    from gateway.store import CardRepository, ledger_from_settings
    from policies.pipeline import PolicyDeps, build_pipeline
    from policies.selection import CardSelection

    policy = settings.policy
    repo: CardRepository = store
    if settings.store.redis is None:
        ledger = ledger_from_settings(settings, store, node="gw1")
    else:
        from gateway.store.redis import MirroredLedger, SharedCardRepository, node_name

        node = node_name(settings)
        if worker is not None:  # each worker recovers its own reservations in Redis
            node = f"{node}/{worker.owner}"
        ledger = ledger_from_settings(settings, store, node=node)
        assert isinstance(ledger, MirroredLedger)
        repo = SharedCardRepository(store, ledger.shared)
    ledger.recover(now)
    cards = CardManager(
        repo,
        rules=rules_from_settings(settings),
        terms=terms_from_settings(settings),
        carrier_available=carrier_available,
    )
    cards.load(card_defs_from_settings(settings), now)
    profiles = quota_profiles_from_settings(settings)
    timezones = {c.name: c.timezone for c in settings.carriers}
    probation_of = probation_profiles_from_settings(settings)
    # [policy]: emergency numbers, allowed regions, consent, hours, frequency, agent caps.
    policy_kwargs = policy_deps_kwargs(policy)
    emergency = policy_kwargs["emergency"]
    default_pool = settings.cards[0].pool if settings.cards else "main"
    source = StoreCardSource(
        cards,
        ledger,
        profiles=profiles,
        timezones=timezones,
        probation_of=probation_of,
        default_pool=default_pool,
    )
    deps = PolicyDeps(
        dnc=store,
        consent=store,
        history=store,
        agents=store,
        cards=source,
        **policy_kwargs,
    )
    cdrs = CdrWriter(store, spool_path(store, settings.store.spool_dir))
    try:
        cdrs.recover()  # what a process that died during a store outage spooled
        if worker is not None and worker.sweep:
            # Worker 0 at the first start of a set: what a single process left too.
            CdrWriter(store, spool_path(store, settings.store.spool_dir, owner="")).recover()
    except StoreUnavailable:
        log.error("cdr.spool_recover_failed", spool=str(cdrs.spool))
    return CallServices(
        cdrs=cdrs,
        settings=settings,
        store=store,
        ledger=ledger,
        cards=cards,
        pipeline=build_pipeline(deps),
        # The same picker the pipeline's last step uses, for failover.
        selection=CardSelection(source, deps.sticky_min_headroom, deps.no_card_retry_after),
        emergency=emergency,
        profiles=profiles,
        timezones=timezones,
        probation_of=probation_of,
    )


def spool_path(
    store: SQLiteStore, spool_dir: Path | None = None, *, owner: str | None = None
) -> Path | None:
    """``<database>.cdr-spool.jsonl`` in ``[store] spool_dir`` (default: beside a file
    database); None for ``:memory:``. A worker of ``dialgate run --workers N`` has
    its own, ``<database>.<owner>.cdr-spool.jsonl`` (``owner``: default the store's)."""
    path = Path(str(store.path))
    if str(store.path) == ":memory:":
        return None
    owner = getattr(store, "owner", "") if owner is None else owner
    infix = f".{owner}" if owner else ""
    return (spool_dir or path.parent) / (path.name + infix + ".cdr-spool.jsonl")
