"""Suite-wide test hygiene: every test starts with default logging configuration.

Some tests configure structlog (and the root logger's ``dialgate`` handler) to
write into a stream that pytest closes after the test; a later test that logs
would then write to a closed file. Resetting after each test keeps tests
independent of the order they run in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Restore structlog's defaults and drop dialgate's root handler after each test."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "dialgate"]:
        root.removeHandler(handler)
