"""`cresta-pipeline demo`: emulated Connect calls through the real job on a local minicluster.

The demo starts the local stack (moto, KVS media emulator, Cresta emulator), the PyFlink
job as its own process, and a KVS connector worker; plays N concurrent calls; waits until
every contact's audio is in the audit trail, showing live figures meanwhile (calls,
chunks at Cresta, recent latency); stops everything; checks the result against the audio
the simulator wrote and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.fs as pafs

from connectors.connect.handler import contact_event_handler, contact_flow_handler
from connectors.kinesis.reader import read_all_records
from emulators.connect.simulator import ConnectCallSimulator, SimulatedCall
from connectors.audit_trail import read_audit
from emulators.cresta.server import CrestaEmulator, parse_outage
from emulators.demo_report import CrestaOutage, DemoReport, LiveDelivery, build_report, progress_line
from emulators.stack import REGION, LocalStack, StackSettings
from pipeline.audio import write_wav_pcm16
from pipeline.audit_analysis import complete_tracks
from pipeline.config import load_config
from pipeline.records import AudioFrame, ContactEvent, EventType, Track, decode_audio_records

log = logging.getLogger("demo")

JOB_START_TIMEOUT_S = 240.0
WARM_UP_CONTACT_ID = "demo-warm-up"
DEMO_MAX_IDLE_S = 4.0
DEMO_VISIBILITY_TIMEOUT_S = 5
#: How long the kill may wait beyond its time for worker 0 to hold every call.
WORK_ITEM_WAIT_S = 30.0
#: How long the injected job failure may wait beyond its time for every call's first
#: committed audit rows.
COMMITTED_ROWS_WAIT_S = 30.0
#: How often the live figures are refreshed while the calls run, at most.
LIVE_REFRESH_S = 1.0
#: The share of the time refreshing them may take.
LIVE_BUSY_SHARE = 0.05
#: How often they are printed when the progress does not go to a terminal.
PLAIN_LINE_EVERY_S = 5.0
PROGRESS_THREAD = "demo-progress"


@dataclass(frozen=True)
class DemoOptions:
    calls: int
    call_seconds: float
    out: Path
    chunk_ms: int
    audit_audio: bool
    parallelism: int
    fragment_ms: int
    as_json: bool
    connector_workers: int
    kill_connector_after_s: float | None
    #: None: ``DIR/audit`` as a file:// URI.
    audit_uri: str | None
    fail_job_after_s: float | None
    #: (start, duration) in seconds from the calls' start; None: no outage.
    cresta_outage: tuple[float, float] | None = None
    #: No progress while it runs (the summary is still printed).
    quiet: bool = False


def parse_args(argv: list[str] | None) -> DemoOptions:
    parser = argparse.ArgumentParser(
        prog="cresta-pipeline demo",
        description=(
            "Run emulated Amazon Connect calls through the real pipeline on a local Flink "
            "minicluster (no AWS account needed) and report what reached Cresta."
        ),
    )
    parser.add_argument("--calls", type=int, default=3, help="concurrent calls (default 3)")
    parser.add_argument("--call-seconds", type=float, default=8.0, help="length of each call (default 8)")
    parser.add_argument(
        "--out", type=Path, default=Path("demo-out"),
        help="output directory (default demo-out); a previous run's audit, errors, WAVs and summary there are replaced",
    )
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per chunk, 20–1000 (default 100)")
    parser.add_argument("--audit-audio", action="store_true", help="add the pcm column to the audit trail")
    parser.add_argument("--parallelism", type=int, default=1, help="Flink job parallelism (default 1)")
    parser.add_argument("--fragment-ms", type=int, default=1000, help="KVS fragment length (default 1000, as Connect)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress while it runs, only the summary at the end"
    )
    parser.add_argument(
        "--connector-workers", type=int, default=2,
        help="KVS connector worker processes sharing the work queue (default 2)",
    )
    parser.add_argument(
        "--kill-connector-after-seconds", type=float, default=None, metavar="S",
        help=(
            "SIGKILL connector worker 0 S seconds into the calls (later if it does not yet hold every "
            "call); the others resume its contacts from their checkpoints"
        ),
    )
    parser.add_argument(
        "--audit-uri", metavar="URI",
        help=(
            "where the job writes the audit trail: file:///PATH or s3://BUCKET/PREFIX on the local stack's "
            "S3 (default: DIR/audit)"
        ),
    )
    parser.add_argument(
        "--fail-job-after-seconds", type=float, default=None, metavar="S",
        help=(
            "make one task of the Flink job fail S seconds into the calls (later if not every call has "
            "audit rows committed yet); the job restarts from its last checkpoint"
        ),
    )
    parser.add_argument(
        "--cresta-outage", type=_outage_window, default=None, metavar="START:DURATION",
        help=(
            "the Cresta emulator refuses and drops every stream from START s into the calls for DURATION s; "
            "the calls go on and delivery resumes after it"
        ),
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.call_seconds <= 0:
        parser.error("--calls must be >= 1 and --call-seconds > 0")
    if not 20 <= args.chunk_ms <= 1000:
        parser.error("--chunk-ms must be within 20..1000")
    if args.connector_workers < 1:
        parser.error("--connector-workers must be >= 1")
    if args.kill_connector_after_seconds is not None and args.connector_workers < 2:
        parser.error("--kill-connector-after-seconds needs --connector-workers of 2 or more")
    if args.audit_uri is not None:
        uri = urlsplit(args.audit_uri)
        if uri.scheme not in ("file", "s3") or (uri.scheme == "s3" and not (uri.netloc and uri.path.strip("/"))):
            parser.error("--audit-uri must be file:///PATH or s3://BUCKET/PREFIX")
    if args.fail_job_after_seconds is not None and not 0 < args.fail_job_after_seconds < args.call_seconds:
        # The failure strikes on the next record the job reads, so it needs calls in progress.
        parser.error("--fail-job-after-seconds must be within the calls (0 < S < --call-seconds)")
    if args.cresta_outage is not None and args.cresta_outage[0] >= args.call_seconds:
        parser.error("--cresta-outage must start within the calls (START < --call-seconds)")
    return DemoOptions(
        calls=args.calls,
        call_seconds=args.call_seconds,
        out=args.out,
        chunk_ms=args.chunk_ms,
        audit_audio=args.audit_audio,
        parallelism=args.parallelism,
        fragment_ms=args.fragment_ms,
        as_json=args.json,
        connector_workers=args.connector_workers,
        kill_connector_after_s=args.kill_connector_after_seconds,
        audit_uri=args.audit_uri,
        fail_job_after_s=args.fail_job_after_seconds,
        cresta_outage=args.cresta_outage,
        quiet=args.quiet,
    )


def _outage_window(text: str) -> tuple[float, float]:
    try:
        return parse_outage(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class ChildProcess:
    """A child in its own process group, so stopping it stops what it started (a JVM)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.log_file = log_path.open("wb")
        self.process: subprocess.Popen | None = None

    def start(self) -> "ChildProcess":
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a host dies."""
        if self.running():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.running():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log_file.close()


class JobProcess(ChildProcess):
    """The PyFlink job (`cresta-pipeline job run`) on a local minicluster."""

    def __init__(
        self,
        config_path: Path,
        env: dict[str, str],
        log_path: Path,
        ready_file: Path,
        working_dir: Path | None = None,
    ) -> None:
        super().__init__([sys.executable, "-m", "jobs.audio_job", "--config", str(config_path)], env, log_path)
        self.ready_file = ready_file
        self.working_dir = working_dir
        self.start()

    def stop(self, timeout_s: float = 20.0) -> None:
        super().stop(timeout_s)
        if self.working_dir is not None:
            shutil.rmtree(self.working_dir, ignore_errors=True)

    def wait_ready(self, timeout_s: float, warm_up: Callable[[], None]) -> None:
        """Until the job's Python operators are up.

        PyFlink opens Python functions with the first bundle, so the demo keeps sending
        a warm-up contact event until the assembler has opened; calls played before
        that would measure the job's start-up, not the pipeline.
        """
        deadline = time.monotonic() + timeout_s
        next_warm_up = 0.0
        while not self.ready_file.exists():
            if not self.running():
                raise RuntimeError(f"the Flink job exited with code {self.process.poll()}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Flink job did not start within {timeout_s:.0f} s; see {self.log_path}")
            if time.monotonic() >= next_warm_up:
                warm_up()
                next_warm_up = time.monotonic() + 2.0
            time.sleep(0.2)


def start_job(stack: LocalStack, env: dict[str, str], logs: Path, **overrides: object) -> JobProcess:
    """The job against ``stack``; its properties file, log and ready file go under ``logs``."""
    ready_file = logs / "job.ready"
    ready_file.unlink(missing_ok=True)
    config = load_config(
        env={},
        overrides={
            "aws.endpoint_url": stack.endpoint_url,
            "aws.region": REGION,
            "s3.path_style_access": True,
            "job.ready_file": str(ready_file),
            # A stopped minicluster leaves its working files (~130 MB) behind; the job's
            # own folder goes when the job does.
            "flink.working_dir": str(logs / "flink-working-dir"),
            **overrides,
        },
    )
    config_path = logs / "job-properties.json"
    config_path.write_text(json.dumps(config.to_property_groups(), indent=2))
    working_dir = Path(config["flink.working_dir"]) if config["flink.working_dir"] else None
    return JobProcess(config_path, env, logs / "job.log", ready_file, working_dir)


def start_connector_workers(stack: LocalStack, count: int, env: dict[str, str], logs: Path) -> list[ChildProcess]:
    """`cresta-pipeline connector run` processes sharing the work queue and checkpoints."""
    argv = [
        sys.executable, "-m", "jobs.cli", "connector", "run",
        "--endpoint-url", stack.endpoint_url,
        "--queue-url", stack.queue_url,
        "--frames-stream", stack.settings.audio_frames_stream,
        "--kvs-media-endpoint", stack.kvs.endpoint_url,
        "--checkpoint-table", stack.settings.checkpoint_table,
        # Emulated calls never pause mid-call, so a silent stream is a finished call
        # sooner than production's default allows for.
        "--max-idle-s", str(DEMO_MAX_IDLE_S),
        # A killed worker's contacts come back to the queue within seconds, and resume
        # from a checkpoint at most one fragment old.
        "--visibility-timeout-s", str(DEMO_VISIBILITY_TIMEOUT_S),
        "--checkpoint-interval-s", "0",
    ]
    return [ChildProcess(argv, env, logs / f"connector-{i}.log") for i in range(count)]


@dataclass(frozen=True)
class AuditTrail:
    """The audit trail the job writes, read back from where it lives (a folder, or S3)."""

    uri: str
    filesystem: pafs.FileSystem
    #: A local path, or ``bucket/prefix`` on S3.
    root: str

    @classmethod
    def at(cls, uri: str, stack: LocalStack) -> "AuditTrail":
        parts = urlsplit(uri)
        if parts.scheme == "s3":
            return cls(uri, stack.s3_filesystem(), parts.netloc + parts.path.rstrip("/"))
        return cls(uri, pafs.LocalFileSystem(), url2pathname(parts.path))

    def read(self) -> pa.Table | None:
        return read_audit(self.root, self.filesystem)

    def contacts(self) -> set[str]:
        table = self.read()
        return set(table["contact_id"].to_pylist()) if table is not None else set()


#: Contact attributes the demo sends to Cresta (and keeps in the audit).
DEMO_ATTRIBUTE_ALLOWLIST = "Language"


#: What a demo run writes under its output directory, besides ``logs/``.
RUN_OUTPUTS = ("audit", "errors", "cresta", "source", "summary.json", "report.html")


def clear_previous_run(out: Path) -> None:
    """An output directory holds one run: what an earlier run left there would otherwise
    be read back, counted and charted as this run's."""
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_demo(options: DemoOptions) -> DemoReport:
    out = options.out.resolve()
    clear_previous_run(out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    audit_uri = options.audit_uri or (out / "audit").as_uri()
    bucket = urlsplit(audit_uri).netloc if audit_uri.startswith("s3://") else StackSettings.audit_bucket
    settings = StackSettings(kvs_pool_size=options.calls, audit_bucket=bucket)
    fail_file = out / "logs" / "job.fail-once"
    fail_file.unlink(missing_ok=True)
    killed_at: float | None = None
    failed_at: float | None = None
    outage: CrestaOutage | None = None
    output = ProgressOutput.for_options(options)
    live: LiveProgress | None = None
    with LocalStack(settings) as stack:
        stack.apply_environment()
        env = stack.process_environment()
        trail = AuditTrail.at(audit_uri, stack)
        output.message("starting the Flink job (local minicluster)…")
        job = start_job(
            stack,
            env,
            out / "logs",
            **{
                "assembler.chunk_ms": options.chunk_ms,
                "audit.path": audit_uri,
                "audit.include_audio": options.audit_audio,
                # The calls also carry CustomerTier, which stays in the account.
                "cresta.attribute_allowlist": DEMO_ATTRIBUTE_ALLOWLIST,
                "flink.parallelism": options.parallelism,
                "job.fail_once_file": str(fail_file) if options.fail_job_after_s is not None else "",
            },
        )
        workers: list[ChildProcess] = []
        try:
            job.wait_ready(JOB_START_TIMEOUT_S, lambda: send_warm_up_event(stack))
            workers = start_connector_workers(stack, options.connector_workers, env, out / "logs")
            output.message(
                f"job running, {len(workers)} connector worker(s); "
                f"playing {options.calls} call(s) of {options.call_seconds:g} s…",
            )
            simulator, calls = new_calls(stack, options)
            with ExitStack() as faults:
                if options.kill_connector_after_s is None:
                    for worker in workers:
                        worker.start()
                else:
                    faults.enter_context(kill_a_worker_mid_call(stack, options, workers))
                failure = (
                    faults.enter_context(fail_the_job_mid_call(options, calls, trail, fail_file))
                    if options.fail_job_after_s is not None
                    else None
                )
                calls_started_at = time.time()
                if options.cresta_outage is not None:
                    outage = CrestaOutage.starting(calls_started_at, *options.cresta_outage)
                    stack.cresta.faults.outage(*options.cresta_outage)
                delivery = LiveDelivery(calls, options.chunk_ms, calls_started_at)
                live = LiveProgress.start(output, delivery, stack.cresta)
                play_calls(simulator, calls)
                calls_ended_at = time.time()
            if options.kill_connector_after_s is not None:
                killed_at = options.kill_connector_after_s
                output.message(f"connector worker 0 was killed at {killed_at:g} s; the others resumed its contacts")
            if failure is not None:
                if failure.at_s is None:
                    raise RuntimeError(
                        f"no job failure injected: not every call had audit rows committed within "
                        f"{COMMITTED_ROWS_WAIT_S:g} s of --fail-job-after-seconds"
                    )
                failed_at = failure.at_s
                output.message(f"a task of the job failed at {failed_at:g} s; Flink restarts from its last checkpoint")
            output.message("calls ended; waiting for the audit trail to hold every contact…")
            wait_for_audit(trail, calls, timeout_s=120 + options.call_seconds, job=job)
            if fail_file.exists():
                raise RuntimeError("the injected job failure never happened: no record reached the job after it")
        finally:
            if live is not None:
                live.stop()
            for worker in workers:
                worker.stop()
            job.stop()
        received = stack.cresta.calls()
        stack.cresta.write_wavs(out / "cresta")
        frames_read = count_frame_records(stack)
        audit = trail.read()
        if trail.uri.startswith("s3://"):
            # moto's S3 ends with the demo: keep a copy of the committed objects.
            pafs.copy_files(
                trail.root, str(out / "audit"),
                source_filesystem=trail.filesystem, destination_filesystem=pafs.LocalFileSystem(),
            )
    write_source_wavs(out / "source", calls)
    report = build_report(
        calls=calls,
        audit=audit,
        cresta_calls=received,
        chunk_ms=options.chunk_ms,
        frames_read=frames_read,
        audit_uri=audit_uri,
        connector_workers=options.connector_workers,
        connector_killed_at_s=killed_at,
        job_failed_at_s=failed_at,
        cresta_outage=outage,
    )
    report.calls_played = (calls_started_at, calls_ended_at)
    (out / "summary.json").write_text(json.dumps(report.summary, indent=2))
    return report


def count_frame_records(stack: LocalStack) -> int:
    """AudioFrame records the connectors put on KDS (replays after a kill included)."""
    return sum(
        isinstance(record, AudioFrame)
        for data in read_all_records(stack.client("kinesis"), stack.settings.audio_frames_stream)
        for record in decode_audio_records(data["Data"])
    )


def send_warm_up_event(stack: LocalStack) -> None:
    event = ContactEvent(
        type=EventType.ATTRIBUTES_UPDATED,
        contact_id=WARM_UP_CONTACT_ID,
        event_time_ms=int(time.time() * 1000),
        attributes={"purpose": "demo warm-up"},
    )
    stack.client("kinesis").put_record(
        StreamName=stack.settings.contact_events_stream, Data=event.encode(), PartitionKey=event.contact_id
    )


@contextmanager
def kill_a_worker_mid_call(stack: LocalStack, options: DemoOptions, workers: list[ChildProcess]) -> Iterator[None]:
    """Worker 0 takes every call first, then is SIGKILLed mid-call; the others resume.

    The other workers join only once worker 0 holds all the work items, and the kill
    waits for that too, so it always interrupts live contacts rather than an idle process.
    """
    workers[0].start()
    sqs = stack.client("sqs")
    started = time.monotonic()

    def kill_worker_0_mid_call() -> None:
        deadline = started + options.kill_connector_after_s + WORK_ITEM_WAIT_S
        while time.monotonic() < deadline:
            attributes = sqs.get_queue_attributes(
                QueueUrl=stack.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
            )["Attributes"]
            if int(attributes["ApproximateNumberOfMessagesNotVisible"]) >= options.calls:
                break
            time.sleep(0.1)
        for worker in workers[1:]:
            worker.start()
        time.sleep(max(0.0, started + options.kill_connector_after_s - time.monotonic()))
        workers[0].kill()

    killer = threading.Thread(target=kill_worker_0_mid_call, name="kill-connector")
    killer.start()
    try:
        yield
    finally:
        killer.join()


@dataclass
class JobFailure:
    #: Seconds into the calls when the failure was asked for; None: it was not.
    at_s: float | None = None


@contextmanager
def fail_the_job_mid_call(
    options: DemoOptions, calls: list[SimulatedCall], trail: AuditTrail, fail_file: Path
) -> Iterator[JobFailure]:
    """One task of the job fails mid-call; Flink restarts the job from its last checkpoint.

    The job's assembler fails on the first record it reads once ``fail_file`` exists
    (``job.fail_once_file``) and removes the file first, so it fails once. The file is
    created only once every call has audit rows committed: each contact then has state in
    a completed checkpoint, and a restart that did not restore it would duplicate rows.
    """
    failure = JobFailure()
    contact_ids = {call.contact_id for call in calls}
    started = time.monotonic()

    def fail_mid_call() -> None:
        time.sleep(options.fail_job_after_s)
        deadline = time.monotonic() + COMMITTED_ROWS_WAIT_S
        while not contact_ids <= trail.contacts():
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        fail_file.touch()
        failure.at_s = round(time.monotonic() - started, 1)

    failer = threading.Thread(target=fail_mid_call, name="fail-job")
    failer.start()
    try:
        yield failure
    finally:
        failer.join()


def new_calls(stack: LocalStack, options: DemoOptions) -> tuple[ConnectCallSimulator, list[SimulatedCall]]:
    simulator = ConnectCallSimulator(
        stack.kvs.endpoint_url,
        contact_flow_handler=contact_flow_handler,
        contact_event_handler=contact_event_handler,
        fragment_ms=options.fragment_ms,
    )
    calls = [
        simulator.new_call(stack.kvs_stream_arns[i], options.call_seconds, seed=i)
        for i in range(options.calls)
    ]
    return simulator, calls


def play_calls(simulator: ConnectCallSimulator, calls: list[SimulatedCall]) -> None:
    """Plays the calls concurrently, in real time; each records its fragments' write times."""
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="call") as pool:
        list(pool.map(simulator.play, calls))


def wait_for_audit(trail: AuditTrail, calls: list[SimulatedCall], timeout_s: float, job: JobProcess) -> None:
    """Until each track of each contact is committed to the audit trail, final chunk and all.

    A final chunk's row can be committed before rows of earlier chunks still waiting for
    Cresta's receipt, so its row alone does not say the track is in.
    """
    wanted = {(call.contact_id, track.label) for call in calls for track in Track}
    deadline = time.monotonic() + timeout_s
    while True:
        table = trail.read()
        done = complete_tracks(table) if table is not None else set()
        if wanted <= done:
            return
        if not job.running():
            raise RuntimeError("the Flink job stopped before the audit trail was complete")
        if time.monotonic() > deadline:
            raise RuntimeError(f"audit trail incomplete after {timeout_s:.0f} s: missing {sorted(wanted - done)[:4]}…")
        time.sleep(0.5)


def write_source_wavs(root: Path, calls: list[SimulatedCall]) -> None:
    for call in calls:
        (root / call.contact_id).mkdir(parents=True, exist_ok=True)
        for track in Track:
            write_wav_pcm16(root / call.contact_id / f"{track.label}.wav", call.pcm[track])


class ProgressOutput:
    """Where the demo says what it is doing: stdout, or stderr with ``--json`` (stdout then
    carries only the summary); nowhere with ``--quiet``.

    On a terminal the live figures rewrite one line in place; elsewhere (a CI log, a
    pipe) they come as a plain line every ``PLAIN_LINE_EVERY_S``, so that a log holds a
    readable trace rather than a line a second.
    """

    def __init__(
        self, stream: TextIO | None, *, terminal: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream
        self._terminal = terminal
        self._clock = clock
        self._lock = threading.Lock()
        #: Characters of the live line now on the terminal (0: none).
        self._live_width = 0
        self._next_plain_line = 0.0

    @classmethod
    def for_options(cls, options: DemoOptions) -> "ProgressOutput":
        if options.quiet:
            return cls(None, terminal=False)
        stream = sys.stderr if options.as_json else sys.stdout
        return cls(stream, terminal=stream.isatty())

    @property
    def silent(self) -> bool:
        return self._stream is None

    def message(self, text: str) -> None:
        with self._lock:
            if self._stream is None:
                return
            if self._live_width:
                # The live line gives way to the message and comes back at its next refresh.
                self._stream.write("\r" + " " * self._live_width + "\r")
                self._live_width = 0
            print(text, file=self._stream, flush=True)

    def live(self, line: str, *, last: bool = False) -> None:
        """The live figures; ``last``: the final ones, which stay (a line of their own)."""
        with self._lock:
            if self._stream is None:
                return
            if self._terminal:
                line = line[: shutil.get_terminal_size().columns - 1]
                self._stream.write("\r" + line.ljust(self._live_width) + ("\n" if last else ""))
                self._stream.flush()
                self._live_width = 0 if last else len(line)
            elif last or self._clock() >= self._next_plain_line:
                print(line, file=self._stream, flush=True)
                self._next_plain_line = self._clock() + PLAIN_LINE_EVERY_S


class LiveProgress:
    """Refreshes the live figures every ``LIVE_REFRESH_S`` in a thread of its own, from
    the simulator's calls and a snapshot of what the Cresta emulator has received.

    The snapshot copies every call's audio under the emulator's lock and holds the
    process's GIL, which the emulators and the simulator share: with many long calls a
    refresh takes tens of ms, so refreshes are spaced to keep them within
    ``LIVE_BUSY_SHARE`` of the time.
    """

    def __init__(self, output: ProgressOutput, delivery: LiveDelivery, cresta: CrestaEmulator) -> None:
        self._output = output
        self._delivery = delivery
        self._cresta = cresta
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name=PROGRESS_THREAD, daemon=True)

    @classmethod
    def start(cls, output: ProgressOutput, delivery: LiveDelivery, cresta: CrestaEmulator) -> "LiveProgress":
        progress = cls(output, delivery, cresta)
        if not output.silent:
            progress._thread.start()
        return progress

    def stop(self) -> None:
        """Stops refreshing and shows the last figures."""
        if self._thread.is_alive():
            self._stopping.set()
            self._thread.join()
            self._output.live(self._line(), last=True)

    def _refresh(self) -> None:
        pause = LIVE_REFRESH_S
        while not self._stopping.wait(pause):
            began = time.monotonic()
            line = self._line()
            took = time.monotonic() - began
            self._output.live(line)
            pause = max(LIVE_REFRESH_S - took, took * (1 - LIVE_BUSY_SHARE) / LIVE_BUSY_SHARE)

    def _line(self) -> str:
        return progress_line(self._delivery.observe(self._cresta.calls(), time.time()))


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    report = run_demo(options)
    if options.as_json:
        print(report.table(), file=sys.stderr)
        print(json.dumps(report.summary))
    else:
        print(report.table())
        print(f"output: {options.out}")
    return 0 if report.ok else 1
