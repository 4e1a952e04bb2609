"""`cresta-pipeline kvs inspect|dump --stream-arn` as a process, against the local stack:
moto's KVS control plane for GetDataEndpoint, the KVS media emulator for GetMedia."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from emulators.kvs import KvsMediaEmulator
from emulators.stack import LocalStack, StackSettings
from pipeline.audio import read_wav
from pipeline.mkv import write_connect_fragment

REPO = Path(__file__).resolve().parents[2]
CONTACT_A = "6c1e8a70-0000-4000-8000-00000000000a"
CONTACT_B = "6c1e8a70-0000-4000-8000-00000000000b"
T0 = 1_726_677_688_724
FRAGMENT_MS = 250


@dataclass(frozen=True)
class PutFragment:
    contact_id: str
    number: str
    timecode_ms: int
    customer: bytes
    agent: bytes


@dataclass(frozen=True)
class Stream:
    arn: str
    fragments: list[PutFragment]
    environment: dict[str, str]
    emulator: KvsMediaEmulator


def pcm(seed: int) -> bytes:
    return random.Random(seed).randbytes(FRAGMENT_MS * 8 * 2)


@pytest.fixture(scope="module")
def stream() -> Iterator[Stream]:
    """Two fragments of contact A, then one of contact B, on one pooled stream."""
    with LocalStack(StackSettings(kvs_pool_size=1, kvs_idle_timeout_s=0.3)) as stack:
        assert stack.kvs is not None
        arn = stack.kvs_stream_arns[0]
        fragments = []
        for index, contact_id in enumerate([CONTACT_A, CONTACT_A, CONTACT_B]):
            timecode_ms = T0 + index * FRAGMENT_MS
            customer, agent = pcm(2 * index), pcm(2 * index + 1)
            body = write_connect_fragment(
                contact_id=contact_id, instance_id="instance-1", timecode_ms=timecode_ms,
                customer_pcm=customer, agent_pcm=agent,
            )
            response = httpx.post(
                f"{stack.kvs.endpoint_url}/putMedia", content=body, headers={"x-amzn-stream-arn": arn}
            )
            response.raise_for_status()
            number = json.loads(response.text.splitlines()[0])["FragmentNumber"]
            fragments.append(PutFragment(contact_id, number, timecode_ms, customer, agent))
        environment = {**os.environ, **stack.aws_environment(), "KVS_MEDIA_ENDPOINT": stack.kvs.endpoint_url}
        yield Stream(arn, fragments, environment, stack.kvs)


def cli(stream: Stream, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", "kvs", *args],
        cwd=REPO, env=stream.environment, capture_output=True, text=True, timeout=60,
    )


def test_inspect_stream_from_the_earliest_fragment(stream):
    result = cli(stream, "inspect", "--stream-arn", stream.arn, "--json")

    assert (result.returncode, result.stderr) == (0, "")
    document = json.loads(result.stdout)
    assert document["tracks"] == [
        {"number": 1, "name": "AUDIO_FROM_CUSTOMER", "codec_id": "A_AAC"},
        {"number": 2, "name": "AUDIO_TO_CUSTOMER", "codec_id": "A_AAC"},
    ]
    fragments = document["fragments"]
    assert [f["fragment_number"] for f in fragments] == [put.number for put in stream.fragments]
    assert [f["producer_timestamp_ms"] for f in fragments] == [put.timecode_ms for put in stream.fragments]
    assert [f["tags"]["ContactId"] for f in fragments] == [put.contact_id for put in stream.fragments]
    assert all(type(f["server_timestamp_ms"]) is int for f in fragments)
    assert all(f["frames"] == {"AUDIO_FROM_CUSTOMER": 4, "AUDIO_TO_CUSTOMER": 4} for f in fragments)


def test_inspect_after_a_fragment_number(stream):
    result = cli(stream, "inspect", "--stream-arn", stream.arn, "--start-fragment", stream.fragments[0].number)

    assert (result.returncode, result.stderr) == (0, "")
    rows = result.stdout.splitlines()[1:-1]
    assert [row.split()[0] for row in rows] == [put.number for put in stream.fragments[1:]]
    assert [row.split()[-1] for row in rows] == [CONTACT_A, CONTACT_B]


def test_dump_stream_gives_one_folder_per_contact(stream, tmp_path):
    result = cli(stream, "dump", "--stream-arn", stream.arn, "--out", str(tmp_path))

    assert (result.returncode, result.stderr) == (0, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONTACT_A, CONTACT_B]
    for contact_id in (CONTACT_A, CONTACT_B):
        puts = [put for put in stream.fragments if put.contact_id == contact_id]
        customer = read_wav(tmp_path / contact_id / "customer.wav")
        agent = read_wav(tmp_path / contact_id / "agent.wav")
        assert (customer.sample_rate, customer.channels, customer.bits_per_sample) == (8000, 1, 16)
        assert customer.data == b"".join(put.customer for put in puts)
        assert agent.data == b"".join(put.agent for put in puts)
    assert len(result.stdout.splitlines()) == 4


def test_unknown_start_fragment_is_the_error_getmedia_reports(stream):
    result = cli(stream, "inspect", "--stream-arn", stream.arn, "--start-fragment", "12345")

    assert result.returncode == 1
    assert result.stderr == (
        "cresta-pipeline kvs: error: GetMedia reported an error in the stream: "
        "AWS_KINESISVIDEO_ERROR_CODE=FRAGMENT_NOT_FOUND, AWS_KINESISVIDEO_ERROR_ID=4000\n"
    )


def test_unknown_stream_fails_with_a_clear_message(stream, tmp_path):
    missing = stream.arn.replace("connect-live-media-0", "no-such-stream")
    result = cli(stream, "dump", "--stream-arn", missing, "--out", str(tmp_path))

    assert result.returncode == 1
    assert result.stderr.startswith("cresta-pipeline kvs: error: GetMedia failed: ResourceNotFoundException: ")
    assert "Traceback" not in result.stderr


def test_a_dropped_connection_shows_what_was_read_then_fails(stream):
    stream.emulator.cut_next_get_media(stream.arn, after_fragments=1)
    result = cli(stream, "inspect", "--stream-arn", stream.arn)

    assert result.returncode == 1
    rows = result.stdout.splitlines()[1:-1]
    assert [row.split()[0] for row in rows] == [put.number for put in stream.fragments[:2]]
    assert rows[0].split()[-1] == CONTACT_A
    assert result.stderr.startswith("cresta-pipeline kvs: error: GetMedia failed: read_failed: ")
    assert "Traceback" not in result.stderr
