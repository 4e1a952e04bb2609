"""The job's Flink settings reach the environment it runs in (no cluster is started)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from jobs.audio_job import create_environment, flink_configuration
from pipeline.config import load_config

pytestmark = pytest.mark.e2e

def local_config(tmp_path, **overrides):
    return load_config(
        env={},
        overrides={
            "aws.endpoint_url": "http://127.0.0.1:1",
            "audit.path": tmp_path.as_uri(),
            "flink.checkpoint_dir": str(tmp_path / "checkpoints"),
            **overrides,
        },
    )


def test_bundles_buffers_and_checkpoints_take_the_configured_values(tmp_path):
    config = local_config(
        tmp_path,
        **{
            "flink.bundle_time_ms": 7,
            "flink.bundle_size": 300,
            "flink.buffer_timeout_ms": 3,
            "flink.checkpoint_interval_ms": 4000,
        },
    )
    conf = flink_configuration(config)
    assert conf.get_string("python.fn-execution.bundle.time", "") == "7"
    assert conf.get_string("python.fn-execution.bundle.size", "") == "300"
    env = create_environment(config)
    assert env.get_buffer_timeout() == 3
    assert env.get_checkpoint_config().get_checkpoint_interval() == 4000


def test_the_minicluster_works_in_the_folder_given(tmp_path):
    assert flink_configuration(local_config(tmp_path)).get_string("process.working-dir", "") == ""
    conf = flink_configuration(local_config(tmp_path, **{"flink.working_dir": str(tmp_path / "flink")}))
    assert conf.get_string("process.working-dir", "") == str(tmp_path / "flink")


def checkpoint_storage(env) -> tuple[str, str]:
    configuration = env._j_stream_execution_environment.getConfiguration()
    return (
        configuration.getString("execution.checkpointing.storage", ""),
        configuration.getString("execution.checkpointing.dir", ""),
    )


def test_local_checkpoints_go_to_a_folder_not_the_job_manager_s_memory(tmp_path, monkeypatch):
    # Memory-backed checkpoints fail once a task's state passes 5 MB.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    storage, directory = checkpoint_storage(create_environment(local_config(tmp_path, **{"flink.checkpoint_dir": ""})))
    assert storage == "filesystem" and Path(urlsplit(directory).path).parent == tmp_path
    working_dir = tmp_path / "flink"
    in_working_dir = create_environment(
        local_config(tmp_path, **{"flink.working_dir": str(working_dir), "flink.checkpoint_dir": ""})
    )
    assert checkpoint_storage(in_working_dir) == ("filesystem", (working_dir / "checkpoints").as_uri())
    chosen = tmp_path / "chk"
    in_chosen = create_environment(local_config(tmp_path, **{"flink.checkpoint_dir": str(chosen)}))
    assert checkpoint_storage(in_chosen) == ("filesystem", chosen.as_uri())


def test_the_rest_api_listens_only_where_asked(tmp_path):
    assert flink_configuration(local_config(tmp_path)).get_string("rest.bind-port", "") == ""
    conf = flink_configuration(local_config(tmp_path, **{"flink.rest_port": 18123}))
    assert conf.get_string("rest.bind-port", "") == "18123"


def test_thread_mode_gives_the_embedded_interpreter_this_projects_paths(tmp_path):
    process = flink_configuration(local_config(tmp_path))
    assert process.get_string("python.execution-mode", "") == "process"
    assert process.get_string("python.pythonpath", "") == ""
    thread = flink_configuration(local_config(tmp_path, **{"flink.python_execution_mode": "thread"}))
    assert thread.get_string("python.execution-mode", "") == "thread"
    paths = thread.get_string("python.pythonpath", "").split(":")
    # The job's modules and PyFlink must be importable from those paths.
    assert any((Path(path) / "jobs" / "functions.py").exists() for path in paths), paths
    assert any((Path(path) / "pyflink" / "__init__.py").exists() for path in paths), paths
