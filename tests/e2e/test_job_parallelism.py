"""Who decides the job's parallelism: ``flink.parallelism`` on a local minicluster, the
cluster on a cluster. On Managed Flink a parallelism set by the job would pin it and
override the application's ParallelismConfiguration and autoscaling.

The cluster side is Flink's own: ``StreamContextEnvironment.setAsContext`` is what the
Flink client (``flink run``, application mode) does before it runs a job's main, with the
cluster's configuration (Managed Flink sets ``parallelism.default`` from the application's
parallelism).
"""

from __future__ import annotations

import pytest
from pyflink.common import Configuration
from pyflink.java_gateway import get_gateway

from jobs.audio_job import create_environment
from pipeline.config import load_config

pytestmark = pytest.mark.e2e

CONTEXT_ENVIRONMENT = "org.apache.flink.client.program.StreamContextEnvironment"


def job_config(tmp_path, parallelism: int):
    return load_config(
        env={},
        overrides={
            "audit.path": tmp_path.as_uri(),
            "flink.parallelism": parallelism,
            "flink.checkpoint_dir": str(tmp_path / "checkpoints"),
        },
    )


def test_a_local_run_takes_the_configured_parallelism(tmp_path):
    env = create_environment(job_config(tmp_path, 5))
    assert env.get_parallelism() == 5


def test_on_a_cluster_the_clusters_parallelism_stays(tmp_path):
    jvm = get_gateway().jvm
    cluster = Configuration()
    cluster.set_string("parallelism.default", "3")
    context = jvm.org.apache.flink.client.program.StreamContextEnvironment
    context.setAsContext(
        jvm.org.apache.flink.core.execution.DefaultExecutorServiceLoader(), cluster._j_configuration,
        jvm.Thread.currentThread().getContextClassLoader(), False, False,
    )
    try:
        env = create_environment(job_config(tmp_path, 5))
    finally:
        context.unsetAsContext()
    assert env._j_stream_execution_environment.getClass().getName() == CONTEXT_ENVIRONMENT
    assert env.get_parallelism() == 3
