"""A contact on the local stack, a connector worker reading it, and the checks that
its audio reached the audio-frames stream exactly once: shared by the tests that run
workers over real HTTP against moto and the KVS media emulator."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import httpx

from connectors.kinesis.producer import KinesisRecordProducer
from connectors.kvs.checkpoints import ContactCheckpoint, DynamoDbCheckpointStore
from connectors.kvs.media import KvsMediaSource
from connectors.kvs.worker import ConnectorWorker, ReadSettings
from emulators.stack import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, LocalStack
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


def pcm(seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 256 for i in range(FRAGMENT_MS * 8 * 2))


class Contact:
    """What was written into KVS for one contact."""

    def __init__(self, contact_id: str, stream_arn: str, first_index: int = 0) -> None:
        """``first_index``: fragments of the stream before this contact's (a reused stream)."""
        self.contact_id = contact_id
        self.stream_arn = stream_arn
        self.first_index = first_index
        self.numbers: list[str] = []
        self.pcm: dict[Track, bytes] = {Track.CUSTOMER: b"", Track.AGENT: b""}

    def put(self, stack: LocalStack, count: int, **fragment_options: Any) -> None:
        """Write ``count`` more fragments; ``fragment_options`` go to ``write_connect_fragment``."""
        for _ in range(count):
            index = self.first_index + len(self.numbers)
            customer, agent = pcm(2 * index), pcm(2 * index + 1)
            response = httpx.post(
                f"{stack.kvs.endpoint_url}/putMedia",
                content=write_connect_fragment(
                    contact_id=self.contact_id,
                    instance_id="instance-1",
                    timecode_ms=T0 + index * FRAGMENT_MS,
                    customer_pcm=customer,
                    agent_pcm=agent,
                    **fragment_options,
                ),
                headers={"x-amzn-stream-arn": self.stream_arn},
            )
            response.raise_for_status()
            self.numbers.append(json.loads(response.text)["FragmentNumber"])
            self.pcm[Track.CUSTOMER] += customer
            self.pcm[Track.AGENT] += agent

    def queue(self, stack: LocalStack) -> None:
        work = ContactWork(self.contact_id, self.stream_arn, self.numbers[0] if self.numbers else "", "instance-1",
            T0 + self.first_index * FRAGMENT_MS,
        )
        stack.client("sqs").send_message(QueueUrl=stack.queue_url, MessageBody=work.encode())


def write_live(stack: LocalStack, contact: Contact, done: threading.Event) -> None:
    """A live call: a fragment now and then until ``done``."""
    while not done.wait(0.05):
        contact.put(stack, 1)


class RecordingMediaSource:
    """The real media source, with a note of every StartSelector asked for."""

    def __init__(self, stack: LocalStack, kinesisvideo_client: Any = None) -> None:
        session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, region_name=REGION
        )
        self.inner = KvsMediaSource(
            kinesisvideo_client or stack.client("kinesisvideo"),
            media_endpoint_override=stack.kvs.endpoint_url,
            session=session,
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
