"""RecentPercentiles against numpy's nearest-rank percentile, and the metric catalogue."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.metrics import JOB_METRICS, RecentPercentiles


@given(
    values=st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=300),
    size=st.integers(min_value=1, max_value=64),
    q=st.sampled_from([1, 50, 90, 99, 99.9, 100]),
)
def test_percentiles_are_nearest_rank_over_the_last_observations(values, size, q):
    recent = RecentPercentiles(size=size)
    for value in values:
        recent.add(value)
    window = values[-size:]
    assert recent.percentile(q) == int(np.percentile(window, q, method="inverted_cdf"))
    assert recent.count == len(values)


def test_no_observation_reads_as_zero():
    assert RecentPercentiles().percentile(99) == 0


def test_an_empty_window_is_refused():
    with pytest.raises(ValueError):
        RecentPercentiles(size=0)


@pytest.mark.parametrize("q", [0, -1, 101])
def test_a_percentile_outside_0_to_100_is_refused(q):
    with pytest.raises(ValueError):
        RecentPercentiles().percentile(q)


def test_metric_names_are_unique_and_documented():
    names = [metric.name for metric in JOB_METRICS]
    assert len(names) == len(set(names))
    assert all(metric.doc and metric.kind in ("counter", "meter", "gauge") for metric in JOB_METRICS)
