"""`cresta-pipeline demo` as a user runs it, for the end-to-end tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CALLS = 2
CALL_SECONDS = 4
CHUNK_MS = 100


def run_demo_cli(out: Path, *extra: str) -> dict:
    """`cresta-pipeline demo` as a user runs it; returns the summary from its last line."""
    result = subprocess.run(
        [
            sys.executable, "-m", "jobs.cli", "demo",
            "--calls", str(CALLS), "--call-seconds", str(CALL_SECONDS),
            "--chunk-ms", str(CHUNK_MS), "--audit-audio", "--json", "--out", str(out), *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
