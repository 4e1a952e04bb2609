"""`cresta-pipeline demo`: emulated Connect calls through the real job on a local minicluster.

The demo starts the local stack (moto, KVS media emulator, Cresta emulator), the PyFlink
job as its own process, and a KVS connector worker; plays N concurrent calls; waits until
every contact's audio is in the audit trail; stops everything; checks the result against
the audio the simulator wrote and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from connectors.connect.handler import contact_event_handler, contact_flow_handler
from connectors.kinesis.reader import read_all_records
from emulators.connect.simulator import ConnectCallSimulator, SimulatedCall
from emulators.demo_report import DemoReport, build_report, read_audit
from emulators.stack import REGION, LocalStack, StackSettings
from pipeline.audio import write_wav_pcm16
from pipeline.config import load_config
from pipeline.records import AudioFrame, ContactEvent, EventType, Track, decode_audio_records

log = logging.getLogger("demo")

JOB_START_TIMEOUT_S = 240.0
WARM_UP_CONTACT_ID = "demo-warm-up"
DEMO_MAX_IDLE_S = 4.0
DEMO_VISIBILITY_TIMEOUT_S = 5
#: How long the kill may wait beyond its time for worker 0 to hold every call.
WORK_ITEM_WAIT_S = 30.0


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
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory (default demo-out)")
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per chunk, 20–1000 (default 100)")
    parser.add_argument("--audit-audio", action="store_true", help="add the pcm column to the audit trail")
    parser.add_argument("--parallelism", type=int, default=1, help="Flink job parallelism (default 1)")
    parser.add_argument("--fragment-ms", type=int, default=1000, help="KVS fragment length (default 1000, as Connect)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
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
    args = parser.parse_args(argv)
    if args.calls < 1 or args.call_seconds <= 0:
        parser.error("--calls must be >= 1 and --call-seconds > 0")
    if not 20 <= args.chunk_ms <= 1000:
        parser.error("--chunk-ms must be within 20..1000")
    if args.connector_workers < 1:
        parser.error("--connector-workers must be >= 1")
    if args.kill_connector_after_seconds is not None and args.connector_workers < 2:
        parser.error("--kill-connector-after-seconds needs --connector-workers of 2 or more")
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
    )


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

    def __init__(self, config_path: Path, env: dict[str, str], log_path: Path, ready_file: Path) -> None:
        super().__init__([sys.executable, "-m", "jobs.audio_job", "--config", str(config_path)], env, log_path)
        self.ready_file = ready_file
        self.start()

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
            "job.ready_file": str(ready_file),
            **overrides,
        },
    )
    config_path = logs / "job-properties.json"
    config_path.write_text(json.dumps(config.to_property_groups(), indent=2))
    return JobProcess(config_path, env, logs / "job.log", ready_file)


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


def run_demo(options: DemoOptions) -> DemoReport:
    out = options.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    audit_dir = out / "audit"
    settings = StackSettings(kvs_pool_size=options.calls)
    killed_at: float | None = None
    with LocalStack(settings) as stack:
        stack.apply_environment()
        env = stack.process_environment()
        progress(options, "starting the Flink job (local minicluster)…")
        job = start_job(
            stack,
            env,
            out / "logs",
            **{
                "assembler.chunk_ms": options.chunk_ms,
                "audit.path": audit_dir.as_uri(),
                "audit.include_audio": options.audit_audio,
                "flink.parallelism": options.parallelism,
            },
        )
        workers: list[ChildProcess] = []
        try:
            job.wait_ready(JOB_START_TIMEOUT_S, lambda: send_warm_up_event(stack))
            workers = start_connector_workers(stack, options.connector_workers, env, out / "logs")
            progress(
                options,
                f"job running, {len(workers)} connector worker(s); "
                f"playing {options.calls} call(s) of {options.call_seconds:g} s…",
            )
            if options.kill_connector_after_s is None:
                for worker in workers:
                    worker.start()
                calls = play_calls(stack, options)
            else:
                calls = play_calls_and_kill_a_worker(stack, options, workers)
                killed_at = options.kill_connector_after_s
                progress(options, f"connector worker 0 was killed at {killed_at:g} s; the others resumed its contacts")
            progress(options, "calls ended; waiting for the audit trail to hold every contact…")
            wait_for_audit(audit_dir, calls, timeout_s=120 + options.call_seconds, job=job)
        finally:
            for worker in workers:
                worker.stop()
            job.stop()
        received = stack.cresta.calls()
        stack.cresta.write_wavs(out / "cresta")
        frames_read = count_frame_records(stack)
    write_source_wavs(out / "source", calls)
    report = build_report(
        calls=calls,
        audit=read_audit(audit_dir),
        cresta_calls=received,
        chunk_ms=options.chunk_ms,
        frames_read=frames_read,
    )
    report.summary["connector_workers"] = options.connector_workers
    report.summary["connector_killed_at_s"] = killed_at
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


def play_calls_and_kill_a_worker(
    stack: LocalStack, options: DemoOptions, workers: list[ChildProcess]
) -> list[SimulatedCall]:
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
        return play_calls(stack, options)
    finally:
        killer.join()


def play_calls(stack: LocalStack, options: DemoOptions) -> list[SimulatedCall]:
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
    with ThreadPoolExecutor(max_workers=options.calls, thread_name_prefix="call") as pool:
        return list(pool.map(simulator.play, calls))


def wait_for_audit(audit_dir: Path, calls: list[SimulatedCall], timeout_s: float, job: JobProcess) -> None:
    """Until each contact's final chunk of each track is committed to the audit trail."""
    wanted = {(call.contact_id, track.label) for call in calls for track in Track}
    deadline = time.monotonic() + timeout_s
    while True:
        table = read_audit(audit_dir)
        done = set()
        if table is not None:
            finals = table.filter(table["final"]).select(["contact_id", "track"]).to_pylist()
            done = {(row["contact_id"], row["track"]) for row in finals}
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


def progress(options: DemoOptions, message: str) -> None:
    print(message, file=sys.stderr if options.as_json else sys.stdout, flush=True)


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
