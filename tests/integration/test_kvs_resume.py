"""Connector workers that crash, stop, reconnect and fail, on the local stack over real
HTTP: moto (SQS with its dead-letter queue, DynamoDB checkpoints, Kinesis, the KVS
control plane) and the KVS media emulator (session limit, dropped connections,
connection limit). Every test reads the audio-frames stream back and checks that each
frame is there exactly once, in order per track, and that the END record's totals
cover the whole contact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import httpx
import pytest

from connectors.kinesis.producer import KinesisRecordProducer
from connectors.kvs.checkpoints import ContactCheckpoint, DynamoDbCheckpointStore
from connectors.kvs.media import KvsMediaSource
from connectors.kvs.worker import ConnectorWorker, ReadSettings
from emulators.stack import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, LocalStack, StackSettings
from pipeline.mkv import write_connect_fragment
from pipeline.records import AudioEnd, AudioFrame, ContactWork, Track, decode_audio_records

CONTACT = "0f6d3e10-0000-4000-8000-000000000001"
OTHER_CONTACT = "0f6d3e10-0000-4000-8000-000000000002"
MISSING_STREAM_ARN = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/not-there/1726600000000"
T0 = 1_726_677_688_724
FRAGMENT_MS = 200
WAIT_S = 30.0
#: One shard, so the audio-frames stream reads back in publishing order.
FAST_STACK = {"audio_frames_shards": 1, "kvs_idle_timeout_s": 0.3, "kvs_pool_size": 1}


@pytest.fixture
def make_stack() -> Iterator[Callable[..., LocalStack]]:
    stacks: list[LocalStack] = []

    def start(**settings: Any) -> LocalStack:
        stack = LocalStack(StackSettings(**{**FAST_STACK, **settings}))
        stacks.append(stack)
        stack.start()
        return stack

    yield start
    for stack in stacks:
        stack.stop()


def pcm(seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 256 for i in range(FRAGMENT_MS * 8 * 2))


class Contact:
    """What was written into KVS for one contact."""

    def __init__(self, contact_id: str, stream_arn: str) -> None:
        self.contact_id = contact_id
        self.stream_arn = stream_arn
        self.numbers: list[str] = []
        self.pcm: dict[Track, bytes] = {Track.CUSTOMER: b"", Track.AGENT: b""}

    def put(self, stack: LocalStack, count: int) -> None:
        for _ in range(count):
            index = len(self.numbers)
            customer, agent = pcm(2 * index), pcm(2 * index + 1)
            response = httpx.post(
                f"{stack.kvs.endpoint_url}/putMedia",
                content=write_connect_fragment(
                    contact_id=self.contact_id,
                    instance_id="instance-1",
                    timecode_ms=T0 + index * FRAGMENT_MS,
                    customer_pcm=customer,
                    agent_pcm=agent,
                ),
                headers={"x-amzn-stream-arn": self.stream_arn},
            )
            response.raise_for_status()
            self.numbers.append(json.loads(response.text)["FragmentNumber"])
            self.pcm[Track.CUSTOMER] += customer
            self.pcm[Track.AGENT] += agent

    def queue(self, stack: LocalStack) -> None:
        work = ContactWork(self.contact_id, self.stream_arn, self.numbers[0] if self.numbers else "", "instance-1", T0)
        stack.client("sqs").send_message(QueueUrl=stack.queue_url, MessageBody=work.encode())


def write_live(stack: LocalStack, contact: Contact, done: threading.Event) -> None:
    """A live call: a fragment now and then until ``done``."""
    while not done.wait(0.05):
        contact.put(stack, 1)


class RecordingMediaSource:
    """The real media source, with a note of every StartSelector asked for."""

    def __init__(self, stack: LocalStack) -> None:
        session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, region_name=REGION
        )
        self.inner = KvsMediaSource(
            stack.client("kinesisvideo"), media_endpoint_override=stack.kvs.endpoint_url, session=session
        )
        self.selectors: list[dict[str, Any]] = []

    def open(self, stream_arn: str, start_selector: dict[str, Any]) -> Iterator[bytes]:
        self.selectors.append(start_selector)
        return self.inner.open(stream_arn, start_selector)


def checkpoints(stack: LocalStack) -> DynamoDbCheckpointStore:
    return DynamoDbCheckpointStore(stack.client("dynamodb"), stack.settings.checkpoint_table)


@contextmanager
def running_worker(
    stack: LocalStack, media_source: RecordingMediaSource, settings: ReadSettings, **options: Any
) -> Iterator[ConnectorWorker]:
    producer = KinesisRecordProducer(stack.client("kinesis"), stack.settings.audio_frames_stream, linger_s=0.01)
    options.setdefault("checkpoint_store", checkpoints(stack))
    worker = ConnectorWorker(
        stack.client("sqs"), stack.queue_url, media_source, producer, read_settings=settings, **options
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="test-worker")
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(WAIT_S)
        producer.close(timeout_s=WAIT_S)
    assert not thread.is_alive()


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_reaches(stack: LocalStack, contact: Contact, index: int) -> Callable[[], ContactCheckpoint | None]:
    def reached() -> ContactCheckpoint | None:
        checkpoint = checkpoints(stack).get(contact.contact_id)
        if checkpoint and int(checkpoint.last_fragment_number or 0) >= int(contact.numbers[index]):
            return checkpoint
        return None

    return reached


def read_records(stack: LocalStack, ends: set[str]) -> list[AudioFrame | AudioEnd]:
    """The audio-frames stream from its start until END records of ``ends`` are in it."""
    kinesis = stack.client("kinesis")
    name = stack.settings.audio_frames_stream
    shard = kinesis.describe_stream(StreamName=name)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    records: list[AudioFrame | AudioEnd] = []

    def all_ended() -> bool:
        nonlocal iterator
        response = kinesis.get_records(ShardIterator=iterator)
        iterator = response["NextShardIterator"]
        records.extend(r for record in response["Records"] for r in decode_audio_records(record["Data"]))
        return ends <= {r.contact_id for r in records if isinstance(r, AudioEnd)}

    wait_until(all_ended, f"END records of {sorted(ends)}")
    return records


def assert_exactly_once(records: list[AudioFrame | AudioEnd], contact: Contact, reason: str = "stream_ended") -> AudioEnd:
    """Every frame once, in order per track; one END after them with the whole contact's totals."""
    frames = [r for r in records if isinstance(r, AudioFrame) and r.contact_id == contact.contact_id]
    ends = [r for r in records if isinstance(r, AudioEnd) and r.contact_id == contact.contact_id]
    for track in Track:
        keys = [(int(f.fragment_number), f.frame_index) for f in frames if f.track is track]
        assert keys == sorted(set(keys)), f"{track.label} frames repeat or are out of order"
        assert b"".join(f.pcm for f in frames if f.track is track) == contact.pcm[track], f"{track.label} audio differs"
    assert [f.fragment_number for f in frames if f.frame_index == 0 and f.track is Track.CUSTOMER] == contact.numbers
    assert len(ends) == 1, f"{len(ends)} END records"
    end = ends[0]
    assert end.reason == reason
    assert end.customer_samples == len(contact.pcm[Track.CUSTOMER]) // 2
    assert end.agent_samples == len(contact.pcm[Track.AGENT]) // 2
    assert end.customer_frames + end.agent_frames == len(frames)
    assert end.last_fragment_number == (contact.numbers[-1] if contact.numbers else "")
    assert records.index(end) > max((records.index(f) for f in frames), default=-1)
    return end


def assert_queues_empty(stack: LocalStack) -> None:
    sqs = stack.client("sqs")
    for url in (stack.queue_url, stack.dead_letter_queue_url):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == attributes["ApproximateNumberOfMessagesNotVisible"] == "0"


def token_selector(number: str) -> dict[str, str]:
    return {"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": number}


def test_a_new_worker_resumes_a_killed_workers_contact_exactly_once(make_stack, tmp_path):
    stack = make_stack()
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 4)
    contact.queue(stack)
    log_path = tmp_path / "killed-worker.log"
    with log_path.open("w") as log_file:
        killed = subprocess.Popen(
            [sys.executable, "-c", "import sys; from connectors.kvs.worker import main; sys.exit(main())",
             "--frames-stream", stack.settings.audio_frames_stream,
             "--kvs-media-endpoint", stack.kvs.endpoint_url,
             "--checkpoint-interval-s", "0", "--max-idle-s", "60", "--visibility-timeout-s", "2"],
            env={**os.environ, **stack.aws_environment()}, stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            # Mid-contact: everything written so far is read and checkpointed, the
            # contact is live (its GetMedia connection open), and the worker dies.
            wait_until(checkpoint_reaches(stack, contact, 3), "the first worker's checkpoint")
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait(WAIT_S)
    contact.put(stack, 3)

    source = RecordingMediaSource(stack)
    with running_worker(stack, source, ReadSettings(max_idle_s=0.5), visibility_timeout_s=2) as worker:
        records = read_records(stack, {CONTACT})
    assert_exactly_once(records, contact)
    assert source.selectors[0] == token_selector(contact.numbers[3])
    assert worker.frames_published == sum(
        isinstance(r, AudioFrame) and int(r.fragment_number) > int(contact.numbers[3]) for r in records
    )
    final = checkpoints(stack).get(CONTACT)
    assert final.completed and final.end_reason == "stream_ended"
    assert_queues_empty(stack)


def test_a_stopped_worker_hands_its_contact_over_mid_stream_without_gap_or_duplicate(make_stack):
    stack = make_stack()
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 1)
    contact.queue(stack)
    writing_done = threading.Event()
    writer = threading.Thread(target=write_live, args=(stack, contact, writing_done))
    settings = ReadSettings(max_idle_s=0.5, checkpoint_interval_s=0)

    first_source = RecordingMediaSource(stack)
    writer.start()
    try:
        with running_worker(stack, first_source, settings) as first:
            wait_until(lambda: len(contact.numbers) > 4 and checkpoint_reaches(stack, contact, 3)(), "progress")
        handed_over_at = checkpoints(stack).get(CONTACT)
        second_source = RecordingMediaSource(stack)
        with running_worker(stack, second_source, settings) as second:
            wait_until(lambda: second_source.selectors, "the second worker to take the contact")
            writing_done.set()
            writer.join(WAIT_S)
            records = read_records(stack, {CONTACT})
    finally:
        writing_done.set()
    assert first.contacts_handed_back == 1 and first.contacts_done == 0
    assert second_source.selectors[0] == token_selector(handed_over_at.continuation_token)
    assert second.contacts_done == 1
    assert_exactly_once(records, contact)
    assert_queues_empty(stack)


def test_the_session_limit_ends_connections_and_reading_continues_without_a_gap(make_stack):
    # Bodies end by the session limit, never by idleness, as after KVS's 45 minutes.
    stack = make_stack(kvs_session_limit_s=0.4, kvs_idle_timeout_s=30)
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 1)
    contact.queue(stack)
    writing_done = threading.Event()
    writer = threading.Thread(target=write_live, args=(stack, contact, writing_done))
    source = RecordingMediaSource(stack)
    writer.start()
    try:
        with running_worker(stack, source, ReadSettings(max_idle_s=1.0)):
            wait_until(lambda: len(source.selectors) >= 3, "two reconnections")
            writing_done.set()
            writer.join(WAIT_S)
            records = read_records(stack, {CONTACT})
    finally:
        writing_done.set()
    assert_exactly_once(records, contact)
    assert all(s["StartSelectorType"] == "CONTINUATION_TOKEN" for s in source.selectors[1:])
    assert source.selectors[1]["ContinuationToken"] in contact.numbers


def test_a_connection_dropped_mid_fragment_is_resumed_without_a_duplicate(make_stack):
    stack = make_stack()
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 4)
    stack.kvs.cut_next_get_media(contact.stream_arn, after_fragments=2)
    contact.queue(stack)
    source = RecordingMediaSource(stack)
    with running_worker(stack, source, ReadSettings(max_idle_s=0.5)) as worker:
        records = read_records(stack, {CONTACT})
    assert_exactly_once(records, contact)
    assert source.selectors[1] == token_selector(contact.numbers[1])
    assert worker.contacts_handed_back == 0


def test_a_contact_that_keeps_failing_goes_to_the_dead_letter_queue(make_stack):
    # KVS refuses every connection (all of the stream's GetMedia slots are taken).
    stack = make_stack(kvs_max_connections_per_stream=0)
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 1)
    contact.queue(stack)
    sqs = stack.client("sqs")
    source = RecordingMediaSource(stack)
    settings = ReadSettings(retry_initial_s=0.01, retry_max_s=0.01, max_failed_connects=1)
    with running_worker(stack, source, settings, retry_delay_s=0) as worker:
        dead = wait_until(
            lambda: sqs.receive_message(QueueUrl=stack.dead_letter_queue_url, WaitTimeSeconds=1).get("Messages"),
            "the work item in the dead-letter queue",
        )
    assert ContactWork.decode(dead[0]["Body"]).contact_id == CONTACT
    assert worker.contacts_handed_back == stack.settings.max_receive_count
    assert len(source.selectors) == 2 * stack.settings.max_receive_count
    attributes = sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    kinesis = stack.client("kinesis")
    name = stack.settings.audio_frames_stream
    shard = kinesis.describe_stream(StreamName=name)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    assert kinesis.get_records(ShardIterator=iterator)["Records"] == []


def test_a_missing_stream_fails_its_contact_alone(make_stack):
    stack = make_stack()
    missing = Contact(OTHER_CONTACT, MISSING_STREAM_ARN)
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 3)
    missing.queue(stack)
    contact.queue(stack)
    with running_worker(stack, RecordingMediaSource(stack), ReadSettings(max_idle_s=0.5)) as worker:
        records = read_records(stack, {CONTACT, OTHER_CONTACT})
    assert_exactly_once(records, contact)
    assert_exactly_once(records, missing, reason="stream_not_found")
    assert checkpoints(stack).get(OTHER_CONTACT).end_reason == "stream_not_found"
    assert worker.contacts_done == 2
    assert_queues_empty(stack)
