"""Linear-time guarantees: 64 KB adversarial inputs and the shape of every grammar regex.

Two complementary checks, neither of them a flaky micro-timing:

* structurally, no regex in ``gateway.sip.grammar`` has a repeat nested inside
  another repeat (the shape behind catastrophic backtracking), and every one is
  used with ``fullmatch`` over a single character class or a fixed sequence;
* behaviourally, each ~64 KB hostile input (long runs of spaces, quotes,
  semicolons, commas, ``%``, ``<`` in the places parsers scan) finishes parse +
  full typed access + check_request in well under a second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import pytest

from gateway.sip import MAX_MESSAGE_SIZE, MessageTooLarge, Request, SIPError, grammar, parse
from gateway.sip.validate import check_request

REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT}


def _repeat_depth(tree: Any, depth: int = 0) -> Iterator[int]:
    for op, av in tree:
        if op in REPEATS:
            # An optional "?" (at most one pass) is not a loop; only unbounded repeats count.
            inner = depth + 1 if av[1] > 1 else depth
            yield inner
            yield from _repeat_depth(av[2], inner)
        elif op is sre_parse.SUBPATTERN:
            yield from _repeat_depth(av[3], depth)
        elif op is sre_parse.BRANCH:
            for branch in av[1]:
                yield from _repeat_depth(branch, depth)


PATTERNS = {name: value for name, value in vars(grammar).items() if isinstance(value, re.Pattern)}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_grammar_regexes_have_no_nested_repeats(name: str) -> None:
    """No grammar regex nests a quantifier inside another (no catastrophic backtracking)."""
    tree = sre_parse.parse(PATTERNS[name].pattern)
    assert 1 >= max(_repeat_depth(tree), default=0)


def test_grammar_patterns_are_found() -> None:
    """The structural check above really sees the grammar's patterns."""
    assert {"TOKEN_RE", "CALLID_RE", "HOSTNAME_RE", "URI_UNSAFE_RE"} <= set(PATTERNS)


HEAD = "INVITE sip:bob@example.com SIP/2.0\r\n"
BASE = {
    "Via": "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKadv",
    "From": "<sip:alice@example.com>;tag=1",
    "To": "<sip:bob@example.com>",
    "Call-ID": "adv@example.com",
    "CSeq": "1 INVITE",
    "Max-Forwards": "70",
    "Contact": "<sip:alice@192.0.2.1>",
}
N = 60_000
RUNS = {
    "spaces": " " * N,
    "quotes": '"' * N,
    "semicolons": ";" * N,
    "commas": "," * N,
    "percents": "%" * N,
    "lt": "<" * N,
    "escaped-quotes": '\\"' * (N // 2),
    "space-semicolon": " ;" * (N // 2),
    "param-pairs": ";a=b" * (N // 4),
    "open-quote-then-spaces": '"' + " " * N,
    "percent-hex": "%4" * (N // 2),
}
PLACES = ["Via", "From", "To", "Contact", "Call-ID", "CSeq", "X-Other", "ruri", "display"]


def _build(place: str, run: str) -> bytes:
    headers = dict(BASE)
    head = HEAD
    if place == "ruri":
        head = f"INVITE sip:bob@example.com;x={run} SIP/2.0\r\n"
    elif place == "display":
        headers["From"] = f'"{run}" <sip:alice@example.com>;tag=1'
    elif place == "X-Other":
        headers["X-Other"] = run
    else:
        headers[place] = headers[place] + run
    text = head + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (text + "Content-Length: 0\r\n\r\n").encode()


def _work(data: bytes) -> None:
    try:
        msg = parse(data)
        _ = msg.via, msg.from_, msg.to, msg.call_id, msg.cseq, msg.contact
        _ = msg.route, msg.record_route, msg.expires, msg.headers.values("X-Other")
        assert isinstance(msg, Request)
        check_request(msg)
    except SIPError:
        pass


@pytest.mark.parametrize("run", sorted(RUNS))
@pytest.mark.parametrize("place", PLACES)
def test_64k_adversarial_inputs_are_fast(place: str, run: str) -> None:
    """A ~64 KB hostile run in any scanned position is handled in well under a second."""
    data = _build(place, RUNS[run])
    assert 60_000 < len(data) <= MAX_MESSAGE_SIZE
    start = time.perf_counter()
    _work(data)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{place}/{run}: {elapsed:.3f}s"


def test_many_small_headers_and_folds() -> None:
    """Thousands of tiny header lines or fold lines parse quickly (no quadratic joins)."""
    many = (
        HEAD
        + "".join(f"X-{i}: v\r\n" for i in range(6000))
        + "".join(f"{k}: {v}\r\n" for k, v in BASE.items())
    )
    folds = (
        HEAD
        + "Subject: a"
        + "\r\n b" * 15000
        + "\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in BASE.items())
    )
    for text in (many, folds):
        data = (text + "Content-Length: 0\r\n\r\n").encode()
        start = time.perf_counter()
        _work(data)
        assert time.perf_counter() - start < 1.0


def test_oversized_input_is_rejected_before_scanning() -> None:
    """Anything above 64 KiB is refused with 513 at once."""
    with pytest.raises(MessageTooLarge):
        parse(b" " * (MAX_MESSAGE_SIZE + 1))


@pytest.mark.parametrize("module", ["errors", "uri", "headers", "message", "validate"])
def test_only_grammar_compiles_regexes(module: str) -> None:
    """Regexes live only in grammar.py, so the nested-repeat check above covers all of them."""
    import ast
    from pathlib import Path

    import gateway.sip

    # The source, also when the module in use is the mypyc-compiled extension.
    source = Path(gateway.sip.__file__).with_name(f"{module}.py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "re" not in imported
