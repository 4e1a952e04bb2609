"""`cresta-pipeline report DIR`: the audit notebook run over DIR's audit trail, as DIR/report.html.

For people who would rather look than code: the figures and tables of
``notebooks/audit_analysis.ipynb`` without its code. DIR is what `cresta-pipeline demo
--out DIR` wrote; its audit trail is under DIR/audit (a copy, when the demo wrote it to S3).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from connectors.audit_trail import committed_parts

PROG: Final = "cresta-pipeline report"
NOTEBOOK: Final = Path(__file__).resolve().parents[1] / "notebooks" / "audit_analysis.ipynb"
REPORT_FILE: Final = "report.html"
#: Longest a single cell may run: reading a large trail from S3 takes a while.
CELL_TIMEOUT_S: Final = 600
MISSING_PACKAGES: Final = (
    "the report needs the notebook packages: pip install 'cresta-connect-pipeline[report]' "
    "(make venv installs them)"
)


class ReportError(Exception):
    """The report cannot be made; the message says why."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Render the audit notebook (notebooks/audit_analysis.ipynb) over DIR's audit trail "
            f"(DIR/audit) to DIR/{REPORT_FILE}: per-contact summary, latency, delivery outcomes, "
            "talk time and ingest lag, without the code."
        ),
        epilog="example: cresta-pipeline demo --out demo-out && cresta-pipeline report demo-out",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a demo output directory (holds audit/)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = write_report(args.dir)
    except ReportError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    print(f"wrote {report}")
    return 0


def write_report(directory: Path) -> Path:
    audit = directory.resolve() / "audit"
    parts = committed_parts(audit)
    if not parts:
        raise ReportError(
            f"no audit trail in {directory}: {audit} holds no committed .parquet file "
            "(run `cresta-pipeline demo --out DIR` first)"
        )
    progress(f"audit trail: {len(parts)} Parquet file(s) under {audit}")
    progress(f"running {NOTEBOOK.name} …")
    executed = execute_notebook(str(audit))
    progress("rendering HTML …")
    report = directory / REPORT_FILE
    report.write_text(notebook_html(executed, title=f"Audit trail report: {directory.resolve().name}"))
    return report


def execute_notebook(audit_location: str) -> Any:
    """The audit notebook, executed with ``AUDIT_PATH=audit_location``; raises ReportError on a cell error."""
    try:
        import nbformat
        from traitlets.config import Config
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError as error:
        raise ReportError(MISSING_PACKAGES) from error
    if not NOTEBOOK.is_file():
        raise ReportError(f"{NOTEBOOK} is missing: the report runs from a checkout of the project")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with tempfile.TemporaryDirectory(prefix="audit-report-") as sockets:
        client = NotebookClient(
            notebook,
            # Unix sockets (absolute paths: the kernel runs in the notebook's folder)
            # rather than TCP ports between this process and the kernel.
            config=Config(KernelManager={"transport": "ipc", "ip": str(Path(sockets) / "kernel")}),
            timeout=CELL_TIMEOUT_S,
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        try:
            client.execute(env={**os.environ, "AUDIT_PATH": audit_location})
        except CellExecutionError as error:
            raise ReportError(f"the notebook failed on {audit_location}: {error.ename}: {error.evalue}") from error
    return notebook


def notebook_html(notebook: Any, title: str) -> str:
    """A standalone HTML page of the notebook's outputs (figures embedded), without its code."""
    try:
        from nbconvert import HTMLExporter
    except ImportError as error:
        raise ReportError(MISSING_PACKAGES) from error
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": title}})
    return body


def progress(message: str) -> None:
    print(message, flush=True)
