from __future__ import annotations

from pathlib import Path

import pytest

from demo_cli import run_demo_cli


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, dict]:
    """One default demo run (its output folder and summary), shared by the e2e tests that only read it."""
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo_cli(out)
