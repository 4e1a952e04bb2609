"""The audit notebook and `cresta-pipeline report` over a real demo output.

Reuses the e2e suite's demo run; the S3 case puts that run's Parquet files in moto's S3
and has the notebook read them through ``AWS_ENDPOINT_URL``, as it would read AWS.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from emulators.stack import LocalStack, StackSettings
from jobs.report import execute_notebook

pytestmark = pytest.mark.e2e

FIGURES = 4


def outputs(notebook, output_type: str | None = None) -> list:
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output_type is None or output.output_type == output_type
    ]


def assert_shows_the_demo_run(notebook, summary: dict) -> None:
    assert not outputs(notebook, "error")
    figures = [output for output in outputs(notebook) if "image/png" in output.get("data", {})]
    assert len(figures) == FIGURES
    printed = "".join(output.text for output in outputs(notebook, "stream"))
    assert f"{summary['audit_rows']} audit rows, {summary['calls']} contacts" in printed
    tables = "".join(output.data["text/html"] for output in outputs(notebook) if "text/html" in output.get("data", {}))
    for contact_id in summary["contacts"]:
        assert contact_id in tables


def test_the_notebook_runs_on_a_demo_output(demo_run):
    out, summary = demo_run
    assert_shows_the_demo_run(execute_notebook(str(out / "audit")), summary)


def test_the_notebook_reads_the_audit_trail_from_s3(demo_run, monkeypatch):
    out, summary = demo_run
    with LocalStack(StackSettings(kvs_pool_size=0)) as stack:
        bucket = stack.settings.audit_bucket
        s3 = stack.client("s3")
        for part in (out / "audit").rglob("*.parquet"):
            s3.upload_file(str(part), bucket, f"copied/audit/{part.relative_to(out / 'audit').as_posix()}")
        for name, value in stack.aws_environment().items():
            monkeypatch.setenv(name, value)
        assert_shows_the_demo_run(execute_notebook(f"s3://{bucket}/copied/audit"), summary)


def test_report_renders_the_demo_output_to_html(demo_run, tmp_path):
    out, summary = demo_run
    target = tmp_path / "demo-out"
    shutil.copytree(out / "audit", target / "audit")
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "report", str(target)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"wrote {target / 'report.html'}"
    page = (target / "report.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == FIGURES
    for contact_id in summary["contacts"]:
        assert contact_id in page
