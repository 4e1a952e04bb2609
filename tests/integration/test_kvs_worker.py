"""The connector worker end to end over real HTTP: moto (SQS, Kinesis, KVS control
plane) + the KVS media emulator; the audio-frames stream is read back with boto3."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber
from moto.server import ThreadedMotoServer

from connectors.kinesis.producer import KinesisRecordProducer
from connectors.kvs import ConnectorWorker, KvsMediaSource, MediaSourceError, read_contact
from emulators.kvs import KvsMediaEmulator
from pipeline.mkv import write_connect_fragment
from pipeline.records import AudioEnd, AudioFrame, ContactWork, Track, decode_audio_record

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION}
FRAMES_STREAM = "audio-frames"
CONTACT_A = "6c1e8a70-0000-4000-8000-00000000000a"
CONTACT_B = "6c1e8a70-0000-4000-8000-00000000000b"
T0 = 1_726_677_688_724
FRAGMENT_MS = 250


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def session() -> boto3.session.Session:
    return boto3.session.Session(**CREDENTIALS)


@pytest.fixture
def emulator() -> Iterator[KvsMediaEmulator]:
    with KvsMediaEmulator(idle_timeout_s=0.3, seed=2) as running:
        yield running


def pcm(seed: int) -> bytes:
    return random.Random(seed).randbytes(FRAGMENT_MS * 8 * 2)


def put_contact(
    emulator: KvsMediaEmulator, stream_arn: str, contact_id: str, first_index: int, count: int
) -> dict:
    """PutMedia ``count`` one-per-request fragments; returns what was written per track."""
    numbers, customer, agent = [], b"", b""
    for index in range(first_index, first_index + count):
        customer_pcm, agent_pcm = pcm(2 * index), pcm(2 * index + 1)
        body = write_connect_fragment(
            contact_id=contact_id,
            instance_id="instance-1",
            timecode_ms=T0 + index * FRAGMENT_MS,
            customer_pcm=customer_pcm,
            agent_pcm=agent_pcm,
        )
        response = httpx.post(
            f"{emulator.endpoint_url}/putMedia", content=body, headers={"x-amzn-stream-arn": stream_arn}
        )
        response.raise_for_status()
        numbers.append(json.loads(response.text)["FragmentNumber"])
        customer += customer_pcm
        agent += agent_pcm
    return {
        "numbers": numbers,
        Track.CUSTOMER: customer,
        Track.AGENT: agent,
        "start_ms": T0 + first_index * FRAGMENT_MS,
    }


def read_stream(
    kinesis, stream_name: str, until_ends: int, timeout_s: float = 20
) -> list[AudioFrame | AudioEnd]:
    shard = kinesis.describe_stream(StreamName=stream_name)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(
        StreamName=stream_name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records: list[AudioFrame | AudioEnd] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = kinesis.get_records(ShardIterator=iterator)
        records += [decode_audio_record(record["Data"]) for record in response["Records"]]
        iterator = response["NextShardIterator"]
        if sum(isinstance(record, AudioEnd) for record in records) >= until_ends:
            return records
        time.sleep(0.1)
    raise AssertionError(f"only {len(records)} records arrived")


def test_worker_reads_two_contacts_of_one_reused_stream(aws_endpoint, session, emulator):
    kinesisvideo = session.client("kinesisvideo", endpoint_url=aws_endpoint)
    kinesis = session.client("kinesis", endpoint_url=aws_endpoint)
    sqs = session.client("sqs", endpoint_url=aws_endpoint)
    stream_arn = kinesisvideo.create_stream(StreamName="connect-pool-1", DataRetentionInHours=24)["StreamARN"]
    kinesis.create_stream(StreamName=FRAMES_STREAM, ShardCount=1)
    queue_url = sqs.create_queue(QueueName="connector-work")["QueueUrl"]

    written_a = put_contact(emulator, stream_arn, CONTACT_A, first_index=0, count=3)
    written_b = put_contact(emulator, stream_arn, CONTACT_B, first_index=3, count=2)
    for contact_id, written, start_ms in (
        (CONTACT_A, written_a, written_a["start_ms"]),
        # Connect's timestamp need not sit on a fragment boundary: starting inside A's
        # last fragment must still give B all of its audio and none of A's.
        (CONTACT_B, written_b, written_b["start_ms"] - 100),
    ):
        work = ContactWork(contact_id, stream_arn, written["numbers"][0], "instance-1", start_ms)
        sqs.send_message(QueueUrl=queue_url, MessageBody=work.encode())

    producer = KinesisRecordProducer(kinesis, FRAMES_STREAM, linger_s=0.01)
    media_source = KvsMediaSource(kinesisvideo, media_endpoint_override=emulator.endpoint_url, session=session)
    worker = ConnectorWorker(sqs, queue_url, media_source, producer, poll_wait_s=1)
    stop = threading.Event()
    running = threading.Thread(target=worker.run, args=(stop,))
    running.start()
    try:
        records = read_stream(kinesis, FRAMES_STREAM, until_ends=2)
    finally:
        stop.set()
        running.join(10)
        producer.close(timeout_s=10)
    assert not running.is_alive()

    for contact_id, written, reason in (
        (CONTACT_A, written_a, "contact_changed"),
        (CONTACT_B, written_b, "stream_ended"),
    ):
        frames = [r for r in records if isinstance(r, AudioFrame) and r.contact_id == contact_id]
        ends = [r for r in records if isinstance(r, AudioEnd) and r.contact_id == contact_id]
        for track in Track:
            assert b"".join(f.pcm for f in frames if f.track is track) == written[track], (contact_id, track)
        assert frames[0].fragment_number == written["numbers"][0], "the contact's first fragment is missing"
        assert {f.fragment_number for f in frames} == set(written["numbers"])
        assert len(ends) == 1 and ends[0].reason == reason
        assert ends[0].customer_samples == len(written[Track.CUSTOMER]) // 2
        assert ends[0].agent_samples == len(written[Track.AGENT]) // 2
        assert ends[0].customer_frames + ends[0].agent_frames == len(frames)
        assert ends[0].last_fragment_number == written["numbers"][-1]
        assert records.index(ends[0]) > max(records.index(f) for f in frames)

    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert worker.contacts_done == 2
    assert worker.frames_published == sum(isinstance(r, AudioFrame) for r in records)


class FakeMediaSource:
    """A MediaSource that serves fixed chunks or fails, to inject faults."""

    def __init__(self, chunks: list[bytes] | None = None, error: MediaSourceError | None = None) -> None:
        self.chunks = chunks or []
        self.error = error
        self.selectors: list[dict[str, Any]] = []

    def open(self, stream_arn: str, start_selector: dict[str, Any]) -> Iterator[bytes]:
        self.selectors.append(start_selector)
        if self.error is not None:
            raise self.error
        return iter(self.chunks)


WORK = ContactWork(CONTACT_A, "arn:aws:kinesisvideo:us-east-1:123456789012:stream/s/1", "9134", "i", T0)


def published_records(source: FakeMediaSource, work: ContactWork = WORK) -> tuple[Any, list]:
    published: list[tuple[bytes, str]] = []
    result = read_contact(work, source, lambda data, key: published.append((data, key)))
    assert {key for _, key in published} <= {work.contact_id}
    return result, [decode_audio_record(data) for data, _ in published]


def test_corrupt_stream_fails_the_contact_with_an_end_record():
    good = write_connect_fragment(
        contact_id=CONTACT_A, instance_id="i", timecode_ms=T0, customer_pcm=pcm(1), agent_pcm=pcm(2)
    )
    result, records = published_records(FakeMediaSource([good, b"\x1a\x45\xdf\xa3\x80\xff garbage"]))
    assert result.reason == "corrupt_stream" and not result.retryable
    assert isinstance(records[-1], AudioEnd) and records[-1].reason == "corrupt_stream"
    assert records[-1].customer_samples == len(pcm(1)) // 2


def test_throttled_get_media_hands_the_contact_back_without_an_end():
    error = MediaSourceError("ConnectionLimitExceededException", "too many readers", retryable=True)
    result, records = published_records(FakeMediaSource(error=error))
    assert result.retryable and records == []


def test_missing_stream_ends_the_contact_with_the_reason():
    error = MediaSourceError("ResourceNotFoundException", "no such stream", retryable=False)
    result, records = published_records(FakeMediaSource(error=error))
    assert not result.retryable
    assert [r.reason for r in records] == ["get_media_failed"]


def test_start_selector_includes_the_first_fragment_when_the_timestamp_is_known():
    source = FakeMediaSource()
    published_records(source)
    published_records(source, ContactWork(CONTACT_A, WORK.stream_arn, "9134", "i", 0))
    assert source.selectors[0]["StartSelectorType"] == "PRODUCER_TIMESTAMP"
    assert source.selectors[0]["StartTimestamp"].timestamp() == T0 / 1000
    assert source.selectors[1] == {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "9134"}


def test_cli_stops_cleanly_on_sigterm(aws_endpoint, session):
    queue_url = session.client("sqs", endpoint_url=aws_endpoint).create_queue(QueueName="cli-work")["QueueUrl"]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "CONNECTOR_QUEUE_URL": queue_url,
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from connectors.kvs.worker import main; sys.exit(main())",
         "--endpoint-url", aws_endpoint, "--region", REGION],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        for line in process.stdout:
            if "connector worker started" in line:
                break
        process.send_signal(signal.SIGTERM)
        output = process.stdout.read()
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
    assert "connector worker stopped" in output


def test_media_source_asks_for_the_data_endpoint_once_per_stream(session, emulator):
    stream_arn = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-pool-9/1"
    put_contact(emulator, stream_arn, CONTACT_A, first_index=0, count=1)
    kinesisvideo = session.client("kinesisvideo")
    with Stubber(kinesisvideo) as stub:
        stub.add_response(
            "get_data_endpoint",
            {"DataEndpoint": "https://s-1234.kinesisvideo.us-east-1.amazonaws.com"},
            {"StreamARN": stream_arn, "APIName": "GET_MEDIA"},
        )
        source = KvsMediaSource(kinesisvideo, media_endpoint_override=emulator.endpoint_url, session=session)
        for _ in range(2):
            body = b"".join(source.open(stream_arn, {"StartSelectorType": "EARLIEST"}))
            assert body.startswith(b"\x1a\x45\xdf\xa3")
        stub.assert_no_pending_responses()
