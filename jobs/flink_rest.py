"""A running job's metrics and checkpoints, read from Flink's REST API.

A local minicluster serves the API on ``flink.rest_port`` (the demo and the job bench set
it). The job's own metrics (``pipeline.metrics``) are operator metrics of the step that
registers them; a job vertex lists each as
``<subtask>.<operator>.<group>[.<key>.<value>].<name>``, e.g.
``0.assemble-and-deliver-to-cresta.kinesisanalytics.status.SENT.deliveries``. Python
functions hand their metric updates to Flink at the end of each bundle. The REST API
answers from a metric store that a request refreshes in the background, at most every
``metrics.fetcher.update-interval``: an answer can be a refresh behind, and the first
ones after the job starts are empty. Poll until the figures stop changing.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx


def pick_rest_port() -> int:
    """A free port on loopback for a local minicluster's REST API (``flink.rest_port``)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FlinkRestError(RuntimeError):
    pass


class FlinkRest:
    """The REST API of one Flink cluster (a local minicluster here)."""

    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "FlinkRest":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _get(self, path: str, **params: str) -> Any:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise FlinkRestError(f"Flink REST API at {self._http.base_url} did not answer: {exc}") from exc
        if response.status_code != 200:
            raise FlinkRestError(f"GET {path}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    def running_job(self) -> str:
        """The id of the cluster's one running job."""
        running = [job["id"] for job in self._get("/jobs")["jobs"] if job["status"] == "RUNNING"]
        if len(running) != 1:
            raise FlinkRestError(f"expected one running job, found {len(running)}")
        return running[0]

    def job_metrics(self, group: str, job_id: str | None = None) -> dict[str, list[float]]:
        """The operator metrics under ``group`` of every vertex of the job, by their name
        below the group (``frames_in``, ``status.SENT.deliveries``), one value per subtask
        that reported one. Empty until the first bundle that updated a metric has ended."""
        job_id = job_id or self.running_job()
        found: dict[str, list[float]] = {}
        marker = f".{group}."
        for vertex in self._get(f"/jobs/{job_id}")["vertices"]:
            path = f"/jobs/{job_id}/vertices/{vertex['id']}/metrics"
            ids = [metric["id"] for metric in self._get(path) if marker in metric["id"]]
            if not ids:
                continue
            for metric in self._get(path, get=",".join(ids)):
                name = metric["id"].split(marker, 1)[1]
                found.setdefault(name, []).append(float(metric["value"]))
        return found

    def restarts(self, job_id: str | None = None) -> int:
        """How often the job has restarted (after a task failure) since it was submitted."""
        job_id = job_id or self.running_job()
        values = self._get(f"/jobs/{job_id}/metrics", get="numRestarts")
        return int(float(values[0]["value"])) if values else 0

    def task_load(self, job_id: str | None = None) -> dict[str, dict[str, float]]:
        """Per job vertex (by name): ms per second its busiest subtask was busy, back
        pressured (waiting to hand records on) and idle (waiting for input)."""
        job_id = job_id or self.running_job()
        names = ("busyTimeMsPerSecond", "backPressuredTimeMsPerSecond", "idleTimeMsPerSecond")
        load: dict[str, dict[str, float]] = {}
        for vertex in self._get(f"/jobs/{job_id}")["vertices"]:
            path = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
            values = {metric["id"]: metric.get("max") for metric in self._get(path, get=",".join(names))}
            load[vertex["name"]] = {name: float(values[name]) for name in names if values.get(name) is not None}
        return load

    def checkpoint_summary(self, job_id: str | None = None) -> dict[str, Any]:
        """Completed and failed checkpoints, and their durations, sizes and alignment (ms,
        bytes): the ``counts`` and ``summary`` of Flink's checkpoint statistics."""
        job_id = job_id or self.running_job()
        stats = self._get(f"/jobs/{job_id}/checkpoints")
        return {**stats["counts"], **stats["summary"]}
