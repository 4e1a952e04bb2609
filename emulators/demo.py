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
from connectors.kinesis.producer import KinesisRecordProducer
from connectors.kvs.media import KvsMediaSource
from connectors.kvs.checkpoints import DynamoDbCheckpointStore
from connectors.kvs.worker import ConnectorWorker, ReadSettings
from emulators.connect.simulator import ConnectCallSimulator, SimulatedCall
from emulators.demo_report import DemoReport, build_report, read_audit
from emulators.stack import LocalStack, StackSettings
from pipeline.audio import write_wav_pcm16
from pipeline.config import load_config
from pipeline.records import ContactEvent, EventType, Track

log = logging.getLogger("demo")

JOB_START_TIMEOUT_S = 240.0
WARM_UP_CONTACT_ID = "demo-warm-up"
DEMO_MAX_IDLE_S = 4.0


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
    args = parser.parse_args(argv)
    if args.calls < 1 or args.call_seconds <= 0:
        parser.error("--calls must be >= 1 and --call-seconds > 0")
    if not 20 <= args.chunk_ms <= 1000:
        parser.error("--chunk-ms must be within 20..1000")
    return DemoOptions(
        calls=args.calls,
        call_seconds=args.call_seconds,
        out=args.out,
        chunk_ms=args.chunk_ms,
        audit_audio=args.audit_audio,
        parallelism=args.parallelism,
        fragment_ms=args.fragment_ms,
        as_json=args.json,
    )


class JobProcess:
    """The PyFlink job in its own process group, so stopping it stops its JVM too."""

    def __init__(self, config_path: Path, env: dict[str, str], log_path: Path, ready_file: Path) -> None:
        self.ready_file = ready_file
        self.log_file = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobs.audio_job", "--config", str(config_path)],
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float, warm_up: Callable[[], None]) -> None:
        """Until the job's Python operators are up.

        PyFlink opens Python functions with the first bundle, so the demo keeps sending
        a warm-up contact event until the assembler has opened; calls played before
        that would measure the job's start-up, not the pipeline.
        """
        deadline = time.monotonic() + timeout_s
        next_warm_up = 0.0
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the Flink job exited with code {self.process.returncode}; see {self.log_file.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Flink job did not start within {timeout_s:.0f} s; see {self.log_file.name}")
            if time.monotonic() >= next_warm_up:
                warm_up()
                next_warm_up = time.monotonic() + 2.0
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log_file.close()


def run_demo(options: DemoOptions) -> DemoReport:
    out = options.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    audit_dir = out / "audit"
    ready_file = out / "logs" / "job.ready"
    ready_file.unlink(missing_ok=True)
    settings = StackSettings(kvs_pool_size=options.calls)
    with LocalStack(settings) as stack:
        stack.apply_environment()
        env = {**os.environ, **stack.aws_environment(), **stack.cresta_environment()}
        config = load_config(
            env={},
            overrides={
                "aws.endpoint_url": stack.endpoint_url,
                "aws.region": env["AWS_REGION"],
                "assembler.chunk_ms": options.chunk_ms,
                "audit.path": audit_dir.as_uri(),
                "audit.include_audio": options.audit_audio,
                "flink.parallelism": options.parallelism,
                "job.ready_file": str(ready_file),
            },
        )
        config_path = out / "logs" / "job-properties.json"
        config_path.write_text(json.dumps(config.to_property_groups(), indent=2))
        progress(options, "starting the Flink job (local minicluster)…")
        job = JobProcess(config_path, env, out / "logs" / "job.log", ready_file)
        stop_worker = threading.Event()
        producer = KinesisRecordProducer(stack.client("kinesis"), settings.audio_frames_stream)
        worker = ConnectorWorker(
            stack.client("sqs"),
            stack.queue_url,
            KvsMediaSource(stack.client("kinesisvideo"), media_endpoint_override=stack.kvs.endpoint_url),
            producer,
            checkpoint_store=DynamoDbCheckpointStore(stack.client("dynamodb"), settings.checkpoint_table),
            # Emulated calls never pause mid-call, so the demo need not wait the
            # production default before declaring a silent contact over.
            read_settings=ReadSettings(max_idle_s=DEMO_MAX_IDLE_S),
        )
        worker_thread = threading.Thread(target=worker.run, args=(stop_worker,), name="kvs-connector")
        try:
            job.wait_ready(JOB_START_TIMEOUT_S, lambda: send_warm_up_event(stack))
            worker_thread.start()
            progress(options, f"job running; playing {options.calls} call(s) of {options.call_seconds:g} s…")
            calls = play_calls(stack, options)
            progress(options, "calls ended; waiting for the audit trail to hold every contact…")
            wait_for_audit(audit_dir, calls, timeout_s=120 + options.call_seconds, job=job)
        finally:
            stop_worker.set()
            if worker_thread.is_alive():
                worker_thread.join(timeout=30)
            producer.close()
            job.stop()
        received = stack.cresta.calls()
        stack.cresta.write_wavs(out / "cresta")
    write_source_wavs(out / "source", calls)
    report = build_report(
        calls=calls,
        audit=read_audit(audit_dir),
        cresta_calls=received,
        chunk_ms=options.chunk_ms,
        frames_read=worker.frames_published,
    )
    (out / "summary.json").write_text(json.dumps(report.summary, indent=2))
    return report


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
        if job.process.poll() is not None:
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
