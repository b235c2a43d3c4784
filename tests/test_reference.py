"""docs/reference.md is generated from proto/: it must say what the protos say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_reference_is_current() -> None:
    res = subprocess.run([sys.executable, "tools/protoref.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (ROOT / "docs" / "reference.md").read_text()
    for name in ("`llmnet.inference.v1.MsgSubmitQuery`", "| `RecentQueries` |", "`llmnet.bank.v1.MsgSend`"):
        assert name in text
