"""The job graph, read from Flink's execution plan without running a cluster."""

from __future__ import annotations

import json

import pytest

from pipeline.config import load_config

pytestmark = pytest.mark.e2e


def test_execution_plan_wires_sources_one_keyed_assemble_and_deliver_step_and_the_sinks(tmp_path):
    from jobs.audio_job import build_job, create_environment

    config = load_config(
        env={},
        overrides={
            "aws.endpoint_url": "http://127.0.0.1:1",
            "audit.path": tmp_path.as_uri(),
            "flink.parallelism": 2,
            "flink.checkpoint_dir": str(tmp_path / "checkpoints"),
        },
    )
    env = create_environment(config)
    build_job(env, config)
    plan = json.loads(env.get_execution_plan())
    nodes = {node["id"]: node for node in plan["nodes"]}
    names = " | ".join(node["contents"] for node in nodes.values())
    for expected in ("audio-frames", "contact-events", "assemble-and-deliver-to-cresta", "audit-parquet", "errors-jsonl"):
        assert expected in names, names
    # Assembly and delivery share one step keyed by ContactId, fed through a hash exchange
    # from the decoders; the audit rows it emits go straight on to the sink, with no
    # second exchange on the way (delivery's keyed state lives in that same step).
    assert upstream_of(nodes, "assemble-and-deliver-to-cresta") == {"decode-audio-frames", "decode-contact-events"}
    assert [node["contents"] for node in nodes.values() if any_hash_input(node)] == ["assemble-and-deliver-to-cresta"]
    assert "assemble-and-deliver-to-cresta" in ancestors_of(nodes, "audit-parquet: Writer")
    assert "assemble-and-deliver-to-cresta" in ancestors_of(nodes, "errors-jsonl: Writer")
    assert all(node["parallelism"] == 2 for node in nodes.values() if "Source" not in node["contents"]), plan


def any_hash_input(node: dict) -> bool:
    return any(pred["ship_strategy"] == "HASH" for pred in node.get("predecessors", []))


def upstream_of(nodes: dict, name: str) -> set[str]:
    """What feeds the operator ``name`` through its key-by step (asserted to be a hash exchange)."""
    (node,) = (n for n in nodes.values() if name in n["contents"])
    (exchange,) = node["predecessors"]
    assert exchange["ship_strategy"] == "HASH", node
    key_by = nodes[exchange["id"]]
    assert "_stream_key_by_map_operator" in key_by["contents"], key_by
    return {nodes[pred["id"]]["contents"] for pred in key_by["predecessors"]}


def ancestors_of(nodes: dict, name: str) -> set[str]:
    (node,) = (n for n in nodes.values() if name in n["contents"])
    found: set[str] = set()
    pending = [pred["id"] for pred in node.get("predecessors", [])]
    while pending:
        ancestor = nodes[pending.pop()]
        found.add(ancestor["contents"])
        pending += [pred["id"] for pred in ancestor.get("predecessors", [])]
    return found
