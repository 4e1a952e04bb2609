"""What the job measures, named once: the Flink functions register these, the README
lists them, and on Managed Flink they become CloudWatch metrics that the stack's alarms
and dashboard read (deploy/cloudformation/pipeline.yaml).

Managed Flink exports to CloudWatch (namespace ``AWS/KinesisAnalytics``) the metrics
registered under a metric group named ``kinesisanalytics``, by their own name; the key/value
groups under it (``status``/``SENT``) become dimensions beside ``Application`` (AWS: "Use
custom metrics with Amazon Managed Service for Apache Flink"). CloudWatch shows counters,
gauges and meters, not histograms.

PyFlink's metric group offers counters, gauges, meters and distributions, but no
histogram with percentiles, so latencies are kept in ``RecentPercentiles`` (the last
``size`` observations) and published as p50/p99 gauges.

>>> lags = RecentPercentiles(size=4)
>>> for value in (10, 20, 30, 40, 1000):
...     lags.add(value)
>>> lags.percentile(50), lags.percentile(99), lags.count
(30, 1000, 5)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

#: The operator metric group the job's own metrics live under: the name Managed Flink
#: exports to CloudWatch.
METRIC_GROUP = "kinesisanalytics"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    #: counter (a running total), meter (events per second over the last minute) or gauge.
    kind: str
    unit: str
    doc: str
    #: The key of the key/value group that splits it, one metric per value (a CloudWatch
    #: dimension); empty for none.
    dimension: str = ""


FRAMES_IN = MetricSpec("frames_in", "counter", "frames", "AudioFrame records the assembler received")
CHUNKS_OUT = MetricSpec("chunks_out", "counter", "chunks", "audio chunks the assembler emitted")
DUPLICATES_DROPPED = MetricSpec(
    "duplicates_dropped", "counter", "frames", "replayed frames dropped (after a connector or job restart)"
)
OVERLAP_SAMPLES_DROPPED = MetricSpec(
    "overlap_samples_dropped", "counter", "samples", "samples cut from frames that partly repeated audio"
)
LATE_FRAMES_DROPPED = MetricSpec(
    "late_frames_dropped", "counter", "frames", "frames from before a track's start that came too late"
)
FRAMES_REJECTED = MetricSpec(
    "frames_rejected", "counter", "frames", "frames that contradict their track (sample rate, odd length)"
)
GAP_FILLED_MS = MetricSpec("gap_filled_ms", "counter", "ms", "silence inserted for audio that never arrived")
EARLY_AUDIO_CHUNKS = MetricSpec(
    "early_audio_chunks", "counter", "chunks", "chunks that left before the contact's STARTED (attributes missing)"
)
ERRORS = MetricSpec(
    "errors", "counter", "records", "records sent to the error output, one counter per reason", dimension="reason",
)
# A meter, not a counter: the alarm on the share Cresta did not take divides rates, which
# need no knowledge of when each subtask's running total started.
DELIVERIES = MetricSpec(
    "deliveries", "meter", "chunks/s", "delivery receipts per second, one meter per status (SENT, FAILED, "
    "DROPPED, SKIPPED)", dimension="status",
)
INGEST_LAG_P50 = MetricSpec(
    "ingest_lag_ms_p50", "gauge", "ms", "median time from a chunk's last sample (producer clock) to its assembly"
)
INGEST_LAG_P99 = MetricSpec("ingest_lag_ms_p99", "gauge", "ms", "99th percentile of the same")
DELIVERY_LATENCY_P50 = MetricSpec(
    "delivery_latency_ms_p50", "gauge", "ms", "median time from a chunk's assembly to Cresta's acceptance of it"
)
DELIVERY_LATENCY_P99 = MetricSpec("delivery_latency_ms_p99", "gauge", "ms", "99th percentile of the same")

JOB_METRICS: tuple[MetricSpec, ...] = (
    FRAMES_IN,
    CHUNKS_OUT,
    DUPLICATES_DROPPED,
    OVERLAP_SAMPLES_DROPPED,
    LATE_FRAMES_DROPPED,
    FRAMES_REJECTED,
    GAP_FILLED_MS,
    EARLY_AUDIO_CHUNKS,
    ERRORS,
    DELIVERIES,
    INGEST_LAG_P50,
    INGEST_LAG_P99,
    DELIVERY_LATENCY_P50,
    DELIVERY_LATENCY_P99,
)


class RecentPercentiles:
    """Percentiles (nearest rank) of the last ``size`` observations; 0 before any."""

    def __init__(self, size: int = 2048) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._values: deque[int] = deque(maxlen=size)
        self.count = 0

    def add(self, value: int) -> None:
        self._values.append(value)
        self.count += 1

    def percentile(self, q: float) -> int:
        if not 0 < q <= 100:
            raise ValueError("q must be within (0, 100]")
        if not self._values:
            return 0
        ordered = sorted(self._values)
        return ordered[math.ceil(q / 100 * len(ordered)) - 1]
