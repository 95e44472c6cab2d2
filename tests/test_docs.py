"""The documents that are generated from the code are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_methods_doc_is_generated_from_the_current_classes():
    check = subprocess.run(
        [sys.executable, "scripts/methods_doc.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    text = (ROOT / "docs" / "methods.md").read_text()
    assert "## `speckvpc`: `SpecKVPC`" in text and "Drops: prompt tokens, then KV pairs" in text
