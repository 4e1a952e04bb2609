"""The job graph, read from Flink's execution plan without running a cluster."""

from __future__ import annotations

import json

import pytest

from pipeline.config import load_config

pytestmark = pytest.mark.e2e


def test_execution_plan_wires_sources_assembler_delivery_and_audit_sink(tmp_path):
    from jobs.audio_job import build_job, create_environment

    config = load_config(
        env={},
        overrides={"aws.endpoint_url": "http://127.0.0.1:1", "audit.path": tmp_path.as_uri(), "flink.parallelism": 2},
    )
    env = create_environment(config)
    build_job(env, config)
    plan = json.loads(env.get_execution_plan())
    nodes = {node["id"]: node for node in plan["nodes"]}
    names = " | ".join(node["contents"] for node in nodes.values())
    for expected in (
        "audio-frames", "contact-events", "assemble-contact-audio", "deliver-to-cresta", "audit-parquet", "errors-jsonl",
    ):
        assert expected in names, names
    keyed_inputs = [
        pred["ship_strategy"]
        for node in nodes.values()
        for pred in node.get("predecessors", [])
        if "assemble-contact-audio" in node["contents"] or "_stream_key_by_map_operator" in node["contents"]
    ]
    assert "HASH" in keyed_inputs, plan
    assert all(node["parallelism"] == 2 for node in nodes.values() if "Source" not in node["contents"]), plan
