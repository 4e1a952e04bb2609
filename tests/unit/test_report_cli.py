"""`cresta-pipeline report DIR`: its help, its refusals, and the page it renders.

The rendering test runs the real notebook in a real kernel over a synthetic trail that
holds what a demo run does not: failed and dropped deliveries, a lost chunk.
"""

from __future__ import annotations

import re

import pytest

from audit_rows import CONTACT_A, CONTACT_B, QUIET, chunk, row, track_rows, write_trail
from jobs import cli, report
from pipeline.audit import DeliveryStatus
from pipeline.records import Track


def test_help_says_what_it_writes(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cresta-pipeline report [-h] DIR")
    assert "DIR/report.html" in out


def test_the_command_is_listed(capsys):
    cli.main(["--help"])
    assert "report: render the audit notebook" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("layout", ["no folder", "empty audit folder", "only a part file in progress"])
def test_a_folder_without_an_audit_trail_is_refused_clearly(tmp_path, capsys, layout):
    target = tmp_path / "demo-out"
    if layout != "no folder":
        (target / "audit" / "dt=2024-09-18" / "hour=16").mkdir(parents=True)
    if layout == "only a part file in progress":
        (target / "audit" / "dt=2024-09-18" / "hour=16" / ".audit-0.parquet.inprogress.1f2e").write_bytes(b"PAR1")
    assert cli.main(["report", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cresta-pipeline report: no audit trail in {target}:")
    assert "run `cresta-pipeline demo --out DIR` first" in err
    assert not (target / "report.html").exists()


def test_the_report_shows_every_figure_and_the_contacts_without_code(tmp_path, capsys):
    rows = track_rows(CONTACT_A, Track.CUSTOMER, 20) + track_rows(CONTACT_A, Track.AGENT, 20, pcm=QUIET)
    rows += [
        row(chunk(CONTACT_B, Track.CUSTOMER, seq), status)
        for seq, status in enumerate([DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.DROPPED])
    ]
    rows += [row(chunk(CONTACT_B, Track.CUSTOMER, 4, pcm=b"", final=True), DeliveryStatus.SKIPPED)]
    write_trail(tmp_path / "audit", rows[:30])
    write_trail(tmp_path / "audit", rows[30:])

    assert cli.main(["report", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    assert "audit trail: 2 Parquet file(s)" in out
    assert out.rstrip().endswith(f"wrote {tmp_path / 'report.html'}")
    page = (tmp_path / "report.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 4
    for heading in ("Contacts", "Latency", "Delivery outcomes over time", "Talk time", "Ingest lag"):
        assert re.search(rf"<h2[^>]*>{heading}<", page), heading
    assert CONTACT_A in page and CONTACT_B in page
    assert "read_audit_trail" not in page  # the code stays out


def test_a_cell_error_is_reported_with_the_location(tmp_path, monkeypatch):
    notebook = tmp_path / "broken.ipynb"
    notebook.write_text(
        '{"cells": [{"cell_type": "code", "execution_count": null, "id": "c0", "metadata": {}, "outputs": [],'
        ' "source": "raise RuntimeError(\\"boom\\")"}], "metadata": {"kernelspec": {"name": "python3",'
        ' "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}'
    )
    monkeypatch.setattr(report, "NOTEBOOK", notebook)
    with pytest.raises(report.ReportError, match=r"^the notebook failed on /some/trail: RuntimeError: boom$"):
        report.execute_notebook("/some/trail")
