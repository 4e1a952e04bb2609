"""The connector worker: end to end over real HTTP (moto for SQS, Kinesis and the KVS
control plane, the KVS media emulator for GetMedia; the audio-frames stream read back
with boto3), and ``read_contact`` against hand-written fakes that inject faults: a
media source with scripted connections and an in-memory checkpoint store."""

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
from connectors.kvs.checkpoints import (
    CheckpointError,
    ContactCheckpoint,
    DynamoDbCheckpointStore,
    StaleCheckpointError,
    create_table,
)
from connectors.kvs.media import KvsMediaSource, MediaSourceError
from connectors.kvs.worker import CheckpointWriter, ConnectorWorker, ContactReadResult, ReadSettings, read_contact
from emulators.kvs import KvsMediaEmulator
from pipeline.connect_stream import TAG_CONTINUATION_TOKEN, TAG_FRAGMENT_NUMBER
from pipeline.mkv import ebml, write_connect_fragment
from pipeline.records import AudioEnd, AudioFrame, ContactWork, Track, decode_audio_records

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION}
FRAMES_STREAM = "audio-frames"
CONTACT_A = "6c1e8a70-0000-4000-8000-00000000000a"
CONTACT_B = "6c1e8a70-0000-4000-8000-00000000000b"
T0 = 1_726_677_688_724
FRAGMENT_MS = 250
#: Reads against fakes: no waiting between attempts, and a body that ends ends the contact.
FAST = ReadSettings(max_idle_s=0, retry_initial_s=0, retry_max_s=0)


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its backends per process: resources of an earlier test module's stack
    # (the same stream and queue names) would still be there.
    httpx.post(f"{endpoint}/moto-api/reset").raise_for_status()
    yield endpoint
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
        records += [r for record in response["Records"] for r in decode_audio_records(record["Data"])]
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
    worker = ConnectorWorker(
        sqs, queue_url, media_source, producer, poll_wait_s=1, read_settings=ReadSettings(max_idle_s=0.5)
    )
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


class GatedMediaSource:
    """Each contact's GetMedia body is one fragment of it, held until ``release`` is set;
    counts the bodies open at once."""

    def __init__(self, contact_of_stream: dict[str, str]) -> None:
        self.contact_of_stream = contact_of_stream
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.opened: list[str] = []
        self.open_now = 0
        self.most_open = 0

    def open(self, stream_arn: str, start_selector: dict[str, Any]) -> Iterator[bytes]:
        self.opened.append(stream_arn)
        return self._body(self.contact_of_stream[stream_arn])

    def _body(self, contact_id: str) -> Iterator[bytes]:
        with self.lock:
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)
        try:
            self.release.wait(30)
            yield kvs_fragment(0, contact_id)
        finally:
            with self.lock:
                self.open_now -= 1


def test_several_receivers_never_take_more_contacts_than_the_worker_may_read(aws_endpoint, session):
    sqs = session.client("sqs", endpoint_url=aws_endpoint)
    queue_url = sqs.create_queue(QueueName="connector-receivers")["QueueUrl"]
    contacts = {f"arn:aws:kinesisvideo:{REGION}:123456789012:stream/pool-{i}/1": f"contact-{i:02d}" for i in range(12)}
    for stream_arn, contact_id in contacts.items():
        work = ContactWork(contact_id, stream_arn, fragment_number(0), "i", T0)
        sqs.send_message(QueueUrl=queue_url, MessageBody=work.encode())
    media_source = GatedMediaSource(contacts)
    producer = RecordingProducer()
    worker = ConnectorWorker(
        sqs, queue_url, media_source, producer, max_concurrent_contacts=3, receivers=4, read_settings=FAST
    )
    stop = threading.Event()
    running = threading.Thread(target=worker.run, args=(stop,))
    running.start()
    try:
        deadline = time.monotonic() + 20
        while media_source.open_now < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Four receivers long-poll while three contacts are read: none may take a fourth.
        time.sleep(1.5)
        assert media_source.open_now == 3
        media_source.release.set()
        while worker.contacts_done < len(contacts) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        running.join(10)
    assert not running.is_alive()
    assert media_source.most_open == 3
    assert worker.contacts_done == len(contacts)
    ends = [r for r in producer.records if isinstance(r, AudioEnd)]
    assert sorted(end.contact_id for end in ends) == sorted(contacts.values())


class ScriptedQueue:
    """The SQS calls the worker makes, answering ReceiveMessage from a script (then with
    nothing, after the long poll); records deletes and visibility changes."""

    def __init__(self, *batches: list[dict[str, Any]]) -> None:
        self.batches = list(batches)
        self.lock = threading.Lock()
        self.deleted: list[str] = []
        self.visibility_changes: list[tuple[str, int]] = []

    def receive_message(self, **request: Any) -> dict[str, Any]:
        with self.lock:
            batch = self.batches.pop(0) if self.batches else None
        if batch is None:
            time.sleep(request["WaitTimeSeconds"])
            return {}
        return {"Messages": batch}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> dict:
        self.deleted.append(ReceiptHandle)
        return {}

    def change_message_visibility(self, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> dict:
        self.visibility_changes.append((ReceiptHandle, VisibilityTimeout))
        return {}

    def change_message_visibility_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict:
        self.visibility_changes += [(e["ReceiptHandle"], e["VisibilityTimeout"]) for e in Entries]
        return {}


def test_a_message_delivered_again_while_read_is_read_once_and_deleted_with_its_newest_receipt():
    stream_arn = f"arn:aws:kinesisvideo:{REGION}:123456789012:stream/pool-0/1"
    body = ContactWork(CONTACT_A, stream_arn, fragment_number(0), "i", T0).encode()
    queue = ScriptedQueue(
        [{"MessageId": "m-1", "ReceiptHandle": "first", "Body": body}],
        [{"MessageId": "m-1", "ReceiptHandle": "second", "Body": body}],
    )
    media_source = GatedMediaSource({stream_arn: CONTACT_A})
    worker = ConnectorWorker(
        queue, "queue", media_source, RecordingProducer(), poll_wait_s=1, receivers=1, read_settings=FAST
    )
    stop = threading.Event()
    running = threading.Thread(target=worker.run, args=(stop,))
    running.start()
    try:
        deadline = time.monotonic() + 20
        while queue.batches and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        media_source.release.set()
        while worker.contacts_done < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        running.join(10)
    assert media_source.opened == [stream_arn]
    assert worker.contacts_done == 1
    assert queue.deleted == ["second"]


def test_a_worker_needs_a_receiver():
    with pytest.raises(ValueError, match="receivers"):
        ConnectorWorker(None, "queue", FakeMediaSource(), RecordingProducer(), receivers=0)


# -- read_contact against fakes ------------------------------------------------------------


def tags_element(name: str, value: str) -> bytes:
    simple_tag = ebml.element(
        ebml.SIMPLE_TAG, ebml.element(ebml.TAG_NAME, name.encode()), ebml.element(ebml.TAG_STRING, value.encode())
    )
    return ebml.element(ebml.TAGS, ebml.element(ebml.TAG, simple_tag))


def fragment_number(index: int) -> str:
    return str(91343852333181432392682062607743920146264440000 + index * 4_951_760_157_141_521_099)


def kvs_fragment(index: int, contact_id: str = CONTACT_A) -> bytes:
    """Fragment ``index`` as GetMedia returns it: KVS's number tag before the Cluster,
    Connect's tags after it, the continuation token last."""
    number = fragment_number(index)
    body = write_connect_fragment(
        contact_id=contact_id,
        instance_id="i",
        timecode_ms=T0 + index * FRAGMENT_MS,
        customer_pcm=pcm(2 * index),
        agent_pcm=pcm(2 * index + 1),
        extra_tags_before_cluster=[[(TAG_FRAGMENT_NUMBER, number)]],
    )
    return body + tags_element(TAG_CONTINUATION_TOKEN, number)


def written(indexes: range) -> dict[Track, bytes]:
    return {
        Track.CUSTOMER: b"".join(pcm(2 * i) for i in indexes),
        Track.AGENT: b"".join(pcm(2 * i + 1) for i in indexes),
    }


def token_selector(index: int) -> dict[str, str]:
    return {"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": fragment_number(index)}


class FakeMediaSource:
    """A MediaSource whose connections are scripted: each is a list of chunks (a
    ``MediaSourceError`` among them breaks the body there) or an error raised by
    ``open``. Once the script is used up, every body is empty."""

    def __init__(self, *connections: list[bytes | MediaSourceError] | MediaSourceError) -> None:
        self.connections = list(connections)
        self.selectors: list[dict[str, Any]] = []

    def open(self, stream_arn: str, start_selector: dict[str, Any]) -> Iterator[bytes]:
        self.selectors.append(start_selector)
        connection = self.connections.pop(0) if self.connections else []
        if isinstance(connection, MediaSourceError):
            raise connection
        return self._body(connection)

    @staticmethod
    def _body(chunks: list[bytes | MediaSourceError]) -> Iterator[bytes]:
        for chunk in chunks:
            if isinstance(chunk, MediaSourceError):
                raise chunk
            yield chunk


class RecordingProducer:
    """``publish`` and ``flush`` of a producer that keeps what it was given."""

    def __init__(self) -> None:
        self.records: list[AudioFrame | AudioEnd] = []
        self.flushed = 0

    def put(self, data: bytes, partition_key: str) -> None:
        records = decode_audio_records(data)
        assert {record.contact_id for record in records} == {partition_key}
        self.records.extend(records)

    def flush(self, timeout_s: float | None = None, partition_key: str | None = None) -> None:
        self.flushed = len(self.records)


class MemoryCheckpointStore:
    """A CheckpointStore in a dict with the DynamoDB store's ordering rule. Each write is
    checked against ``producer``: it may cover only frames the producer has flushed."""

    def __init__(self, producer: RecordingProducer, *initial: ContactCheckpoint) -> None:
        self.producer = producer
        self.items = {checkpoint.contact_id: checkpoint for checkpoint in initial}
        self.written: list[ContactCheckpoint] = []
        self.refuse_writes = False
        #: What each ``contact_ended_at_ms`` answers, in turn (the last one repeats);
        #: a CheckpointError among them is raised.
        self.ended_answers: list[int | CheckpointError] = [0]
        self.ended_checks = 0

    def get(self, contact_id: str) -> ContactCheckpoint | None:
        return self.items.get(contact_id)

    def contact_ended_at_ms(self, contact_id: str) -> int:
        answer = self.ended_answers[min(self.ended_checks, len(self.ended_answers) - 1)]
        self.ended_checks += 1
        if isinstance(answer, CheckpointError):
            raise answer
        return answer

    def mark_contact_ended(self, contact_id: str, ended_at_ms: int) -> None:
        raise AssertionError("the worker never marks a contact ended")

    def put(self, checkpoint: ContactCheckpoint, *, take_over: bool = False) -> None:
        stored = self.items.get(checkpoint.contact_id)
        if self.refuse_writes or (
            stored is not None
            and (
                stored.completed
                or stored.position > checkpoint.position
                or (stored.position == checkpoint.position and not (checkpoint.completed or take_over)
                    and stored.reader_id != checkpoint.reader_id)
            )
        ):
            raise StaleCheckpointError("stale")
        flushed = self.producer.records[: self.producer.flushed]
        covered = [
            record
            for record in self.producer.records
            if isinstance(record, AudioFrame)
            and int(record.fragment_number) <= int(checkpoint.last_fragment_number or 0)
        ]
        assert all(record in flushed for record in covered), "checkpoint covers unflushed frames"
        self.items[checkpoint.contact_id] = checkpoint
        self.written.append(checkpoint)


WORK = ContactWork(CONTACT_A, "arn:aws:kinesisvideo:us-east-1:123456789012:stream/s/1", fragment_number(0), "i", T0)


def read(
    source: FakeMediaSource,
    work: ContactWork = WORK,
    store: MemoryCheckpointStore | None = None,
    producer: RecordingProducer | None = None,
    settings: ReadSettings = FAST,
    stop: threading.Event | None = None,
    writer: CheckpointWriter | None = None,
) -> tuple[ContactReadResult, list[AudioFrame | AudioEnd]]:
    producer = producer or (store.producer if store else RecordingProducer())
    result = read_contact(
        work, source, producer.put, flush=producer.flush, checkpoint_store=store, checkpoint_writer=writer,
        settings=settings, stop=stop,
    )
    return result, producer.records


def assert_whole_contact(records: list, indexes: range, reason: str) -> None:
    """Every frame of the fragments ``indexes`` exactly once, in order, then the END."""
    frames = [r for r in records if isinstance(r, AudioFrame)]
    for track, pcm_bytes in written(indexes).items():
        keys = [(int(f.fragment_number), f.frame_index) for f in frames if f.track is track]
        assert keys == sorted(set(keys)), f"{track.label} frames repeat or are out of order"
        assert b"".join(f.pcm for f in frames if f.track is track) == pcm_bytes
    assert [r.reason for r in records if isinstance(r, AudioEnd)] == [reason]
    assert isinstance(records[-1], AudioEnd)


def test_corrupt_stream_fails_the_contact_with_an_end_record():
    good = write_connect_fragment(
        contact_id=CONTACT_A, instance_id="i", timecode_ms=T0, customer_pcm=pcm(1), agent_pcm=pcm(2)
    )
    result, records = read(FakeMediaSource([good, b"\x1a\x45\xdf\xa3\x80\xff garbage"]))
    assert result.reason == "corrupt_stream" and not result.retryable
    assert isinstance(records[-1], AudioEnd) and records[-1].reason == "corrupt_stream"
    assert records[-1].customer_samples == len(pcm(1)) // 2


def test_throttled_get_media_backs_off_then_reads_the_contact():
    source = FakeMediaSource(
        MediaSourceError("ConnectionLimitExceededException", "three readers already", retryable=True),
        MediaSourceError("ClientLimitExceededException", "too many calls", retryable=True),
        MediaSourceError("ThrottlingException", "slow down", retryable=True),
        [kvs_fragment(0), kvs_fragment(1)],
    )
    result, records = read(source)
    assert result.reason == "stream_ended"
    assert_whole_contact(records, range(2), "stream_ended")
    assert len(source.selectors) == 4
    assert source.selectors[3] == source.selectors[0], "nothing was read before the connection succeeded"


def test_get_media_that_stays_throttled_hands_the_contact_back_without_an_end():
    error = MediaSourceError("ConnectionLimitExceededException", "too many readers", retryable=True)
    source = FakeMediaSource(*[error] * 10)
    result, records = read(source, settings=ReadSettings(retry_initial_s=0, retry_max_s=0, max_failed_connects=2))
    assert result.retryable and records == []
    assert len(source.selectors) == 3


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("ResourceNotFoundException", "stream_not_found"),
        ("NotAuthorizedException", "not_authorized"),
        ("InvalidArgumentException", "get_media_failed"),
    ],
)
def test_get_media_errors_that_waiting_cannot_cure_end_the_contact_with_the_reason(code, reason):
    result, records = read(FakeMediaSource(MediaSourceError(code, "no", retryable=False)))
    assert not result.retryable
    assert [(type(r), r.reason) for r in records] == [(AudioEnd, reason)]


def test_start_selector_includes_the_first_fragment_when_the_timestamp_is_known():
    source = FakeMediaSource()
    read(source)
    read(source, ContactWork(CONTACT_A, WORK.stream_arn, "9134", "i", 0))
    assert source.selectors[0]["StartSelectorType"] == "PRODUCER_TIMESTAMP"
    assert source.selectors[0]["StartTimestamp"].timestamp() == T0 / 1000
    assert source.selectors[1] == {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "9134"}


def test_a_broken_connection_resumes_after_the_last_whole_fragment():
    third = kvs_fragment(2)
    source = FakeMediaSource(
        [kvs_fragment(0), kvs_fragment(1), third[: len(third) // 2],
         MediaSourceError("read_failed", "connection reset", retryable=True)],
        [third, kvs_fragment(3)],
    )
    result, records = read(source)
    assert_whole_contact(records, range(4), "stream_ended")
    assert source.selectors[1] == token_selector(1)
    assert result.connections == 2 and result.last_fragment_number == fragment_number(3)


def test_a_body_that_ends_inside_a_fragment_is_read_again_from_the_last_token():
    second = kvs_fragment(1)
    source = FakeMediaSource([kvs_fragment(0), second[:-40]], [second, kvs_fragment(2)])
    _, records = read(source)
    assert_whole_contact(records, range(3), "stream_ended")
    assert source.selectors[1] == token_selector(0)


def test_a_redelivered_contact_resumes_from_its_checkpoint_with_whole_totals():
    producer = RecordingProducer()
    first = MemoryCheckpointStore(producer)
    read(FakeMediaSource([kvs_fragment(0), kvs_fragment(1)], MediaSourceError("x", "y", retryable=True)),
         store=first, settings=ReadSettings(retry_initial_s=0, max_failed_connects=0, checkpoint_interval_s=0))
    checkpoint = first.items[CONTACT_A]
    assert checkpoint.last_fragment_number == fragment_number(1) and not checkpoint.completed
    published_before = list(producer.records)
    assert not any(isinstance(r, AudioEnd) for r in published_before)

    source = FakeMediaSource([kvs_fragment(2), kvs_fragment(3)])
    result, records = read(source, store=MemoryCheckpointStore(producer, checkpoint))
    assert source.selectors[0] == token_selector(1)
    assert_whole_contact(records, range(4), "stream_ended")
    end = records[-1]
    assert (end.customer_samples, end.agent_samples) == (len(written(range(4))[Track.CUSTOMER]) // 2,) * 2
    assert end.customer_frames + end.agent_frames == len(records) - 1
    assert end.last_fragment_number == fragment_number(3)
    assert result.frames_published == len(records) - 1 - len(published_before)


def test_checkpoints_follow_whole_fragments_and_end_completed():
    producer = RecordingProducer()
    store = MemoryCheckpointStore(producer)
    read(FakeMediaSource([b"".join(kvs_fragment(i) for i in range(4))]), store=store,
         settings=ReadSettings(max_idle_s=0, checkpoint_interval_s=0))
    assert [c.last_fragment_number for c in store.written[:4]] == [fragment_number(i) for i in range(4)]
    assert all(c.continuation_token == c.last_fragment_number for c in store.written)
    final = store.written[-1]
    assert final.completed and final.end_reason == "stream_ended"
    assert final.frames[Track.CUSTOMER] == sum(
        isinstance(r, AudioFrame) and r.track is Track.CUSTOMER for r in producer.records
    )


def test_checkpoints_written_in_the_background_follow_whole_fragments_in_order_and_end_completed():
    producer = RecordingProducer()
    store = MemoryCheckpointStore(producer)
    writer = CheckpointWriter()
    result, records = read(FakeMediaSource([kvs_fragment(i) for i in range(6)]), store=store,
                           settings=ReadSettings(max_idle_s=0, checkpoint_interval_s=0), writer=writer)
    writer.close()
    assert_whole_contact(records, range(6), "stream_ended")
    # A newer checkpoint may replace one still waiting, never overtake it; the store
    # checks that none covers a frame the producer had not confirmed.
    positions = [int(c.last_fragment_number) for c in store.written]
    assert positions == sorted(positions) and positions[-1] == int(fragment_number(5))
    assert store.written[-1].completed and result.reason == "stream_ended"


def test_a_reader_whose_background_checkpoint_is_refused_stops_without_an_end():
    producer = RecordingProducer()
    store = MemoryCheckpointStore(producer)
    store.refuse_writes = True
    writer = CheckpointWriter()
    result, records = read(FakeMediaSource([kvs_fragment(i) for i in range(4)]), store=store,
                           settings=ReadSettings(max_idle_s=0, checkpoint_interval_s=0), writer=writer)
    writer.close()
    assert result.reason == "superseded" and not result.retryable
    assert not any(isinstance(r, AudioEnd) for r in records)


class Gate:
    """A checkpoint write that runs until it is let go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        assert self.released.wait(10), "never released"


def test_the_writer_writes_only_the_newest_checkpoint_a_read_left_waiting():
    writer = CheckpointWriter()
    gate, written = Gate(), []
    writer.submit("read-a", gate)
    assert gate.entered.wait(10)
    writer.submit("read-b", lambda: written.append("b1"))
    writer.submit("read-b", lambda: written.append("b2"))
    writer.submit("read-c", lambda: written.append("c1"))
    gate.released.set()
    writer.close(timeout_s=10)
    assert written == ["b2", "c1"]


def test_withdrawing_drops_a_waiting_write_and_waits_for_a_running_one():
    writer = CheckpointWriter()
    gate, written = Gate(), []
    writer.submit("read-a", gate)
    assert gate.entered.wait(10)
    writer.submit("read-b", lambda: written.append("b"))
    assert writer.withdraw("read-b") is True
    withdrawn = threading.Thread(target=writer.withdraw, args=("read-a",))
    withdrawn.start()
    withdrawn.join(0.2)
    assert withdrawn.is_alive(), "withdraw must wait for the write that is running"
    gate.released.set()
    withdrawn.join(10)
    assert not withdrawn.is_alive()
    assert writer.withdraw("read-a") is False
    writer.close(timeout_s=10)
    assert written == []


def test_a_write_submitted_after_close_runs_at_once_in_the_caller():
    writer = CheckpointWriter()
    writer.close(timeout_s=10)
    caller = []
    writer.submit("read-a", lambda: caller.append(threading.current_thread()))
    assert caller == [threading.current_thread()]


#: Only Connect's DISCONNECTED (or, failing it, a minute of silence) ends these contacts.
PATIENT = ReadSettings(max_idle_s=60, retry_initial_s=0, retry_max_s=0, checkpoint_interval_s=0)


def test_a_disconnected_contact_ends_when_its_body_ends_without_waiting_for_the_idle_limit():
    store = MemoryCheckpointStore(RecordingProducer())
    store.ended_answers = [T0 + 2 * FRAGMENT_MS]
    source = FakeMediaSource([kvs_fragment(0) + kvs_fragment(1)])
    result, records = read(source, store=store, settings=PATIENT)
    assert result.reason == "contact_ended" and not result.retryable
    assert_whole_contact(records, range(2), "contact_ended")
    assert len(source.selectors) == 1 and store.ended_checks == 1
    assert store.items[CONTACT_A].completed and store.items[CONTACT_A].end_reason == "contact_ended"


def test_a_body_that_ends_while_the_contact_is_active_is_followed_by_the_next_connection():
    store = MemoryCheckpointStore(RecordingProducer())
    store.ended_answers = [0, 0, T0]
    source = FakeMediaSource([kvs_fragment(0)], [kvs_fragment(1)], [kvs_fragment(2)])
    result, records = read(source, store=store, settings=PATIENT)
    assert_whole_contact(records, range(3), "contact_ended")
    assert source.selectors[1:] == [token_selector(0), token_selector(1)]


def test_when_the_ended_mark_cannot_be_read_the_idle_limit_still_ends_the_contact():
    store = MemoryCheckpointStore(RecordingProducer())
    store.ended_answers = [CheckpointError("DynamoDB is unreachable")]
    result, records = read(FakeMediaSource([kvs_fragment(0)]), store=store,
                           settings=ReadSettings(max_idle_s=0, checkpoint_interval_s=0))
    assert result.reason == "stream_ended"
    assert_whole_contact(records, range(1), "stream_ended")


def test_a_resumed_contact_with_nothing_left_to_read_still_ends():
    producer = RecordingProducer()
    left = ContactCheckpoint(
        CONTACT_A, fragment_number(1), fragment_number(1),
        frames={Track.CUSTOMER: 8, Track.AGENT: 8}, samples={Track.CUSTOMER: 4000, Track.AGENT: 4000},
        reader_id="reader-of-the-crashed-worker",
    )
    store = MemoryCheckpointStore(producer, left)
    result, records = read(FakeMediaSource(), store=store)
    assert [(type(r), r.reason) for r in records] == [(AudioEnd, "stream_ended")]
    assert (records[0].customer_samples, records[0].agent_frames) == (4000, 8)
    assert store.items[CONTACT_A].completed and result.reason == "stream_ended"


def test_a_completed_contact_is_not_read_again():
    producer = RecordingProducer()
    done = ContactCheckpoint(CONTACT_A, fragment_number(3), fragment_number(3), completed=True, end_reason="x")
    source = FakeMediaSource([kvs_fragment(4)])
    result, records = read(source, store=MemoryCheckpointStore(producer, done))
    assert result.reason == "already_completed" and not result.retryable
    assert records == [] and source.selectors == []


def test_a_reader_that_lost_the_contact_stops_without_an_end():
    producer = RecordingProducer()
    store = MemoryCheckpointStore(producer)
    store.refuse_writes = True
    result, records = read(
        FakeMediaSource([kvs_fragment(0), kvs_fragment(1)]),
        store=store,
        settings=ReadSettings(max_idle_s=0, checkpoint_interval_s=0),
    )
    assert result.reason == "superseded" and not result.retryable
    assert not any(isinstance(r, AudioEnd) for r in records)


def test_stopping_hands_the_contact_back_at_a_whole_fragment_with_a_checkpoint():
    stop = threading.Event()
    third = kvs_fragment(2)

    def body() -> Iterator[bytes]:
        yield kvs_fragment(0) + kvs_fragment(1)
        stop.set()
        yield third[:100]

    class StoppingSource(FakeMediaSource):
        def open(self, stream_arn: str, start_selector: dict[str, Any]) -> Iterator[bytes]:
            self.selectors.append(start_selector)
            return body()

    producer = RecordingProducer()
    store = MemoryCheckpointStore(producer)
    result, records = read(StoppingSource(), store=store, stop=stop, settings=ReadSettings(max_idle_s=60))
    assert result.retryable and result.reason == "stopped"
    assert {r.fragment_number for r in records} == {fragment_number(0), fragment_number(1)}
    assert store.items[CONTACT_A].last_fragment_number == fragment_number(1)
    assert producer.flushed == len(records)


# -- the CLI, the checkpoint store and the media source ----------------------------------------


def test_checkpoint_store_orders_writes_in_dynamodb(aws_endpoint, session):
    dynamodb = session.client("dynamodb", endpoint_url=aws_endpoint)
    create_table(dynamodb, "checkpoints-order")
    store = DynamoDbCheckpointStore(dynamodb, "checkpoints-order")

    def at(index: int, reader: str, **changes: Any) -> ContactCheckpoint:
        number = fragment_number(index)
        counts = {Track.CUSTOMER: index, Track.AGENT: index}
        return ContactCheckpoint(CONTACT_A, number, number, counts, counts, reader_id=reader, **changes)

    def refused(checkpoint: ContactCheckpoint, **options: Any) -> bool:
        try:
            store.put(checkpoint, **options)
        except StaleCheckpointError:
            return True
        return False

    assert store.get(CONTACT_A) is None
    store.put(at(1, "a"))
    store.put(at(1, "a"))
    assert refused(at(0, "a")), "backwards"
    assert refused(at(1, "b")), "same fragment, another reader"
    store.put(at(1, "b"), take_over=True)
    assert refused(at(1, "a")), "the reader that was taken over"
    store.put(at(2, "a"))
    assert refused(at(2, "b")), "the reader that lost the race to the next fragment"
    store.put(at(2, "b", completed=True, end_reason="stream_ended"))
    assert refused(at(3, "a")) and refused(at(3, "a"), take_over=True), "completed is final"
    assert store.get(CONTACT_A) == at(2, "b", completed=True, end_reason="stream_ended")


def test_ended_mark_and_checkpoints_share_the_item_without_erasing_each_other(aws_endpoint, session):
    dynamodb = session.client("dynamodb", endpoint_url=aws_endpoint)
    create_table(dynamodb, "checkpoints-ended")
    store = DynamoDbCheckpointStore(dynamodb, "checkpoints-ended")
    counts = {Track.CUSTOMER: 1, Track.AGENT: 1}
    first = ContactCheckpoint(CONTACT_A, fragment_number(1), fragment_number(1), counts, counts, reader_id="a")
    later = ContactCheckpoint(CONTACT_A, fragment_number(2), fragment_number(2), counts, counts, reader_id="a")

    assert store.contact_ended_at_ms(CONTACT_A) == 0
    store.mark_contact_ended(CONTACT_A, T0)
    assert store.get(CONTACT_A) is None, "a mark alone is no progress"
    store.put(first)
    store.mark_contact_ended(CONTACT_A, T0 + 5000)
    store.put(later)
    assert store.get(CONTACT_A) == later
    assert store.contact_ended_at_ms(CONTACT_A) == T0, "the first mark stays"
    assert store.contact_ended_at_ms(CONTACT_B) == 0


def run_cli_until_started(args: list[str], env: dict[str, str]) -> str:
    """Start ``connector run``, wait for its start line, SIGTERM it; the start line."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from connectors.kvs.worker import main; sys.exit(main())", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        started = next((line for line in process.stdout if "connector worker started" in line), "")
        process.send_signal(signal.SIGTERM)
        output = process.stdout.read()
        assert process.wait(timeout=10) == 0, output
    finally:
        process.kill()
    assert "connector worker stopped" in output
    return started


def test_cli_stops_cleanly_on_sigterm(aws_endpoint, session):
    queue_url = session.client("sqs", endpoint_url=aws_endpoint).create_queue(QueueName="cli-work")["QueueUrl"]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "CONNECTOR_QUEUE_URL": queue_url,
    }
    started = run_cli_until_started(
        ["--endpoint-url", aws_endpoint, "--region", REGION, "--checkpoint-table", "cli-checkpoints",
         "--max-idle-s", "2.5"],
        env,
    )
    assert "checkpoints=on max_idle_s=2.5" in started


def test_cli_reads_a_config_file_under_the_environment_under_flags(aws_endpoint, session, tmp_path):
    sqs = session.client("sqs", endpoint_url=aws_endpoint)
    queue_url = sqs.create_queue(QueueName="cli-config-work")["QueueUrl"]
    config = tmp_path / "connector.json"
    config.write_text(json.dumps([
        {"PropertyGroupId": "aws", "PropertyMap": {"endpoint_url": aws_endpoint, "region": REGION}},
        {"PropertyGroupId": "connector", "PropertyMap": {
            "queue_url": "https://wrong.example/queue", "max_idle_s": "7", "checkpoint_table": "from-file"}},
    ]))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CRESTA_PIPELINE_", "CONNECTOR_", "CHECKPOINT_"))},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "CRESTA_PIPELINE_CONNECTOR_QUEUE_URL": queue_url,
        "CRESTA_PIPELINE_CONNECTOR_MAX_IDLE_S": "8",
    }
    started = run_cli_until_started(["--config", str(config)], env)
    assert f"queue={queue_url} checkpoints=on max_idle_s=8" in started
    started = run_cli_until_started(["--config", str(config), "--max-idle-s", "9"], env)
    assert "max_idle_s=9" in started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-idle-s", "soon"], "connector.max_idle_s"),
        (["--visibility-timeout-s", "0"], "connector.visibility_timeout_s = '0', expected 1..43200"),
        ([], "connector.queue_url is required"),
    ],
    ids=["not-a-number", "out-of-range", "no-queue"],
)
def test_cli_names_the_bad_setting(args, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRESTA_PIPELINE_", "CONNECTOR_"))}
    if args:
        env["CONNECTOR_QUEUE_URL"] = "https://sqs.us-east-1.amazonaws.com/123456789012/work"
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from connectors.kvs.worker import main; sys.exit(main())", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr


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


def test_media_source_retries_limits_and_server_errors_but_not_a_missing_stream(session):
    stream_arn = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-pool-9/1"
    kinesisvideo = session.client("kinesisvideo")
    source = KvsMediaSource(kinesisvideo, session=session)
    expected = {
        "ClientLimitExceededException": (400, True),
        "InvalidEndpointException": (400, True),
        "InternalFailure": (500, True),
        "ResourceNotFoundException": (404, False),
        "NotAuthorizedException": (401, False),
    }
    with Stubber(kinesisvideo) as stub:
        for code, (status, _) in expected.items():
            stub.add_client_error("get_data_endpoint", service_error_code=code, http_status_code=status)
        for code, (_, retryable) in expected.items():
            with pytest.raises(MediaSourceError) as raised:
                source.open(stream_arn, {"StartSelectorType": "NOW"})
            assert (raised.value.code, raised.value.retryable) == (code, retryable)
