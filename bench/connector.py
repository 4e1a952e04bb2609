"""Benchmark: one KVS connector worker process under N concurrent live Connect contacts.

    python -m bench.connector [--contacts 50,100,200,300] [--seconds 20] [--start-spread-seconds 1]

For each N the local stack's parts run in processes of their own, so that each one's CPU
can be read from ``/proc``: moto four times (Kinesis, SQS, the KVS control plane,
DynamoDB; ``emulators.moto_server``), the KVS media emulator, and one
connector worker (``ConnectorWorker`` with a
``KinesisRecordProducer``, wired as ``cresta-pipeline connector run`` wires them, with the
checkpoint table). This process is the load generator: N contacts, each on a KVS stream of
its own, each writing one pre-built 1 s Connect fragment per second in real time
(``write_connect_fragment``: two 8 kHz PCM16 tracks, 32 blocks), their phases spread
evenly over the second, posted by a few threads, each contact on a connection of its own.
All contacts start in the first second, or spread over ``--start-spread-seconds``. As in
Connect, a contact's work item goes to the queue right after its first fragment is
written. The KVS emulator sends each fragment whole as it arrives (``random_chunks=False``).

Measured per frame: the fragment's write time (when its PutMedia answered PERSISTED) →
the ``ApproximateArrivalTimestamp`` of the frame's record on the audio-frames stream,
read back with GetRecords after the run; and per fragment the same up to its last frame
(the whole fragment in KDS). Fragments written in the first ``--warmup-seconds`` of each
contact are left out: they include the work queue's pick-up and the first GetMedia.
moto stamps arrivals with millisecond precision. CPU is user + system time over the
steady part of the run (warm-up end → last write), in % of one core; what the rest of the
machine used meanwhile (``/proc/stat``) is shown too, as other work on a shared machine
skews every figure. The read-back also checks every contact's frames for
reordering and duplicates, per track.

Not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import multiprocessing
import os
import queue
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from connectors.kinesis.producer import KinesisRecordProducer
from connectors.kinesis.reader import read_all_records
from connectors.kvs.checkpoints import DynamoDbCheckpointStore, create_table
from connectors.kvs.media import KvsMediaSource
from connectors.kvs.worker import ConnectorWorker, ReadSettings
from emulators.connect.simulator import EMULATED_INSTANCE_ID as INSTANCE_ID
from emulators.kvs import KvsMediaEmulator
from emulators.moto_server import MotoServerProcess
from emulators.stack import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, StackSettings
from pipeline.mkv import write_connect_fragment
from pipeline.records import AudioFrame, ContactWork, decode_audio_records

#: The local stack's names and sizes; moto runs here in a process of its own, so the
#: bench creates the resources itself rather than through LocalStack.
_STACK: Final = StackSettings()
FRAMES_STREAM: Final = _STACK.audio_frames_stream
FRAMES_SHARDS: Final = _STACK.audio_frames_shards
QUEUE: Final = _STACK.connector_queue
CHECKPOINT_TABLE: Final = _STACK.checkpoint_table
SAMPLE_RATE: Final = 8000
FRAGMENT_MS: Final = 1000
BYTES_PER_SAMPLE: Final = 2
#: KVS ends a GetMedia body ~3 s after the newest fragment; the worker ends a contact
#: after the same silence here, so the run does not wait the production 10 s.
MAX_IDLE_S: Final = 3.0
WRITER_THREADS: Final = 8
ENQUEUER_THREADS: Final = 4
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
#: One moto process per service, named as in the CPU columns, so that they do not share
#: a GIL or a request queue, as AWS's services share nothing: moto takes ~7 ms of CPU per
#: conditional UpdateItem, and the checkpoints of contacts that started together, due
#: together, held up PutRecords (the measured path) and the work queue in one process;
#: and the GetDataEndpoint of each contact that started slowed the work queue's
#: ReceiveMessage, which delivers the next contacts.
MOTO_SERVICES: Final = {
    "moto Kinesis": ("kinesis",),
    "moto SQS": ("sqs",),
    "moto KVS": ("kinesisvideo",),
    "moto DynamoDB": ("dynamodb",),
}


# -- the stack's processes ------------------------------------------------------------------


def _serve_kvs_media(conn: Connection) -> None:
    with KvsMediaEmulator(idle_timeout_s=MAX_IDLE_S, random_chunks=False) as emulator:
        conn.send(emulator.endpoint_url)
        conn.recv()


@dataclass(frozen=True)
class WorkerSettings:
    #: Service name → moto endpoint.
    endpoints: dict[str, str]
    kvs_media_endpoint: str
    queue_url: str
    max_concurrent_contacts: int
    log_path: str
    producer_options: dict[str, Any] = field(default_factory=dict)


def _serve_worker(conn: Connection, settings: WorkerSettings) -> None:
    """One worker process, wired as ``connectors.kvs.worker.main`` wires it."""
    logging.basicConfig(
        filename=settings.log_path, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    session = boto3.session.Session(
        region_name=REGION, aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY
    )
    # Every contact thread may call DynamoDB or GetDataEndpoint at once; with botocore's
    # default of 10 pooled connections the others open and drop a connection per call.
    config = Config(max_pool_connections=settings.max_concurrent_contacts)

    def service_client(service: str) -> Any:
        return session.client(service, endpoint_url=settings.endpoints[service], config=config)

    producer = KinesisRecordProducer(service_client("kinesis"), FRAMES_STREAM, **settings.producer_options)
    worker = ConnectorWorker(
        service_client("sqs"),
        settings.queue_url,
        KvsMediaSource(
            service_client("kinesisvideo"),
            media_endpoint_override=settings.kvs_media_endpoint,
            session=session,
        ),
        producer,
        max_concurrent_contacts=settings.max_concurrent_contacts,
        checkpoint_store=DynamoDbCheckpointStore(
            service_client("dynamodb"), CHECKPOINT_TABLE
        ),
        read_settings=ReadSettings(max_idle_s=MAX_IDLE_S),
    )
    stop = threading.Event()

    def stop_on_request() -> None:
        conn.recv()
        stop.set()

    threading.Thread(target=stop_on_request, daemon=True).start()
    conn.send("ready")
    worker.run(stop)
    producer.close()
    conn.send(
        {
            "contacts_done": worker.contacts_done,
            "contacts_handed_back": worker.contacts_handed_back,
            "put_records_calls": producer.calls,
            "records_retried": producer.records_retried,
        }
    )


class ChildProcess:
    """A spawned process that answers with one value when up and stops when told."""

    def __init__(self, target: Any, *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self.process = context.Process(target=target, args=(child_conn, *args), daemon=True)
        self.process.start()
        if not self._conn.poll(60):
            raise RuntimeError(f"{target.__name__} did not start")
        self.started_with = self._conn.recv()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def stop(self, timeout_s: float = 30) -> Any:
        """Ask the process to stop; returns what it sends back on its way out, if anything."""
        answer = None
        if self.process.is_alive():
            self._conn.send("stop")
            if self._conn.poll(timeout_s):
                try:
                    answer = self._conn.recv()
                except EOFError:
                    answer = None
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        return answer


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (fields 14 and 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """Busy CPU seconds of all cores since boot, from /proc/stat (all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


# -- load -------------------------------------------------------------------------------------


@dataclass
class Contact:
    contact_id: str
    stream_arn: str
    #: Seconds after the run's start at which the first fragment's audio is complete.
    phase_s: float
    fragments: list[bytes]
    start_timestamp_ms: int


@dataclass(frozen=True)
class FragmentWrite:
    contact_id: str
    index: int
    fragment_number: str
    written_at: float
    #: How late the POST started against its schedule (load-generator health).
    late_s: float


def build_contacts(
    stream_arns: Sequence[str], seconds: int, audio_start_ms: int, start_spread_s: float = 1.0
) -> list[Contact]:
    """Pre-built fragments; the audio is noise, shared between contacts (only cost matters)."""
    rng = random.Random(7)
    fragment_bytes = SAMPLE_RATE * FRAGMENT_MS // 1000 * BYTES_PER_SAMPLE
    audio = [(rng.randbytes(fragment_bytes), rng.randbytes(fragment_bytes)) for _ in range(seconds)]

    contacts = []
    count = len(stream_arns)
    for position, stream_arn in enumerate(stream_arns):
        contact_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        phase_s = FRAGMENT_MS / 1000 + start_spread_s * position / count
        start_ms = audio_start_ms + round((phase_s - FRAGMENT_MS / 1000) * 1000)
        fragments = [
            write_connect_fragment(
                contact_id=contact_id,
                instance_id=INSTANCE_ID,
                timecode_ms=start_ms + index * FRAGMENT_MS,
                customer_pcm=customer,
                agent_pcm=agent,
                sample_rate=SAMPLE_RATE,
            )
            for index, (customer, agent) in enumerate(audio)
        ]
        contacts.append(Contact(contact_id, stream_arn, phase_s, fragments, start_ms))
    return contacts


def put_media(connection: http.client.HTTPConnection, stream_arn: str, fragment: bytes) -> str:
    """PutMedia one fragment; the fragment number KVS acknowledged it with."""
    connection.request(
        "POST",
        "/putMedia",
        body=fragment,
        headers={"x-amzn-stream-arn": stream_arn, "content-type": "application/octet-stream"},
    )
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"PutMedia answered {response.status}: {body[:200]!r}")
    return str(json.loads(body.splitlines()[0])["FragmentNumber"])


def write_contacts(
    contacts: Sequence[Contact], kvs_endpoint: str, sqs: Any, queue_url: str, started_at: float
) -> list[FragmentWrite]:
    """Post every contact's fragments on schedule from a few threads; enqueue each contact
    after its first fragment, as Connect's flow Lambda does."""
    endpoint = urlsplit(kvs_endpoint)
    assert endpoint.hostname is not None and endpoint.port is not None
    writes: list[FragmentWrite] = []
    lock = threading.Lock()
    # Connect's flow Lambdas enqueue beside the audio and side by side: a writer that
    # waited for SQS would post audio late, and with 300 messages in the queue one moto
    # SendMessageBatch takes tens of milliseconds.
    work_items: queue.SimpleQueue[ContactWork | None] = queue.SimpleQueue()
    enqueuers = [
        threading.Thread(target=send_work_items, args=(work_items, sqs, queue_url), name=f"enqueuer-{i}")
        for i in range(ENQUEUER_THREADS)
    ]
    for enqueuer in enqueuers:
        enqueuer.start()

    def run(share: Sequence[Contact]) -> None:
        schedule = sorted(
            (started_at + contact.phase_s + index * FRAGMENT_MS / 1000, index, contact)
            for contact in share
            for index in range(len(contact.fragments))
        )
        # A Connect producer keeps one long-running PutMedia request per stream; a
        # connection per fragment would cost the emulator a thread and a TCP handshake each.
        connections = {
            contact.contact_id: http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
            for contact in share
        }
        done = []
        for due, index, contact in schedule:
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            began = time.time()
            number = put_media(connections[contact.contact_id], contact.stream_arn, contact.fragments[index])
            written_at = time.time()
            done.append(FragmentWrite(contact.contact_id, index, number, written_at, began - due))
            if index == 0:
                work_items.put(
                    ContactWork(
                        contact_id=contact.contact_id,
                        stream_arn=contact.stream_arn,
                        start_fragment_number=number,
                        instance_id=INSTANCE_ID,
                        start_timestamp_ms=contact.start_timestamp_ms,
                    )
                )
        for connection in connections.values():
            connection.close()
        with lock:
            writes.extend(done)

    threads = [
        threading.Thread(target=run, args=(contacts[i::WRITER_THREADS],), name=f"writer-{i}")
        for i in range(min(WRITER_THREADS, len(contacts)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in enqueuers:
        work_items.put(None)
    for enqueuer in enqueuers:
        enqueuer.join()
    return writes


def send_work_items(work_items: queue.SimpleQueue[ContactWork | None], sqs: Any, queue_url: str) -> None:
    """Send work items as they come, up to 10 per SendMessageBatch (the API's limit), until None."""
    while True:
        batch = [work_items.get()]
        while batch[-1] is not None and len(batch) < 10 and not work_items.empty():
            batch.append(work_items.get())
        items = [work for work in batch if work is not None]
        if items:
            response = sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "MessageBody": work.encode()} for i, work in enumerate(items)],
            )
            if response.get("Failed"):
                raise RuntimeError(f"work items not enqueued: {response['Failed']}")
        if batch[-1] is None:
            return


# -- read-back --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrivedFrame:
    contact_id: str
    track: int
    fragment_number: str
    frame_index: int
    arrived_at: float


def read_frames(kinesis: Any) -> tuple[list[ArrivedFrame], int]:
    """Every AudioFrame on the stream, in shard order, and the number of END records."""
    frames: list[ArrivedFrame] = []
    ends = 0
    for record in read_all_records(kinesis, FRAMES_STREAM):
        for decoded in decode_audio_records(record["Data"]):
            if isinstance(decoded, AudioFrame):
                frames.append(
                    ArrivedFrame(
                        decoded.contact_id,
                        int(decoded.track),
                        decoded.fragment_number,
                        decoded.frame_index,
                        record["ApproximateArrivalTimestamp"].timestamp(),
                    )
                )
            else:
                ends += 1
    return frames, ends


def order_faults(frames: Sequence[ArrivedFrame]) -> tuple[int, int]:
    """(frames behind a later frame of their contact and track, duplicate frames)."""
    last: dict[tuple[str, int], tuple[int, int]] = {}
    seen: set[tuple[str, int, str, int]] = set()
    reordered = duplicates = 0
    for frame in frames:
        identity = (frame.contact_id, frame.track, frame.fragment_number, frame.frame_index)
        if identity in seen:
            duplicates += 1
            continue
        seen.add(identity)
        position = (int(frame.fragment_number), frame.frame_index)
        stream = (frame.contact_id, frame.track)
        if stream in last and position < last[stream]:
            reordered += 1
        else:
            last[stream] = position
    return reordered, duplicates


# -- one run ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    contacts: int
    frames_measured: int
    fragments_measured: int
    frames_missing: int
    records_per_s: float
    frame_p50_ms: float
    frame_p99_ms: float
    fragment_p50_ms: float
    fragment_p99_ms: float
    cpu_percent: dict[str, float]
    #: CPU of everything else on the machine (other users' work included), % of one core.
    others_cpu_percent: float
    writer_late_p99_ms: float
    reordered: int
    duplicates: int
    ends: int
    worker_stats: dict[str, int]
    #: Fragment p99 by the fragment's second in its contact, warm-up included: where the
    #: tail comes from (the pick-up of contacts that start together, or steady load).
    fragment_p99_ms_by_second: dict[int, float] = field(default_factory=dict)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


def run_once(
    contact_count: int,
    seconds: int,
    warmup_s: int,
    producer_options: dict[str, Any],
    log_dir: Path,
    start_spread_s: float = 1.0,
) -> RunResult:
    motos = {name: MotoServerProcess().start() for name in MOTO_SERVICES}
    endpoints = {
        service: motos[name].endpoint_url for name, services in MOTO_SERVICES.items() for service in services
    }
    kvs = ChildProcess(_serve_kvs_media)
    worker: ChildProcess | None = None
    try:
        kinesis = client("kinesis", endpoints["kinesis"])
        kinesis.create_stream(StreamName=FRAMES_STREAM, ShardCount=FRAMES_SHARDS)
        sqs = client("sqs", endpoints["sqs"])
        queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
        create_table(client("dynamodb", endpoints["dynamodb"]), CHECKPOINT_TABLE)
        kinesisvideo = client("kinesisvideo", endpoints["kinesisvideo"])
        stream_arns = [
            kinesisvideo.create_stream(StreamName=f"connect-live-media-{i}", MediaType="audio/L16")["StreamARN"]
            for i in range(contact_count)
        ]
        contacts = build_contacts(stream_arns, seconds, int(time.time() * 1000), start_spread_s)
        worker = ChildProcess(
            _serve_worker,
            WorkerSettings(
                endpoints=endpoints,
                kvs_media_endpoint=kvs.started_with,
                queue_url=queue_url,
                max_concurrent_contacts=contact_count,
                log_path=str(log_dir / f"worker-{contact_count}.log"),
                producer_options=producer_options,
            ),
        )
        pids = {
            "worker": worker.pid,
            **{name: moto.pid for name, moto in motos.items()},
            "KVS emulator": kvs.pid,
            "load generator": os.getpid(),
        }

        started_at = time.time() + 0.5
        # From the last contact's end of warm-up to the first contact's last write.
        steady_from = started_at + start_spread_s + warmup_s
        steady_until = started_at + 1 + seconds
        cpu_before: dict[str, float] = {}
        machine_before = 0.0

        def sample_at_steady_start() -> None:
            nonlocal cpu_before, machine_before
            time.sleep(max(steady_from - time.time(), 0))
            cpu_before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
            machine_before = machine_busy_seconds()

        sampler = threading.Thread(target=sample_at_steady_start)
        sampler.start()
        writes = write_contacts(contacts, kvs.started_with, sqs, queue_url, started_at)
        sampler.join()
        cpu_after = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        machine_after = machine_busy_seconds()
        window_s = time.time() - steady_from

        _wait_until_queue_empty(sqs, queue_url, timeout_s=MAX_IDLE_S + 60)
        worker_stats = worker.stop() or {}
        worker = None
        frames, ends = read_frames(kinesis)
    finally:
        if worker is not None:
            worker.stop()
        kvs.stop()
        for moto in motos.values():
            moto.stop()

    return _summarize(
        contact_count,
        writes,
        frames,
        ends,
        warmup_s,
        window_s,
        (steady_from, steady_until),
        {name: 100 * (cpu_after[name] - cpu_before[name]) / window_s for name in pids},
        100 * (machine_after - machine_before) / window_s,
        worker_stats,
    )


def _wait_until_queue_empty(sqs: Any, queue_url: str, timeout_s: float) -> None:
    """Until every work item is deleted: every contact ended and its END is in KDS."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if all(int(value) == 0 for value in attributes.values()):
            return
        time.sleep(0.5)
    print(f"warning: work items left on the queue after {timeout_s:g} s", file=sys.stderr)


def _summarize(
    contact_count: int,
    writes: Sequence[FragmentWrite],
    frames: Sequence[ArrivedFrame],
    ends: int,
    warmup_s: int,
    window_s: float,
    steady: tuple[float, float],
    cpu_percent: dict[str, float],
    machine_busy_percent: float,
    worker_stats: dict[str, int],
) -> RunResult:
    written = {(write.contact_id, write.fragment_number): write for write in writes}
    arrivals: dict[tuple[str, str], list[float]] = defaultdict(list)
    for frame in frames:
        arrivals[(frame.contact_id, frame.fragment_number)].append(frame.arrived_at)
    frame_latencies: list[float] = []
    fragment_latencies: list[float] = []
    by_second: dict[int, list[float]] = defaultdict(list)
    missing = 0
    for key, write in written.items():
        arrived = arrivals.get(key)
        if arrived:
            by_second[write.index].append(max(arrived) - write.written_at)
        if write.index < warmup_s:
            continue
        if not arrived:
            missing += 1
            continue
        frame_latencies += [at - write.written_at for at in arrived]
        fragment_latencies.append(max(arrived) - write.written_at)
    in_window = sum(steady[0] <= frame.arrived_at < steady[1] for frame in frames)
    reordered, duplicates = order_faults(frames)
    return RunResult(
        contacts=contact_count,
        frames_measured=len(frame_latencies),
        fragments_measured=len(fragment_latencies),
        frames_missing=missing,
        records_per_s=in_window / (steady[1] - steady[0]),
        frame_p50_ms=1000 * percentile(frame_latencies, 0.50),
        frame_p99_ms=1000 * percentile(frame_latencies, 0.99),
        fragment_p50_ms=1000 * percentile(fragment_latencies, 0.50),
        fragment_p99_ms=1000 * percentile(fragment_latencies, 0.99),
        cpu_percent=cpu_percent,
        others_cpu_percent=machine_busy_percent - sum(cpu_percent.values()),
        writer_late_p99_ms=1000 * percentile([write.late_s for write in writes], 0.99),
        reordered=reordered,
        duplicates=duplicates,
        ends=ends,
        worker_stats=worker_stats,
        fragment_p99_ms_by_second={
            second: 1000 * percentile(latencies, 0.99) for second, latencies in sorted(by_second.items())
        },
    )


# -- CLI --------------------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive numbers")
    return counts


def _print_table(results: Sequence[RunResult]) -> None:
    header = (
        f"{'contacts':>8} {'frames':>7} {'rec/s':>6} {'frame p50':>9} {'frame p99':>9} "
        f"{'frag p50':>8} {'frag p99':>8} {'worker':>7} {'moto KDS':>8} {'SQS':>4} {'KVS':>4} {'DDB':>4} "
        f"{'KVS emu':>7} {'loadgen':>7} "
        f"{'others':>7} {'late p99':>8} {'reord':>5} {'dups':>5} {'back':>4} {'calls':>6}"
    )
    print(header)
    for r in results:
        cpu = r.cpu_percent
        print(
            f"{r.contacts:>8} {r.frames_measured:>7} {r.records_per_s:>6.0f} {r.frame_p50_ms:>7.0f}ms "
            f"{r.frame_p99_ms:>7.0f}ms {r.fragment_p50_ms:>6.0f}ms {r.fragment_p99_ms:>6.0f}ms "
            f"{cpu['worker']:>6.0f}% {cpu['moto Kinesis']:>7.0f}% {cpu['moto SQS']:>3.0f}% {cpu['moto KVS']:>3.0f}% "
            f"{cpu['moto DynamoDB']:>3.0f}% {cpu['KVS emulator']:>6.0f}% "
            f"{cpu['load generator']:>6.0f}% {r.others_cpu_percent:>6.0f}% {r.writer_late_p99_ms:>6.0f}ms "
            f"{r.reordered:>5} {r.duplicates:>5} {r.worker_stats.get('contacts_handed_back', 0):>4} "
            f"{r.worker_stats.get('put_records_calls', 0):>6}"
        )
    print(
        "frame: fragment written → frame's record in KDS; frag: → its last frame in KDS (fragments after the "
        "warm-up). CPU in % of one core over the steady part (moto KDS / SQS / KVS / DDB: the moto processes of "
        "Kinesis, SQS, the KVS control plane, DynamoDB); others: the rest of the machine. late: how late "
        "the load generator posted. reord/dups: frames out of order / duplicated per contact and track; back: contacts "
        "the worker handed back to the queue (a re-read replays from the last checkpoint)."
    )
    print("fragment p99 by the fragment's second in its contact (warm-up included), ms:")
    for r in results:
        print(f"{r.contacts:>8}  " + " ".join(f"{p99:.0f}" for p99 in r.fragment_p99_ms_by_second.values()))
    for r in results:
        if r.frames_missing or r.ends != r.contacts:
            print(
                f"{r.contacts} contacts: {r.frames_missing} measured fragments missing from KDS, "
                f"{r.ends} END records",
                file=sys.stderr,
            )


def _producer_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        options[name] = float(value) if "." in value else int(value)
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connector", description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=_counts, default=[50, 100, 200, 300],
                        help="concurrent contacts per run, comma-separated (default 50,100,200,300)")
    parser.add_argument("--seconds", type=int, default=20, help="audio per contact (default 20)")
    parser.add_argument("--warmup-seconds", type=int, default=3,
                        help="first fragments of each contact left out of the figures (default 3)")
    parser.add_argument("--start-spread-seconds", type=float, default=1.0,
                        help="contacts start evenly over this many seconds (default 1: all in the first)")
    parser.add_argument("--producer-option", action="append", default=[], metavar="NAME=VALUE",
                        help="a KinesisRecordProducer keyword argument, e.g. linger_s=0.005 (repeatable)")
    args = parser.parse_args(argv)
    if args.seconds <= args.warmup_seconds + args.start_spread_seconds:
        parser.error("--seconds must exceed --warmup-seconds plus --start-spread-seconds")
    producer_options = _producer_options(args.producer_option)

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-connector-") as log_dir:
        for count in args.contacts:
            print(f"running {count} contacts for {args.seconds} s…", file=sys.stderr, flush=True)
            result = run_once(
                count, args.seconds, args.warmup_seconds, producer_options, Path(log_dir), args.start_spread_seconds
            )
            results.append(result)
            warnings = (Path(log_dir) / f"worker-{count}.log").read_text().splitlines()
            if warnings:
                print(f"worker log ({len(warnings)} lines), the first {min(len(warnings), 10)}:", file=sys.stderr)
                for line in warnings[:10]:
                    print(f"  {line}", file=sys.stderr)
    print(
        f"{args.seconds} s per contact, 1 s fragments of 2 × 8 kHz PCM16 (32 frames); "
        f"producer options: {producer_options or 'defaults'}; {os.cpu_count()} cores"
    )
    _print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
