"""The operator's commands of the ``dialgate`` CLI: cards, DNC, consent, complaints, CDRs.

Each command registers itself with ``gateway.cli.main.command`` (import this module
from ``gateway/cli/main.py`` to make them available), loads the configuration
(``--config FILE``), opens the store it names and calls the same
:class:`gateway.operator.service.Operator` the admin API uses. Changes are audited with
the actor ``cli:<login name>`` (or ``--actor``).

Commands: ``cards list|show|evidence|suspend|appeal|appeal-update|probation|
restore|clear|retire|record``, ``dnc import|add|remove|check``, ``consent
import|add|revoke``, ``complaint add``, ``agents resume|show``, ``numbers
show|reset``, ``cdrs export``, ``alerts check``.

Exit codes: 0 done; 1 refused or failed (unknown card, illegal transition, an
import with bad lines — its good lines are kept); 2 bad usage or configuration.

A card state changed here is written to the store; a gateway running in
another process adopts it at its next status round (``gateway.app``'s status
loop, or the Redis sync when the state is shared) and publishes it.

What it must never do: print an unmasked callee or registration number (unless
``[policy] mask_numbers`` is off), or print a secret from the configuration.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.cli.base import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, command, load_or_report
from gateway.operator.service import (
    BadRequest,
    Operator,
    OperatorError,
    operator_from_settings,
    parse_duration,
    parse_time,
)
from gateway.private_files import write_private_text
from gateway.store import StoreUnavailable

__all__ = ["run_with_operator"]


def _actor(args: argparse.Namespace) -> str:
    explicit = getattr(args, "actor", None)
    if explicit:
        return str(explicit)
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def run_with_operator(args: argparse.Namespace, body: Callable[[Operator, float, str], int]) -> int:
    """Load config, open the store and an operator, run ``body(op, now, actor)``; map errors."""
    settings = load_or_report(args)
    if settings is None:
        return EXIT_USAGE
    from gateway.telemetry.logging import configure_logging

    # Log lines (an agent paused…) go to stderr: stdout is the command's answer (--json).
    configure_logging(
        settings.logging, mask_numbers=settings.policy.mask_numbers, stream=sys.stderr
    )
    now = time.time()
    try:
        op = operator_from_settings(settings, now=now)
    except StoreUnavailable as exc:
        print(f"dialgate: store unavailable: {exc.detail}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return body(op, now, _actor(args))
    except BadRequest as exc:
        print(f"dialgate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OperatorError as exc:
        print(f"dialgate: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except StoreUnavailable as exc:
        print(f"dialgate: store unavailable: {exc.detail}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        op.close()
        op.store.close()


def _emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(human(data))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--actor", help="who is acting, for the audit log (default cli:<login>)")


def _card_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("card", metavar="ID", help="card id")
    _common(parser)


# --- rendering --------------------------------------------------------------------------


def _usage_text(usage: dict[str, Any]) -> str:
    parts = []
    for name, u in usage.items():
        if "sample" in u:
            parts.append(f"{name} {u['used']}/{u['limit']} (n={u['sample']})")
        else:
            parts.append(f"{name} {u['used']}/{u['limit']}")
    return ", ".join(parts) or "-"


def _cards_text(cards: list[dict[str, Any]]) -> str:
    lines = [f"{'CARD':<10} {'STATE':<11} {'REASON':<13} {'POOL':<8} {'PROFILE':<10} USAGE"]
    for c in cards:
        lines.append(
            f"{c['id']:<10} {c['state']:<11} {c['reason'] or '-':<13} {c['pool']:<8} "
            f"{c['profile_in_force']:<10} {_usage_text(c['usage'])}"
        )
    return "\n".join(lines)


def _available_text(available: dict[str, Any]) -> str:
    """``now: yes`` or ``now: no — night_window until 08:00``."""
    if available["now"]:
        return "now: yes"
    return f"now: no — {available['why']}"


def _card_text(c: dict[str, Any]) -> str:
    r = c["record"]
    lines = [
        f"card {c['id']}  ({c['carrier']}, pool {c['pool']})",
        f"  state      {c['state']}"
        + (f" ({c['reason']})" if c["reason"] else "")
        + f" since {c['since']}",
        f"  profile    {c['profile_in_force']}"
        + (f" until {c['probation_until']}" if c["probation_until"] else ""),
        f"  usage      {_usage_text(c['usage'])}",
        f"  available  {_available_text(c['available'])}",
        f"  holder     {r['holder'] or '-'}  employee {r['employee_id'] or '-'}  "
        f"registered {r['registered_number'] or '-'}",
        f"  account    {r['carrier_account'] or '-'}  bought via {r['purchase_channel'] or '-'}",
    ]
    if r["notes"]:
        lines.append(f"  notes      {r['notes']}")
    for a in c["appeals"]:
        lines.append(
            f"  appeal #{a['id']} {a['status']}: ref {a['reference'] or '-'} via "
            f"{a['channel'] or '-'} submitted {a['submitted_at']}"
        )
    lines.append("timeline:")
    for item in c["timeline"]:
        if item["kind"] == "transition":
            what = f"{item['from']} → {item['to']}"
            if item["reason"]:
                what += f" ({item['reason']})"
            what += f"  {item['cause']}"
            response = item["evidence"].get("response")
            if response:
                what += f"  [{response}]"
        else:
            detail = item.get("detail") or {}
            what = item["kind"] + (f"  {json.dumps(detail, ensure_ascii=False)}" if detail else "")
        lines.append(f"  {item['at']}  {item['actor']:<12} {what}")
    return "\n".join(lines)


# --- cards ------------------------------------------------------------------------------


@command(
    "cards",
    help="every card: state, reason, profile in force, usage against limits (same as 'cards list')",
    configure=_common,
)
@command(
    "cards list",
    help="every card: state, reason, profile in force, usage against limits",
    configure=_common,
)
def cmd_cards_list(args: argparse.Namespace) -> int:
    """List cards."""

    def body(op: Operator, now: float, actor: str) -> int:
        _emit(args, op.list_cards(now), _cards_text)
        return EXIT_OK

    return run_with_operator(args, body)


@command(
    "cards show",
    help="one card: state, usage, holder record, appeals and timeline",
    configure=_card_arg,
)
def cmd_cards_show(args: argparse.Namespace) -> int:
    """Show one card."""

    def body(op: Operator, now: float, actor: str) -> int:
        _emit(args, op.show_card(args.card, now), _card_text)
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_evidence(parser: argparse.ArgumentParser) -> None:
    _card_arg(parser)
    parser.add_argument("--since", required=True, help="first day (2026-11-01) or ISO time")
    parser.add_argument("--until", help="end (default: now)")
    parser.add_argument("--out", type=Path, help="zip file to write (default evidence-ID-DATE.zip)")


@command(
    "cards evidence",
    help="write the appeal evidence pack of a card (zip: JSON, CSV, HTML)",
    configure=_configure_evidence,
)
def cmd_cards_evidence(args: argparse.Namespace) -> int:
    """Write the evidence pack."""
    from gateway.operator.evidence import build_evidence, write_evidence_zip

    def body(op: Operator, now: float, actor: str) -> int:
        since = parse_time(args.since)
        until = parse_time(args.until) if args.until else None
        pack = build_evidence(op, args.card, since=since, now=now, until=until)
        day = time.strftime("%Y%m%d", time.gmtime(now))
        out = args.out or Path(f"evidence-{args.card}-{day}.zip")
        members = write_evidence_zip(pack, out)
        op.db.record_audit(
            at=now, actor=actor, action="card.evidence", target=args.card, card=args.card
        )
        summary = {
            "file": str(out),
            "members": members,
            "calls": len(pack.calls),
            "blocked": len(pack.blocked),
            "complaints": len(pack.complaints),
            "transitions": len(pack.transitions),
        }
        _emit(
            args,
            summary,
            lambda s: (
                f"wrote {s['file']}: {s['calls']} calls, {s['blocked']} blocked, "
                f"{s['complaints']} complaints, {s['transitions']} state changes"
            ),
        )
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_suspend(parser: argparse.ArgumentParser) -> None:
    _card_arg(parser)
    parser.add_argument(
        "--reason",
        default="manual",
        choices=[
            "arrears",
            "violation",
            "abnormal-use",
            "maintenance",
            "fault",
            "manual",
            "unknown",
        ],
    )
    parser.add_argument("--note", default="")


@command(
    "cards suspend",
    help="take a card out of service (manual, or a suspension the carrier reported)",
    configure=_configure_suspend,
)
def cmd_cards_suspend(args: argparse.Namespace) -> int:
    """Suspend a card."""

    def body(op: Operator, now: float, actor: str) -> int:
        _emit(
            args,
            op.suspend(args.card, actor=actor, now=now, reason=args.reason, note=args.note),
            _card_text,
        )
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_appeal(parser: argparse.ArgumentParser) -> None:
    _card_arg(parser)
    parser.add_argument("--reference", default="", help="the carrier's appeal/ticket number")
    parser.add_argument("--channel", default="", help="how it was filed (portal, shop, email…)")
    parser.add_argument("--submitted", help="when it was filed (default now)")
    parser.add_argument("--notes", default="")


@command(
    "cards appeal",
    help="record an appeal filed with the carrier (card → appealing)",
    configure=_configure_appeal,
)
def cmd_cards_appeal(args: argparse.Namespace) -> int:
    """Open an appeal."""

    def body(op: Operator, now: float, actor: str) -> int:
        submitted = parse_time(args.submitted) if args.submitted else None
        result = op.appeal(
            args.card,
            actor=actor,
            now=now,
            reference=args.reference,
            channel=args.channel,
            submitted_at=submitted,
            notes=args.notes,
        )
        _emit(args, result, _card_text)
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_appeal_update(parser: argparse.ArgumentParser) -> None:
    _card_arg(parser)
    parser.add_argument(
        "--kind",
        required=True,
        choices=["more-info-requested", "material-sent", "note", "decision"],
    )
    parser.add_argument("--decision", choices=["granted", "rejected"])
    parser.add_argument("--notes", default="")


@command(
    "cards appeal-update",
    help="record a step of the open appeal (more material asked, decision…)",
    configure=_configure_appeal_update,
)
def cmd_cards_appeal_update(args: argparse.Namespace) -> int:
    """Update an appeal."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.appeal_update(
            args.card,
            actor=actor,
            now=now,
            kind=args.kind,
            notes=args.notes,
            decision=args.decision,
        )
        _emit(args, result, _card_text)
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_probation(parser: argparse.ArgumentParser) -> None:
    _card_arg(parser)
    end = parser.add_mutually_exclusive_group(required=True)
    end.add_argument("--until", help="end of probation (date or ISO time)")
    end.add_argument("--for", dest="duration", help="length of probation (14d, 72h)")
    parser.add_argument(
        "--profile", help="quota profile while on probation (default: the configured one)"
    )
    parser.add_argument("--note", default="")


@command(
    "cards probation",
    help="restore a card with reduced limits until a date; it returns to normal by itself",
    configure=_configure_probation,
)
def cmd_cards_probation(args: argparse.Namespace) -> int:
    """Put a card on probation."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.probation(
            args.card,
            actor=actor,
            now=now,
            until=parse_time(args.until) if args.until else None,
            duration=parse_duration(args.duration) if args.duration else None,
            profile=args.profile,
            note=args.note,
        )
        _emit(args, result, _card_text)
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_note(parser: argparse.ArgumentParser) -> None:
    _card_arg(parser)
    parser.add_argument("--note", default="")


def _configure_restore(parser: argparse.ArgumentParser) -> None:
    _configure_note(parser)
    parser.add_argument(
        "--skip-probation",
        action="store_true",
        help="straight back to normal limits, skipping the carrier's probation (needs --reason)",
    )
    parser.add_argument("--reason", default="", help="why probation is skipped (audited)")


@command(
    "cards restore",
    help="put a card back into service on its carrier's probation (probation_profile for "
    "probation_days); --skip-probation --reason TEXT for full limits at once",
    configure=_configure_restore,
)
def cmd_cards_restore(args: argparse.Namespace) -> int:
    """Restore a card (through probation unless skipped with a reason)."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.restore(
            args.card,
            actor=actor,
            now=now,
            note=args.note,
            skip_probation=args.skip_probation,
            reason=args.reason,
        )
        _emit(args, result, _card_text)
        return EXIT_OK

    return run_with_operator(args, body)


@command(
    "cards clear",
    help="a suspect card is fine after all: back into service (operator's verdict)",
    configure=_configure_note,
)
def cmd_cards_clear(args: argparse.Namespace) -> int:
    """Clear a suspect card."""

    def body(op: Operator, now: float, actor: str) -> int:
        _emit(args, op.clear(args.card, actor=actor, now=now, note=args.note), _card_text)
        return EXIT_OK

    return run_with_operator(args, body)


@command("cards retire", help="take a card out of service for good", configure=_configure_note)
def cmd_cards_retire(args: argparse.Namespace) -> int:
    """Retire a card."""

    def body(op: Operator, now: float, actor: str) -> int:
        _emit(args, op.retire(args.card, actor=actor, now=now, note=args.note), _card_text)
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_record(parser: argparse.ArgumentParser) -> None:
    _card_arg(parser)
    parser.add_argument("--holder", help="employee holding the card")
    parser.add_argument("--employee-id", help="the holder's employee ID")
    parser.add_argument(
        "--registered-number", help="number the card was registered with (stored; shown masked)"
    )
    parser.add_argument("--carrier-account", help="carrier account reference")
    parser.add_argument("--purchase-channel", help="where the card was bought")
    parser.add_argument("--notes")


@command(
    "cards record", help="edit who holds a card and how it was bought", configure=_configure_record
)
def cmd_cards_record(args: argparse.Namespace) -> int:
    """Edit a card's record."""

    def body(op: Operator, now: float, actor: str) -> int:
        changes = {
            "holder": args.holder,
            "employee_id": args.employee_id,
            "registered_number": args.registered_number,
            "carrier_account": args.carrier_account,
            "purchase_channel": args.purchase_channel,
            "notes": args.notes,
        }
        op.update_record(args.card, changes, actor=actor, now=now)
        _emit(args, op.show_card(args.card, now), _card_text)
        return EXIT_OK

    return run_with_operator(args, body)


# --- DNC, consent, complaints -----------------------------------------------------------


def _import_text(result: dict[str, Any]) -> str:
    lines = [
        f"added {result['added']}, unchanged {result['unchanged']}, bad lines {result['bad_lines']}"
    ]
    lines += [f"line {e['line']}: {e['error']}" for e in result["errors"]]
    return "\n".join(lines)


def _configure_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE")
    _common(parser)


@command(
    "dnc import",
    help="add a list (one number per line, or CSV) to the internal DNC list; bad lines reported",
    configure=_configure_file,
)
def cmd_dnc_import(args: argparse.Namespace) -> int:
    """Import a DNC file."""

    def body(op: Operator, now: float, actor: str) -> int:
        try:
            with open(args.file, encoding="utf-8-sig", errors="replace", newline="") as fh:
                result = op.dnc_import(fh, actor=actor, now=now, name=args.file.name)
        except OSError as exc:
            print(f"dialgate: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
        _emit(args, result.as_dict(), _import_text)
        return EXIT_FAILURE if result.errors else EXIT_OK

    return run_with_operator(args, body)


def _configure_number(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("number", metavar="NUMBER")
    _common(parser)


def _configure_dnc_add(parser: argparse.ArgumentParser) -> None:
    _configure_number(parser)
    parser.add_argument("--note", default="")


@command("dnc add", help="put a number on the internal DNC list", configure=_configure_dnc_add)
def cmd_dnc_add(args: argparse.Namespace) -> int:
    """Add a DNC number."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.dnc_add(args.number, actor=actor, now=now, note=args.note)
        _emit(
            args,
            result,
            lambda r: f"{r['number']}: " + ("added" if r["added"] else "already listed"),
        )
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_dnc_remove(parser: argparse.ArgumentParser) -> None:
    _configure_number(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="also remove an entry a complaint put there (needs --reason; audited)",
    )
    parser.add_argument("--reason", default="", help="why the entry may go (audited)")


@command(
    "dnc remove",
    help="take a number off the internal DNC list (a complaint's entry: --force --reason)",
    configure=_configure_dnc_remove,
)
def cmd_dnc_remove(args: argparse.Namespace) -> int:
    """Remove a DNC number."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.dnc_remove(
            args.number, actor=actor, now=now, force=args.force, reason=args.reason
        )
        _emit(
            args,
            result,
            lambda r: f"{r['number']}: " + ("removed" if r["removed"] else "was not listed"),
        )
        return EXIT_OK if result["removed"] else EXIT_FAILURE

    return run_with_operator(args, body)


def _configure_check(parser: argparse.ArgumentParser) -> None:
    _configure_number(parser)
    parser.add_argument("--campaign", help="judge consent for this campaign")


@command(
    "dnc check",
    help="DNC entry, consent status and complaints of one number",
    configure=_configure_check,
)
def cmd_dnc_check(args: argparse.Namespace) -> int:
    """Look one number up."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.lookup_number(args.number, now=now, campaign=args.campaign)
        _emit(
            args,
            result,
            lambda r: (
                f"{r['number']}: DNC {'listed (' + r['dnc']['source'] + ')' if r['dnc'] else 'clear'}, "
                f"consent {r['consent']['status']}, complaints {r['complaints']}"
            ),
        )
        return EXIT_OK

    return run_with_operator(args, body)


@command(
    "consent import",
    help="import consent CSV (number,campaign,granted_at,expires_at,source,evidence)",
    configure=_configure_file,
)
def cmd_consent_import(args: argparse.Namespace) -> int:
    """Import a consent file."""

    def body(op: Operator, now: float, actor: str) -> int:
        try:
            text = args.file.read_text(encoding="utf-8-sig", errors="replace")
        except OSError as exc:
            print(f"dialgate: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
        result = op.consent_import(text, actor=actor, now=now, name=args.file.name)
        _emit(args, result.as_dict(), _import_text)
        return EXIT_FAILURE if result.errors else EXIT_OK

    return run_with_operator(args, body)


def _configure_consent_add(parser: argparse.ArgumentParser) -> None:
    _configure_number(parser)
    parser.add_argument("--campaign", default="", help="campaign (default: all campaigns)")
    parser.add_argument("--granted", help="when consent was given (default now)")
    parser.add_argument("--expires", help="when it ends")
    parser.add_argument("--source", default="cli")
    parser.add_argument(
        "--evidence", default="", help="reference to the proof (recording id, form id)"
    )


@command("consent add", help="record a callee's consent", configure=_configure_consent_add)
def cmd_consent_add(args: argparse.Namespace) -> int:
    """Record consent."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.consent_add(
            args.number,
            actor=actor,
            now=now,
            campaign=args.campaign,
            granted_at=parse_time(args.granted) if args.granted else None,
            expires_at=parse_time(args.expires) if args.expires else None,
            source=args.source,
            evidence=args.evidence,
        )
        _emit(args, result, lambda r: f"{r['number']}: consent {r['consent']['status']}")
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_consent_revoke(parser: argparse.ArgumentParser) -> None:
    _configure_number(parser)
    parser.add_argument("--campaign", help="campaign (default: every campaign)")


@command(
    "consent revoke", help="the callee said no: revoke consent", configure=_configure_consent_revoke
)
def cmd_consent_revoke(args: argparse.Namespace) -> int:
    """Revoke consent."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.consent_revoke(args.number, actor=actor, now=now, campaign=args.campaign)
        _emit(args, result, lambda r: f"{r['number']}: consent {r['consent']['status']}")
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_complaint(parser: argparse.ArgumentParser) -> None:
    _configure_number(parser)
    parser.add_argument("--agent", default="", help="agent the complaint counts against")
    parser.add_argument("--call", dest="call_id", help="Call-ID of the call complained about")
    parser.add_argument("--card", help="card the complaint counts against")
    parser.add_argument("--note", default="")


@command(
    "complaint add",
    help="record a complaint: DNC the number, count it against agent and card",
    configure=_configure_complaint,
)
def cmd_complaint_add(args: argparse.Namespace) -> int:
    """Record a complaint."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.complaint_add(
            args.number,
            actor=actor,
            now=now,
            agent=args.agent,
            call_id=args.call_id,
            card=args.card,
            note=args.note,
        )
        _emit(
            args,
            result,
            _complaint_text,
        )
        return EXIT_OK

    return run_with_operator(args, body)


_FOUND = {
    "given": "",
    "call": " (from the call's record)",
    "cdr": " (last answered call to this number)",
    "none": "",
}


def _complaint_text(r: dict[str, Any]) -> str:
    lines = [
        f"{r['number']}: complaint recorded, on DNC; card {r['card'] or '-'}"
        f"{_FOUND.get(r.get('found', ''), '')}, agent {r['agent'] or '-'}"
        + (f", call {r['call_id']}" if r.get("call_id") else "")
    ]
    if r.get("found") == "none" and not r["card"]:
        lines.append("no answered call to this number in the lookup window: no card charged")
    if r.get("ambiguous"):
        lines.append(f"ambiguous: {r['message']}")
    if r.get("pause"):
        lines.append(
            f"agent {r['agent']} paused: {r['pause']['reason']} until {r['pause']['until']}"
        )
    elif r["agent_paused"]:
        lines.append(f"agent {r['agent']} paused: complaint rate")
    return "\n".join(lines)


# --- agents and numbers -----------------------------------------------------------------


def _configure_agent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("agent", metavar="NAME", help="softphone user or dialer peer")
    _common(parser)


def _configure_agent_resume(parser: argparse.ArgumentParser) -> None:
    _configure_agent(parser)
    parser.add_argument("--note", default="", help="why (audited)")


@command(
    "agents resume",
    help="lift an agent's pause (complaint ceiling or rate); audited",
    configure=_configure_agent_resume,
)
def cmd_agents_resume(args: argparse.Namespace) -> int:
    """Resume a paused agent."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.agent_resume(args.agent, actor=actor, now=now, note=args.note)
        _emit(
            args,
            result,
            lambda r: f"agent {r['agent']}: " + ("resumed" if r["resumed"] else "was not paused"),
        )
        return EXIT_OK

    return run_with_operator(args, body)


@command(
    "agents show",
    help="an agent's pause, complaints of the last day/week, calls of the last day",
    configure=_configure_agent,
)
def cmd_agents_show(args: argparse.Namespace) -> int:
    """Show one agent."""

    def body(op: Operator, now: float, actor: str) -> int:
        _emit(
            args,
            op.agent_status(args.agent, now),
            lambda r: (
                f"agent {r['agent']}: "
                + (
                    f"paused ({r['pause_reason']}) until {r['paused_until'] or 'resumed'}"
                    if r["paused"]
                    else "active"
                )
                + f"; complaints {r['complaints_day']} today, {r['complaints_week']} this week;"
                f" calls {r['calls_day']} today"
            ),
        )
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_number_show(parser: argparse.ArgumentParser) -> None:
    _configure_number(parser)
    parser.add_argument("--campaign", help="judge with this campaign's frequency limits")


def _number_text(r: dict[str, Any]) -> str:
    att, ans = r["attempts"], r["answers"]
    lines = [
        f"{r['number']}"
        + (f" (campaign {r['campaign']})" if r["campaign"] else "")
        + f": attempts {att['count']}/{att['max']} in {_span(att['window_seconds'])},"
        f" answers {ans['count']}/{ans['max']} in {_span(ans['window_seconds'])},"
        f" complaints {r['complaints']}",
        f"DNC {'listed (' + r['dnc']['source'] + ')' if r['dnc'] else 'clear'},"
        f" consent {r['consent']['status']}"
        + (f", history reset {r['reset_at']}" if r["reset_at"] else ""),
    ]
    if r["callable_now"]:
        lines.append("may be called now (calling hours and cards are judged at call time)")
    elif r["frequency_free_at"]:
        lines.append(
            f"next call: {r['frequency_free_at']} (in {r['retry_after']} s);"
            f" blocked by {', '.join(r['blocked_by'])}"
        )
    else:
        lines.append(f"not callable: blocked by {', '.join(r['blocked_by'])}")
    return "\n".join(lines)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@command(
    "numbers show",
    help="one number's attempts, answers, complaints, DNC/consent and when it may be called",
    configure=_configure_number_show,
)
def cmd_numbers_show(args: argparse.Namespace) -> int:
    """Show one number's history."""

    def body(op: Operator, now: float, actor: str) -> int:
        _emit(args, op.number_show(args.number, now=now, campaign=args.campaign), _number_text)
        return EXIT_OK

    return run_with_operator(args, body)


def _configure_number_reset(parser: argparse.ArgumentParser) -> None:
    _configure_number(parser)
    parser.add_argument("--reason", required=True, help="why the history may go (audited)")


@command(
    "numbers reset",
    help="start a number's frequency history afresh (--reason required; audited)",
    configure=_configure_number_reset,
)
def cmd_numbers_reset(args: argparse.Namespace) -> int:
    """Reset one number's frequency history."""

    def body(op: Operator, now: float, actor: str) -> int:
        result = op.number_reset(args.number, actor=actor, now=now, reason=args.reason)
        _emit(
            args,
            result,
            lambda r: (
                f"{r['number']}: history reset ({r['cleared']['attempts']} attempts,"
                f" {r['cleared']['answers']} answers no longer counted)"
            ),
        )
        return EXIT_OK

    return run_with_operator(args, body)


# --- CDRs and alerts --------------------------------------------------------------------


def _configure_cdrs(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--since", help="from (date or ISO time)")
    parser.add_argument("--until", help="before")
    parser.add_argument("--card")
    parser.add_argument("--agent")
    parser.add_argument("--campaign")
    parser.add_argument("--outcome")
    parser.add_argument("--call-id", help="the SIP Call-ID of the A-leg (as in logs and MQTT)")
    parser.add_argument("--limit", type=int, default=100_000)
    parser.add_argument("--out", type=Path, help="CSV file (default: standard output)")


@command(
    "cdrs export",
    help="call detail records as CSV (ISO 8601 UTC times, destinations masked)",
    configure=_configure_cdrs,
)
def cmd_cdrs_export(args: argparse.Namespace) -> int:
    """Export CDRs."""

    def body(op: Operator, now: float, actor: str) -> int:
        records = op.cdrs(
            since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
            card=args.card,
            agent=args.agent,
            campaign=args.campaign,
            outcome=args.outcome,
            call_id=args.call_id,
            limit=args.limit,
        )
        if args.json:
            print(json.dumps([op.cdr_view(r) for r in records], indent=2))
            return EXIT_OK
        text = op.cdrs_csv(records)
        if args.out is None:
            sys.stdout.write(text)
        else:
            write_private_text(args.out, text)  # 0600: it holds callee numbers
            print(f"wrote {len(records)} records to {args.out}")
        return EXIT_OK

    return run_with_operator(args, body)


@command(
    "alerts check",
    help="assess every card and agent once: quota-near, card-at-risk, complaint rate",
    configure=_common,
)
def cmd_alerts_check(args: argparse.Namespace) -> int:
    """Run the alert assessment once."""

    def body(op: Operator, now: float, actor: str) -> int:
        alerts = op.check_alerts(now)
        paused = [e.agent for e in op.events if e.kind == "agent-paused"]
        data = {
            "alerts": [
                {"kind": a.kind.value, "card": a.card, "reason": a.reason, "message": a.message}
                for a in alerts
            ],
            "agents_paused": paused,
        }
        _emit(
            args,
            data,
            lambda d: (
                "\n".join(
                    [f"{a['kind']:<14} {a['message']}" for a in d["alerts"]]
                    + [f"agent-paused   {name}" for name in d["agents_paused"]]
                )
                or "no alerts"
            ),
        )
        return EXIT_OK

    return run_with_operator(args, body)
