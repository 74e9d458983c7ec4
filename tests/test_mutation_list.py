"""The mutation check's list (scripts/mutations.yaml) still names code that exists: every mutation's file, scope and
original tokens are found once, so `python scripts/mutation_check.py` can run whenever someone wants it."""
from __future__ import annotations

import subprocess
import sys

from helpers.scripts import REPO


def test_every_mutation_still_matches_its_code():
    result = subprocess.run([sys.executable, "scripts/mutation_check.py", "--list"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "container-stop-not-passed-on" in result.stdout
