"""The RFC 4475 SIP torture corpus, vendored byte-exact from ../shared/conformance/rfc4475.

:data:`RFC4475` is the directory the tests read: ``$DIALGATE_RFC4475`` when
set, else this copy (so a fresh clone tests without the shared folder).
``tests/sip/test_rfc4475.py`` checks the copy against its SHA256SUMS and, when
the shared folder is beside the project, against the original byte for byte.
"""

from __future__ import annotations

import os
from pathlib import Path

VENDORED = Path(__file__).resolve().parent / "rfc4475"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "rfc4475"
RFC4475 = Path(os.environ.get("DIALGATE_RFC4475", VENDORED))
