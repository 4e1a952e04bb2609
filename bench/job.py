"""Benchmark: the PyFlink job under N concurrent live contacts, fed straight into KDS.

    python -m bench.job [--contacts 50,100,200] [--seconds 20] [--set KEY=VALUE]...

The job alone is measured: its input is written into the local KDS (moto) in the shape
the KVS connector writes it, so neither KVS nor the connector is in the figures. Each run
has these processes, so that each one's CPU can be read from ``/proc``:

- moto's Kinesis (``emulators.moto_server``);
- the Cresta emulator (token endpoint and strict Media Streams receivers);
- the job, as the demo runs it (``python -m jobs.audio_job --config FILE``, its own
  process group): the client that submits it, the JVM with the local minicluster, and,
  with ``--worker-processes``, the Python worker processes the JVM starts;
- this process, the load generator.

Load: N contacts, each one call of ``--seconds`` s with its phase spread evenly over
``--start-spread-seconds``. Per contact: its STARTED contact event before the audio
begins; then, per second, one 1 s Connect fragment's frames as one frame-batch record on
``audio-frames`` (built the connector's way: a Connect-layout MKV fragment parsed by
``MkvStreamParser`` and ``ConnectContactStream``, 16 frames per track), written through
the connector's ``KinesisRecordProducer`` when the second of audio it holds is over;
after the last, the END record with the contact's totals, then its ENDED event. The audio
is ``emulators.connect.voices``, two voices taking turns, as in the demo.

Pipeline-added latency here = the Cresta emulator's receipt of the media message holding
a chunk's last sample − the ``ApproximateArrivalTimestamp`` of the KDS record holding
that sample (moto stamps milliseconds). It is the demo's measure (``emulators.demo_report``
matches Cresta's audio to the source) with the record's write into KDS in place of the
fragment's write into KVS: it leaves out KVS and the connector, and what the job adds
starts with its Kinesis source's polling. Chunks whose record was written in a contact's
first ``--warmup-seconds`` are left out (they include each contact's WebSocket opening).
The latency is split with the audit trail: record in KDS → chunk assembled (the chunk's
``chunk_start + duration + ingest_lag``), and assembled → Cresta's acceptance (its
``delivery_latency_ms``).

CPU is user + system time over the steady part of the run (the last contact's warm-up
end → the last record written), per process, in % of one core; "others" is the rest of
the machine (``/proc/stat``), which on a shared machine skews the latencies, not the CPU
times. The JVM's share is also split by thread name, and its JIT compiler threads
(start-up work a long-running job no longer does) are shown apart. Frames per second per
core = the frames the job assembled into chunks in the steady part (from the audit trail:
the samples of the chunks assembled then, 500 per frame) ÷ the job's CPU seconds there
(client, JVM less JIT, Python workers): a cost, valid whether or not the job keeps up.
Peak RSS is each process's ``VmHWM`` (the Python workers summed). Checks: the demo's
(``build_report``): no chunk missing or duplicated in the audit trail, the audit's audio
equal to the source's, and each contact's audio at Cresta exactly the source's μ-law,
once and in order.

Where the job's Python functions run: on a local minicluster PyFlink runs them in the
process that submitted the job ("loopback"); ``--worker-processes`` gives them Python
worker processes, as a cluster does; ``--set flink.python_execution_mode=thread`` runs
them inside the JVM. The job's REST API (``flink.rest_port``, a free port) gives, at the
end of the steady part, its own metrics (``pipeline.metrics``), each task's busy /
back-pressured / idle time, and its checkpoint statistics.

Not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Final

import pyarrow.fs as pafs

from bench.connector import (
    CLOCK_TICKS,
    ChildProcess,
    client,
    machine_busy_seconds,
    percentile,
    process_cpu_seconds,
)
from connectors.cresta.credentials import CLIENT_ID_ENV, CLIENT_SECRET_ENV
from connectors.kinesis.producer import KinesisRecordProducer
from connectors.kinesis.reader import read_all_records
from emulators.connect.simulator import FragmentWrite, SimulatedCall
from emulators.connect.voices import synthesize_track
from emulators.moto_server import MotoServerProcess
from emulators.cresta import CrestaEmulator
from emulators.demo import AuditTrail, JobProcess, wait_for_audit
from emulators.demo_report import build_report, chunk_receipt, cresta_spans
from emulators.stack import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, StackSettings
from jobs.flink_rest import FlinkRest, pick_rest_port
from pipeline.audio import pcm16_to_mulaw
from pipeline.config import load_config
from pipeline.connect_stream import TAG_FRAGMENT_NUMBER, ConnectContactStream
from pipeline.media_streams import TWILIO_TRACK_OF
from pipeline.metrics import METRIC_GROUP
from pipeline.mkv import MkvStreamParser, write_connect_fragment
from pipeline.records import AudioFrame, ContactEvent, EventType, Track, decode_audio_records, encode_frame_batches

_STACK: Final = StackSettings()
FRAMES_STREAM: Final = _STACK.audio_frames_stream
FRAMES_SHARDS: Final = _STACK.audio_frames_shards
EVENTS_STREAM: Final = _STACK.contact_events_stream
INSTANCE_ID: Final = "d5b716a2-6b0e-4f38-9d55-52d1f6b2f0a1"
SAMPLE_RATE: Final = 8000
FRAGMENT_SAMPLES: Final = SAMPLE_RATE
CRESTA_CLIENT_ID: Final = "bench-client"
JOB_START_TIMEOUT_S: Final = 300.0
WARM_UP_CONTACT_ID: Final = "bench-warm-up"
#: PutRecords takes at most 500 records per call.
EVENTS_PER_CALL: Final = 500
PROGRESS_EVERY_S: Final = 5.0
#: The JVM's JIT compiler threads, by name.
JIT_THREADS: Final = ("C1 CompilerThre", "C2 CompilerThre")


# -- the Cresta emulator's process ---------------------------------------------------------


@dataclass(frozen=True)
class CrestaEndpoints:
    auth_url: str
    ws_url: str
    client_secret: str
    media_token: str


def _serve_cresta(conn: Connection) -> None:
    client_secret, media_token = secrets.token_urlsafe(24), secrets.token_urlsafe(16)
    with CrestaEmulator(
        client_id=CRESTA_CLIENT_ID, client_secret=client_secret, media_token=media_token
    ) as emulator:
        conn.send(CrestaEndpoints(emulator.auth_url, emulator.ws_url, client_secret, media_token))
        conn.recv()
        conn.send(emulator.calls())


# -- the load -------------------------------------------------------------------------------


@dataclass
class PlannedContact:
    call: SimulatedCall
    #: Producer timestamp (epoch ms) of the call's first sample.
    audio_start_ms: int
    #: One frame-batch record per fragment, then the END record.
    records: list[bytes]
    #: When each record is due (epoch s): a fragment when its second of audio is over.
    due: list[float]
    fragment_numbers: list[str]
    frames: int = 0


def plan_contact(index: int, seconds: int, audio_start_ms: int) -> PlannedContact:
    """One contact's records, built as the connector builds them from Connect's MKV."""
    contact_id = str(uuid.uuid4())
    pcm = {track: synthesize_track(track, seconds, seed=index) for track in Track}
    parser, stream = MkvStreamParser(), ConnectContactStream(contact_id)
    records: list[bytes] = []
    numbers: list[str] = []
    frames = 0
    for k in range(seconds):
        number = str(10**20 + index * 10**6 + k)
        data = write_connect_fragment(
            contact_id=contact_id,
            instance_id=INSTANCE_ID,
            timecode_ms=audio_start_ms + 1000 * k,
            customer_pcm=pcm[Track.CUSTOMER][2 * FRAGMENT_SAMPLES * k : 2 * FRAGMENT_SAMPLES * (k + 1)],
            agent_pcm=pcm[Track.AGENT][2 * FRAGMENT_SAMPLES * k : 2 * FRAGMENT_SAMPLES * (k + 1)],
            extra_tags_before_cluster=[[(TAG_FRAGMENT_NUMBER, number)]],
        )
        released: list[AudioFrame] = stream.feed(parser.feed(data))
        if not released or any(frame.fragment_number != number for frame in released):
            raise RuntimeError(f"fragment {k} of contact {index} did not come out whole")
        records += encode_frame_batches(released)
        numbers.append(number)
        frames += len(released)
    if len(records) != seconds:
        raise RuntimeError("a fragment's frames did not fit one frame-batch record")
    records.append(stream.end().encode())
    start_s = audio_start_ms / 1000
    call = SimulatedCall(
        contact_id=contact_id,
        stream_arn="",
        instance_id=INSTANCE_ID,
        seconds=seconds,
        seed=index,
        attributes={"bench": "job"},
        agent_id="",
        pcm=pcm,
    )
    due = [start_s + k + 1 for k in range(seconds)] + [start_s + seconds]
    return PlannedContact(call, audio_start_ms, records, due, numbers, frames)


def plan_contacts(count: int, seconds: int, starts_at: float, spread_s: float) -> list[PlannedContact]:
    return [
        plan_contact(i, seconds, int(1000 * (starts_at + spread_s * i / count)))
        for i in range(count)
    ]


def contact_event(kind: EventType, contact: PlannedContact) -> ContactEvent:
    return ContactEvent(
        type=kind,
        contact_id=contact.call.contact_id,
        event_time_ms=int(time.time() * 1000),
        instance_id=INSTANCE_ID,
        attributes=contact.call.attributes,
    )


def put_events(kinesis: Any, events: Sequence[ContactEvent]) -> None:
    for first in range(0, len(events), EVENTS_PER_CALL):
        batch = events[first : first + EVENTS_PER_CALL]
        response = kinesis.put_records(
            StreamName=EVENTS_STREAM,
            Records=[{"Data": event.encode(), "PartitionKey": event.contact_id} for event in batch],
        )
        if response.get("FailedRecordCount"):
            raise RuntimeError(f"contact events not written: {response['FailedRecordCount']} failed")


def write_records(contacts: Sequence[PlannedContact], producer: KinesisRecordProducer) -> list[float]:
    """Puts every record when it is due, in due order; returns how late each put was (s)."""
    pending = [(contact.due[0], i, 0) for i, contact in enumerate(contacts)]
    heapq.heapify(pending)
    late: list[float] = []
    next_progress = time.time() + PROGRESS_EVERY_S
    while pending:
        due, i, k = heapq.heappop(pending)
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        contact = contacts[i]
        producer.put(contact.records[k], contact.call.contact_id)
        late.append(max(0.0, time.time() - due))
        if k + 1 < len(contact.records):
            heapq.heappush(pending, (contact.due[k + 1], i, k + 1))
        if time.time() >= next_progress:
            next_progress += PROGRESS_EVERY_S
            print(f"  … {len(late)} records written, {producer.buffered} unconfirmed", file=sys.stderr, flush=True)
    producer.flush()
    return late


# -- the job's processes -------------------------------------------------------------------


def job_environment(cresta: CrestaEndpoints, worker_processes: bool, log_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        # Flink's own log (task failures, restarts, checkpoints); PyFlink's default is a
        # file inside its package, which every local job on the machine rewrites.
        "FLINK_LOG_DIR": str(log_dir),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        CLIENT_ID_ENV: CRESTA_CLIENT_ID,
        CLIENT_SECRET_ENV: cresta.client_secret,
    }
    if worker_processes:
        # PyFlink's switch (read by StreamExecutionEnvironment._open) from running a local
        # minicluster's Python functions in the submitting process ("loopback") to Python
        # worker processes, as a cluster runs them.
        env["_python_worker_execution_mode"] = "process"
    return env


def start_bench_job(
    kinesis_endpoint: str, cresta: CrestaEndpoints, out: Path, overrides: dict[str, str], worker_processes: bool
) -> tuple[JobProcess, Any]:
    ready_file = out / "job.ready"
    ready_file.unlink(missing_ok=True)
    config = load_config(
        env={},
        overrides={
            "aws.endpoint_url": kinesis_endpoint,
            "aws.region": REGION,
            "audit.path": (out / "audit").as_uri(),
            "cresta.auth_url": cresta.auth_url,
            "cresta.ws_url": cresta.ws_url,
            "cresta.media_token": cresta.media_token,
            "job.ready_file": str(ready_file),
            "flink.rest_port": str(pick_rest_port()),
            "flink.working_dir": str(out / "flink-working-dir"),
            **overrides,
        },
    )
    config_path = out / "job-properties.json"
    config_path.write_text(json.dumps(config.to_property_groups(), indent=2))
    env = job_environment(cresta, worker_processes, out)
    return JobProcess(config_path, env, out / "job.log", ready_file, Path(config["flink.working_dir"])), config


def python_mode(execution_mode: str, worker_processes: bool) -> str:
    """Where the job's Python functions ran: ``thread`` (in the JVM), ``workers`` (Python
    worker processes) or ``loopback`` (in the process that submitted the job)."""
    if execution_mode == "thread":
        return "thread"
    return "workers" if worker_processes else "loopback"


def process_group(session: int) -> dict[int, str]:
    """The processes of a session (the job's), by pid: its role in the figures."""
    roles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) != session:
            continue
        pid = int(entry.name)
        if pid == session:
            roles[pid] = "job client"
        elif "java" in cmdline.split(" ", 1)[0]:
            roles[pid] = "JVM"
        else:
            roles[pid] = "Python workers"
    return roles


def sum_by_role(pids: dict[int, str], measure: Callable[[int], float]) -> dict[str, float]:
    """``measure`` of each process, summed by role; a process gone in between counts 0."""
    totals: dict[str, float] = defaultdict(float)
    for pid, role in pids.items():
        try:
            totals[role] += measure(pid)
        except OSError:
            pass
    return totals


def cpu_by_role(pids: dict[int, str]) -> dict[str, float]:
    return sum_by_role(pids, process_cpu_seconds)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time of a process's threads, summed by thread name (the JVM
    names its threads after their task, truncated to 15 characters: ``Legacy Source T``,
    ``assemble-and-de``, ``GC Thread#0``), numbers at the end dropped."""
    totals: dict[str, float] = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")].rstrip("0123456789#-")
        fields = stat[stat.rindex(")") + 2 :].split()
        totals[name] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return totals


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_by_role(pids: dict[int, str]) -> dict[str, float]:
    return sum_by_role(pids, peak_rss_mb)


# -- one run --------------------------------------------------------------------------------


@dataclass
class RunResult:
    contacts: int
    python_mode: str
    #: AudioFrames per second the job assembled into chunks in the steady part, from the
    #: audit trail (the samples of the chunks assembled then, 500 per frame).
    frames_per_s: float
    frames_written_per_s: float
    job_cpu_percent: float
    cpu_percent: dict[str, float]
    others_cpu_percent: float
    peak_rss_mb: dict[str, float]
    chunks_measured: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    to_assembled_p50_ms: float
    to_assembled_p99_ms: float
    to_sent_p50_ms: float
    to_sent_p99_ms: float
    writer_late_p99_ms: float
    summary: dict[str, Any]
    #: What failed the demo's checks, in words (empty: nothing missing, duplicated or altered).
    problems: list[str]
    job_metrics: dict[str, list[float]] = field(default_factory=dict)
    checkpoints: dict[str, Any] = field(default_factory=dict)
    #: Per job vertex: its busiest subtask's busy / back-pressured / idle ms per second.
    task_load: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Job restarts (after task failures) during the run.
    restarts: int = 0
    #: CPU of the JVM's threads by name over the steady part, % of one core.
    jvm_threads_percent: dict[str, float] = field(default_factory=dict)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def jit_cpu_percent(self) -> float:
        """The JVM's JIT compiler threads: start-up work that a long-running job no longer does."""
        return sum(cpu for name, cpu in self.jvm_threads_percent.items() if name.startswith(JIT_THREADS))

    @property
    def frames_per_core_s(self) -> float:
        cpu = self.job_cpu_percent - self.jit_cpu_percent
        return self.frames_per_s / (cpu / 100) if cpu > 0 else float("nan")

    @property
    def lost(self) -> int:
        s = self.summary
        return s["missing"] + s["audit_samples_missing"]

    @property
    def exact(self) -> bool:
        return not self.problems


def run_once(
    contact_count: int,
    seconds: int,
    warmup_s: int,
    spread_s: float,
    overrides: dict[str, str],
    worker_processes: bool,
    drain_timeout_s: float,
    out: Path,
) -> RunResult:
    # The audit trail read back must be this run's alone.
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    moto = MotoServerProcess().start()
    cresta = ChildProcess(_serve_cresta)
    job: JobProcess | None = None
    cresta_calls: dict[str, Any] | None = None
    try:
        kinesis = client("kinesis", moto.endpoint_url)
        kinesis.create_stream(StreamName=FRAMES_STREAM, ShardCount=FRAMES_SHARDS)
        kinesis.create_stream(StreamName=EVENTS_STREAM, ShardCount=1)
        job, config = start_bench_job(moto.endpoint_url, cresta.started_with, out, overrides, worker_processes)
        mode = python_mode(config["flink.python_execution_mode"], worker_processes)
        print(f"  job starting ({mode} mode), log {out / 'job.log'}", file=sys.stderr, flush=True)
        warm_up = ContactEvent(EventType.ATTRIBUTES_UPDATED, WARM_UP_CONTACT_ID, 0, attributes={"purpose": "bench"})
        job.wait_ready(JOB_START_TIMEOUT_S, lambda: put_events(kinesis, [warm_up]))
        rest = FlinkRest(f"http://127.0.0.1:{config['flink.rest_port']}")

        starts_at = time.time() + 2.0
        contacts = plan_contacts(contact_count, seconds, starts_at + 0.5, spread_s)
        print(f"  job ready; {contact_count} contacts planned, audio from {time.strftime('%H:%M:%S')}",
              file=sys.stderr, flush=True)
        put_events(kinesis, [contact_event(EventType.STARTED, contact) for contact in contacts])
        steady_from = starts_at + 0.5 + spread_s + warmup_s
        steady_until = starts_at + 0.5 + seconds
        pids = {**process_group(job.process.pid), moto.pid: "moto Kinesis", cresta.pid: "Cresta emulator",
                os.getpid(): "load generator"}
        cpu_before: dict[str, float] = {}
        machine_before = 0.0
        load_average = os.getloadavg()

        jvm = next(pid for pid, role in pids.items() if role == "JVM")
        threads_before: dict[str, float] = {}

        def sample_at_steady_start() -> None:
            nonlocal cpu_before, machine_before, threads_before
            time.sleep(max(steady_from - time.time(), 0))
            cpu_before = cpu_by_role(pids)
            threads_before = thread_cpu_seconds(jvm)
            # The REST API answers from its metric store and refreshes it in the background
            # when asked: this request makes the one at the end find it current.
            rest.job_metrics(METRIC_GROUP)
            machine_before = machine_busy_seconds()

        sampler = threading.Thread(target=sample_at_steady_start)
        sampler.start()
        producer = KinesisRecordProducer(kinesis, FRAMES_STREAM)
        try:
            late = write_records(contacts, producer)
        finally:
            producer.close()
        sampler.join()
        cpu_after = cpu_by_role(pids)
        threads_after = thread_cpu_seconds(jvm)
        machine_after = machine_busy_seconds()
        window_s = time.time() - steady_from
        job_metrics = rest.job_metrics(METRIC_GROUP)
        checkpoints = rest.checkpoint_summary()
        task_load = rest.task_load()
        put_events(kinesis, [contact_event(EventType.ENDED, contact) for contact in contacts])

        print("  records written; waiting for the audit trail…", file=sys.stderr, flush=True)
        audit_root = out / "audit"
        trail = AuditTrail(audit_root.as_uri(), pafs.LocalFileSystem(), str(audit_root))
        # A job that fell behind still has to work through its backlog: allow it
        # ``--drain-timeout-seconds``.
        wait_for_audit(trail, [contact.call for contact in contacts], drain_timeout_s, job)
        peak_rss = peak_rss_by_role(pids)
        restarts = rest.restarts()
        rest.close()
        job.stop()
        job = None
        cresta_calls = cresta.stop()
        records = list(read_all_records(kinesis, FRAMES_STREAM))
        audit = trail.read()
    finally:
        if job is not None:
            job.stop()
        if cresta_calls is None:
            cresta.stop()
        moto.stop()

    frames_in_window = fill_fragment_writes(contacts, records, (steady_from, steady_until))
    report = build_report(
        calls=[contact.call for contact in contacts],
        audit=audit,
        cresta_calls=cresta_calls,
        chunk_ms=config["assembler.chunk_ms"],
        frames_read=sum(contact.frames for contact in contacts),
        audit_uri=(out / "audit").as_uri(),
        connector_workers=0,
    )
    rows = audit.to_pylist() if audit is not None else []
    latencies = steady_latencies(contacts, rows, cresta_calls, steady_from)
    # A fragment's 32 frames carry 2 × 8,000 samples: 500 per frame.
    samples_per_frame = 2 * FRAGMENT_SAMPLES * len(contacts) * seconds / sum(c.frames for c in contacts)
    frames_processed = samples_assembled(rows, (steady_from, steady_from + window_s)) / samples_per_frame
    cpu = {role: 100 * (cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0)) / window_s for role in set(pids.values())}
    job_cpu = sum(cpu.get(role, 0.0) for role in ("job client", "JVM", "Python workers"))
    return RunResult(
        contacts=contact_count,
        python_mode=mode,
        frames_per_s=frames_processed / window_s,
        frames_written_per_s=frames_in_window / (steady_until - steady_from),
        job_cpu_percent=job_cpu,
        cpu_percent=cpu,
        others_cpu_percent=100 * (machine_after - machine_before) / window_s - sum(cpu.values()),
        peak_rss_mb=peak_rss,
        chunks_measured=len(latencies.total),
        latency_p50_ms=percentile(latencies.total, 0.50),
        latency_p99_ms=percentile(latencies.total, 0.99),
        latency_max_ms=max(latencies.total, default=float("nan")),
        to_assembled_p50_ms=percentile(latencies.to_assembled, 0.50),
        to_assembled_p99_ms=percentile(latencies.to_assembled, 0.99),
        to_sent_p50_ms=percentile(latencies.to_sent, 0.50),
        to_sent_p99_ms=percentile(latencies.to_sent, 0.99),
        writer_late_p99_ms=1000 * percentile(late, 0.99),
        summary=report.summary,
        problems=report.problems(),
        job_metrics=job_metrics,
        checkpoints=checkpoints,
        task_load=task_load,
        restarts=restarts,
        jvm_threads_percent={
            name: 100 * (seconds - threads_before.get(name, 0.0)) / window_s for name, seconds in threads_after.items()
        },
        load_average=load_average,
    )


def fill_fragment_writes(
    contacts: Sequence[PlannedContact], records: Sequence[dict[str, Any]], steady: tuple[float, float]
) -> int:
    """Gives each call its fragments' writes (the record's arrival in KDS); returns the
    frames whose record arrived within ``steady``."""
    arrivals: dict[tuple[str, str], float] = {}
    in_window = 0
    for record in records:
        arrived_at = record["ApproximateArrivalTimestamp"].timestamp()
        frames = [f for f in decode_audio_records(record["Data"]) if isinstance(f, AudioFrame)]
        if frames:
            arrivals.setdefault((frames[0].contact_id, frames[0].fragment_number), arrived_at)
            in_window += len(frames) if steady[0] <= arrived_at < steady[1] else 0
    for contact in contacts:
        contact.call.fragments = [
            FragmentWrite(k * FRAGMENT_SAMPLES, FRAGMENT_SAMPLES, arrivals[(contact.call.contact_id, number)], number)
            for k, number in enumerate(contact.fragment_numbers)
        ]
    return in_window


@dataclass
class SteadyLatencies:
    #: Record in KDS → Cresta's receipt of the chunk's last sample (ms).
    total: list[float] = field(default_factory=list)
    #: Record in KDS → chunk assembled (ms).
    to_assembled: list[float] = field(default_factory=list)
    #: Chunk assembled → Cresta accepted it (the receipt's latency, ms).
    to_sent: list[float] = field(default_factory=list)


def steady_latencies(
    contacts: Sequence[PlannedContact], rows: list[dict[str, Any]], cresta_calls: dict[str, Any], steady_from: float
) -> SteadyLatencies:
    """The latencies of chunks whose last sample's record was written after the warm-up."""
    by_track: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_track[(row["contact_id"], row["track"])].append(row)
    found = SteadyLatencies()
    for contact in contacts:
        call = contact.call
        record = cresta_calls.get(call.contact_id)
        if record is None:
            continue
        for track in Track:
            twilio = TWILIO_TRACK_OF[track]
            spans = cresta_spans(pcm16_to_mulaw(call.pcm[track]), record.tracks.get(twilio, b"")) or []
            receive_times = record.media_receive_times.get(twilio, [])
            end = 0
            for row in sorted(by_track[(call.contact_id, track.label)], key=lambda r: r["seq"]):
                start, end = end, end + row["sample_count"]
                if start == end:
                    continue
                fragment = call.fragments[(end - 1) // FRAGMENT_SAMPLES]
                if fragment.written_at < steady_from:
                    continue
                receipt = chunk_receipt(call, spans, receive_times, end)
                if receipt is None:
                    continue
                found.total.append(receipt[1])
                chunk_end_ms = _epoch_ms(row["chunk_start"]) + row["duration_ms"]
                found.to_assembled.append(chunk_end_ms + row["ingest_lag_ms"] - 1000 * fragment.written_at)
                found.to_sent.append(row["delivery_latency_ms"])
    return found


def samples_assembled(rows: list[dict[str, Any]], window: tuple[float, float]) -> int:
    """Samples of the chunks the job assembled within ``window`` (epoch s), from each
    audit row's ``chunk_start + duration + ingest_lag``."""
    return sum(
        row["sample_count"]
        for row in rows
        if window[0] * 1000 <= _epoch_ms(row["chunk_start"]) + row["duration_ms"] + row["ingest_lag_ms"] < window[1] * 1000
    )


def _epoch_ms(timestamp: Any) -> float:
    """An audit timestamp (naive UTC, as the job writes it) in epoch milliseconds."""
    return timestamp.replace(tzinfo=timezone.utc).timestamp() * 1000


# -- CLI --------------------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive numbers")
    return counts


def _overrides(pairs: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = value
    return overrides


def _job_metric_summary(metrics: dict[str, list[float]]) -> str:
    if not metrics:
        return "none read"
    parts = []
    for name in ("ingest_lag_ms_p50", "ingest_lag_ms_p99", "delivery_latency_ms_p50", "delivery_latency_ms_p99"):
        if name in metrics:
            parts.append(f"{name} {max(metrics[name]):.0f}")
    for name in ("frames_in", "chunks_out"):
        if name in metrics:
            parts.append(f"{name} {sum(metrics[name]):.0f}")
    return ", ".join(parts)


def _print_table(results: Sequence[RunResult]) -> None:
    print(
        f"{'contacts':>8} {'python':>8} {'written':>7} {'frames/s':>8} {'per core':>8} {'JVM':>5} {'JIT':>4} {'Py wk':>5} {'client':>6} "
        f"{'moto':>5} {'Cresta':>6} {'loadgen':>7} {'others':>6} {'p50':>7} {'p99':>7} {'max':>7} "
        f"{'→asm p50':>8} {'→asm p99':>8} {'→sent p50':>9} {'→sent p99':>9} {'lost':>4} {'dup':>4} "
        f"{'exact':>5} {'RSS JVM':>7} {'RSS Py':>6} {'late p99':>8} {'load':>4}"
    )
    for r in results:
        cpu = r.cpu_percent
        s = r.summary
        print(
            f"{r.contacts:>8} {r.python_mode:>8} {r.frames_written_per_s:>7.0f} {r.frames_per_s:>8.0f} {r.frames_per_core_s:>8.0f} "
            f"{cpu.get('JVM', 0):>4.0f}% {r.jit_cpu_percent:>3.0f}% {cpu.get('Python workers', 0):>4.0f}% {cpu.get('job client', 0):>5.0f}% "
            f"{cpu.get('moto Kinesis', 0):>4.0f}% {cpu.get('Cresta emulator', 0):>5.0f}% "
            f"{cpu.get('load generator', 0):>6.0f}% {r.others_cpu_percent:>5.0f}% "
            f"{r.latency_p50_ms:>5.0f}ms {r.latency_p99_ms:>5.0f}ms {r.latency_max_ms:>5.0f}ms "
            f"{r.to_assembled_p50_ms:>6.0f}ms {r.to_assembled_p99_ms:>6.0f}ms "
            f"{r.to_sent_p50_ms:>7.0f}ms {r.to_sent_p99_ms:>7.0f}ms {r.lost:>4} {s['duplicated']:>4} "
            f"{'yes' if r.exact else 'NO':>5} {r.peak_rss_mb.get('JVM', 0):>5.0f}MB "
            f"{r.peak_rss_mb.get('Python workers', 0):>4.0f}MB {r.writer_late_p99_ms:>6.0f}ms {r.load_average[0]:>4.1f}"
        )
    print(
        "written: AudioFrames written per second in the steady part; frames/s: frames the job assembled into chunks "
        "per second then (from the audit trail); per core: that ÷ the job's CPU (JVM, Python workers, client) less JIT, the JVM's JIT compiler threads (start-up work, counted in JVM). CPU in % of one core over the steady part; others: the rest of the machine. p50/p99/max: "
        "record in KDS → Cresta's receipt of the chunk's last sample; →asm: record in KDS → chunk assembled; →sent: "
        "assembled → Cresta accepted it (the receipt). lost: chunks missing plus source samples missing from the "
        "audit trail; dup: audit rows duplicated; exact: audit audio and every contact's audio at Cresta equal to "
        "the source's. RSS: peak (Python workers summed). late: how late the load generator wrote. load: the "
        "1-minute load average when the calls began."
    )
    for r in results:
        if r.problems:
            print(f"{r.contacts} contacts: FAILED: {'; '.join(r.problems)}")
        if r.restarts:
            print(f"{r.contacts} contacts: the job restarted {r.restarts} time(s); see flink-*.log beside job.log")
        print(f"{r.contacts} contacts: job metrics: {_job_metric_summary(r.job_metrics)}")
        for vertex, load in r.task_load.items():
            print(
                f"{r.contacts} contacts: {vertex[:70]}: busy {load.get('busyTimeMsPerSecond', float('nan')):.0f}, "
                f"back-pressured {load.get('backPressuredTimeMsPerSecond', float('nan')):.0f}, "
                f"idle {load.get('idleTimeMsPerSecond', float('nan')):.0f} ms/s"
            )
        busiest = sorted(r.jvm_threads_percent.items(), key=lambda item: -item[1])[:8]
        print(f"{r.contacts} contacts: JVM threads: " + ", ".join(f"{name} {cpu:.0f}%" for name, cpu in busiest))
        durations = r.checkpoints.get("end_to_end_duration") or {}
        if durations:
            print(
                f"{r.contacts} contacts: checkpoints {r.checkpoints.get('completed', 0)} completed, duration "
                f"p50 {durations.get('p50', float('nan')):.0f} ms, max {durations.get('max', float('nan')):.0f} ms"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.job", description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=_counts, default=[50, 100, 200],
                        help="concurrent contacts per run, comma-separated (default 50,100,200)")
    parser.add_argument("--seconds", type=int, default=20, help="audio per contact (default 20)")
    parser.add_argument("--warmup-seconds", type=int, default=3,
                        help="each contact's first seconds left out of the latency figures (default 3)")
    parser.add_argument("--start-spread-seconds", type=float, default=1.0,
                        help="contacts start evenly over this many seconds (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a job setting for every run, e.g. flink.bundle_time_ms=5 or "
                             "flink.python_execution_mode=thread (repeatable)")
    parser.add_argument("--worker-processes", action="store_true",
                        help="run the Python functions in Python worker processes, as a cluster does, instead "
                             "of in the process that submitted the job (a local minicluster's default)")
    parser.add_argument("--drain-timeout-seconds", type=float, default=600.0,
                        help="how long the job may take, after the last record, to have every contact in the "
                             "audit trail (default 600)")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep each run's job log, properties and audit trail under this folder "
                             "(default: a temporary folder, removed)")
    parser.add_argument("--json", action="store_true", help="also print each run's figures as one JSON line")
    args = parser.parse_args(argv)
    if args.seconds <= args.warmup_seconds + args.start_spread_seconds:
        parser.error("--seconds must exceed --warmup-seconds plus --start-spread-seconds")
    try:
        overrides = _overrides(args.set)
        load_config(env={}, overrides=overrides)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-job-") as scratch:
        root = args.out or Path(scratch)
        for count in args.contacts:
            print(f"running {count} contacts for {args.seconds} s…", file=sys.stderr, flush=True)
            result = run_once(
                count, args.seconds, args.warmup_seconds, args.start_spread_seconds, overrides,
                args.worker_processes, args.drain_timeout_seconds, root / f"contacts-{count}",
            )
            results.append(result)
            if args.json:
                print(json.dumps({**result.__dict__, "frames_per_core_s": result.frames_per_core_s}, default=str))
    print(
        f"{args.seconds} s per contact, 1 s fragments of 2 × 8 kHz PCM16 (32 frames, one record); settings: "
        f"{overrides or 'defaults'}; {os.cpu_count()} cores"
    )
    _print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
