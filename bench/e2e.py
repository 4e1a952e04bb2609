"""Benchmark: N concurrent calls end to end, as `cresta-pipeline demo` plays them.

    python -m bench.e2e [--calls 50,100,200] [--call-seconds 20] [--connector-workers 2]

Each N is one run of the demo (``emulators.demo.run_demo``, its live progress shown), in
a process of its own: the local stack, the PyFlink job on a local minicluster, the KVS
connector workers, N emulated Connect calls started together, every contact's audio
through the connector, KDS, the job and its sinks to the Cresta emulator and the audit
trail; then the demo's checks. Nothing is re-implemented here: the figures are the
demo's summary plus CPU.

Latency is the demo's pipeline-added latency (the Cresta emulator's receipt of the media
message holding a chunk's last sample − the time the simulator's write of the KVS
fragment holding that sample was acknowledged), over every chunk of every call. Lost:
chunks missing from the audit trail, source samples missing from it, and audio that
never reached Cresta; duplicated: audit rows beyond the first per chunk and audio Cresta
received twice. "p99 st" is the p99 of the chunks after each call's first
``--warmup-seconds`` (a call's start adds the work queue's pick-up and the first GetMedia);
"asm→sent" is the job's delivery part of the latency, from the run's audit trail
(``delivery_latency_ms`` of the SENT chunks: chunk assembled → written into Cresta's
socket); the rest is KVS, the connector, KDS and the job's input. "late" is the demo's
``fragment_writes_late_ms_p99``: how far behind real time the simulator got its fragments
into KVS, a sign of a machine that cannot keep up.

CPU is user + system time per stage (psutil, sampled every ``--sample-seconds``) over the
calls' steady part: from ``--warmup-seconds`` after the calls started to when the last
call's audio was written; in % of one core. Stages:

- connector: the ``cresta-pipeline connector run`` worker processes;
- JVM: the job's JVM, the local minicluster (Kinesis source, keying, sinks, checkpoints);
- job Py: the job's Python process. It submits the job and, as PyFlink does for a job
  on a local minicluster (its "loopback" mode), runs the Python functions: assembler,
  Cresta delivery, audit rows;
- JVM kids: the processes the JVM starts for Python workers (idle in loopback mode);
- moto: the local stack's AWS server process (``emulators.moto_server``);
- in the demo's process, by thread: KVS emu (the KVS media
  emulator), Cresta emu (the Cresta emulator), Connect sim (the calls' threads: fragment
  writes and the Lambda handlers, boto3 included), demo (its main thread reading the
  audit trail, pyarrow's threads), progress (the live progress and this bench's sampler:
  the cost of watching);
- unattrib: the demo process's CPU in no thread seen (threads Python did not start that
  ended between two samples);
- others: the rest of the machine (``/proc/stat``), other people's work included.

Not a test: it prints figures and asserts nothing. The machine's load average is printed
with each run: on a shared machine, repeat a run whose load was high.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import psutil

from bench.connector import _counts
from connectors.audit_trail import read_audit_trail
from emulators.demo import PROGRESS_THREAD, DemoOptions, run_demo
from pipeline.audit_analysis import conform, sent_latencies
from pipeline.media_streams import SAMPLE_RATE

CONNECTOR: Final = "connector"
JVM: Final = "JVM"
JOB_PYTHON: Final = "job Py"
JVM_CHILDREN: Final = "JVM kids"
MOTO: Final = "moto"
KVS_EMULATOR: Final = "KVS emu"
CRESTA_EMULATOR: Final = "Cresta emu"
SIMULATOR: Final = "Connect sim"
DEMO: Final = "demo"
PROGRESS: Final = "progress"
UNATTRIBUTED: Final = "unattrib"
OTHER_CHILDREN: Final = "other"
STAGES: Final = (
    CONNECTOR, JVM, JOB_PYTHON, JVM_CHILDREN, MOTO, KVS_EMULATOR, CRESTA_EMULATOR, SIMULATOR, DEMO, PROGRESS,
    UNATTRIBUTED,
)
#: The machine's busy CPU seconds, beside the stages in each sample.
MACHINE: Final = "machine"
SAMPLER_THREAD: Final = "bench-cpu"


def thread_stage(thread: threading.Thread | None) -> str:
    """Which part of the demo's process a thread works for."""
    if thread is None:
        # Threads Python did not start: pyarrow's pool, reading the audit trail.
        return DEMO
    if thread.name.startswith("call"):
        return SIMULATOR
    if thread.name in (PROGRESS_THREAD, SAMPLER_THREAD):
        return PROGRESS
    if thread.name.startswith("cresta-emulator"):
        return CRESTA_EMULATOR
    if thread.name == "kvs-emulator":
        return KVS_EMULATOR
    # socketserver names the thread that serves a connection after the method it runs;
    # the server is that bound method's object, and its handler class says whose it is.
    owner = getattr(getattr(thread, "_target", None), "__self__", None)
    module = getattr(owner, "RequestHandlerClass", type(owner)).__module__
    if module.startswith("emulators.kvs"):
        return KVS_EMULATOR
    if module.startswith("emulators.cresta"):
        return CRESTA_EMULATOR
    return DEMO


def process_stage(process: psutil.Process) -> str:
    """Which part of the pipeline a child of the demo's process is."""
    command = process.cmdline()
    if "connector" in command and "run" in command:
        return CONNECTOR
    if "jobs.audio_job" in command:
        return JOB_PYTHON
    if "emulators.moto_server" in command:
        return MOTO
    if process.name() == "java":
        return JVM
    if any(parent.name() == "java" for parent in process.parents()):
        return JVM_CHILDREN
    return OTHER_CHILDREN


def machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - times.iowait


class StageCpu:
    """CPU seconds per stage, sampled in a thread of its own.

    Child processes and live threads are read every interval (psutil). A Python thread
    that ends reports its own CPU time as it ends: ``Thread.run`` is wrapped while the
    sampler runs, since a server that starts a thread per connection has threads that
    live and die between two samples. Each process and thread is remembered with its last CPU
    time, so one that has ended keeps what it used. An id the system reuses shows less
    CPU than remembered: what the old one had used is kept aside.
    """

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._me = psutil.Process()
        self._lock = threading.Lock()
        #: ("thread" | "process", id) → (stage, CPU seconds last seen).
        self._seen: dict[tuple[str, int], tuple[str, float]] = {}
        #: ("thread" | "process", stage) → CPU seconds of ids since reused.
        self._retired: dict[tuple[str, str], float] = defaultdict(float)
        #: (epoch seconds, cumulative CPU seconds per stage and of the machine).
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=SAMPLER_THREAD, daemon=True)
        self._thread_run = threading.Thread.run

    def __enter__(self) -> "StageCpu":
        thread_run = self._thread_run

        def run_and_report_cpu(thread: threading.Thread) -> None:
            stage = thread_stage(thread)  # before run(), which drops the thread's target
            try:
                thread_run(thread)
            finally:
                self._note(("thread", threading.get_native_id()), time.thread_time(), lambda: stage)

        threading.Thread.run = run_and_report_cpu  # type: ignore[method-assign]
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join()
        threading.Thread.run = self._thread_run  # type: ignore[method-assign]

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stopping.wait(self._interval_s):
                return

    def sample(self) -> None:
        at = time.time()
        python_threads = {thread.native_id: thread for thread in threading.enumerate()}
        for thread in self._me.threads():
            self._note(("thread", thread.id), thread.user_time + thread.system_time,
                       lambda: thread_stage(python_threads.get(thread.id)))
        for child in self._me.children(recursive=True):
            try:
                with child.oneshot():
                    times = child.cpu_times()
                    # Classified each time: a JVM's fork is a java process until it execs.
                    stage = process_stage(child)
            except psutil.Error:
                continue
            self._note(("process", child.pid), times.user + times.system, lambda: stage, reclassify=True)
        own = self._me.cpu_times()
        totals: dict[str, float] = defaultdict(float)
        with self._lock:
            for (_, stage), cpu in self._retired.items():
                totals[stage] += cpu
            for _, (stage, cpu) in self._seen.items():
                totals[stage] += cpu
            in_threads = sum(cpu for (kind, _), (_, cpu) in self._seen.items() if kind == "thread")
            in_threads += sum(cpu for (kind, _), cpu in self._retired.items() if kind == "thread")
        totals[UNATTRIBUTED] = own.user + own.system - in_threads
        totals[MACHINE] = machine_busy_seconds()
        self.samples.append((at, dict(totals)))

    def _note(self, key: tuple[str, int], cpu: float, stage_of: Any, reclassify: bool = False) -> None:
        with self._lock:
            known = self._seen.get(key)
            if known is not None and cpu < known[1]:
                self._retired[(key[0], known[0])] += known[1]
                known = None
            stage = stage_of() if known is None or reclassify else known[0]
            self._seen[key] = (stage, cpu)

    def between(self, start: float, end: float) -> tuple[dict[str, float], float]:
        """CPU seconds per stage (and of the machine) between the samples nearest to
        ``start`` and ``end``, and the seconds between those samples."""
        first = min(self.samples, key=lambda sample: abs(sample[0] - start))
        last = min(self.samples, key=lambda sample: abs(sample[0] - end))
        used = {stage: last[1].get(stage, 0.0) - first[1].get(stage, 0.0) for stage in last[1]}
        return used, last[0] - first[0]


@dataclass
class RunResult:
    calls: int
    summary: dict[str, Any]
    ok: bool
    #: % of one core per stage over the steady part; ``MACHINE`` minus ours is "others".
    cpu_percent: dict[str, float]
    window_s: float
    load_average: tuple[float, float, float]
    #: p99 of the pipeline-added latency of the chunks after each call's warm-up.
    steady_p99_ms: float
    #: The job's part of the latency, chunk assembled → written into Cresta's socket
    #: (the audit trail's ``delivery_latency_ms`` of SENT chunks): p50, p99.
    delivery_ms: tuple[float, float]

    @property
    def lost(self) -> str:
        s = self.summary
        return (
            f"{s['missing']}/{s['audit_samples_missing'] / SAMPLE_RATE:.1f}s/{s['cresta_missing_ms'] / 1000:.1f}s"
        )

    @property
    def duplicated(self) -> str:
        s = self.summary
        return f"{s['duplicated']}/{s['cresta_resent_ms']:.0f}ms"

    @property
    def ours_percent(self) -> float:
        """The whole run's CPU (every stage), in % of one core."""
        return sum(self.cpu_percent.get(stage, 0.0) for stage in (*STAGES, OTHER_CHILDREN))

    @property
    def others_percent(self) -> float:
        return self.cpu_percent[MACHINE] - self.ours_percent


def run_once(options: DemoOptions, warmup_s: float, sample_s: float) -> RunResult:
    load = os.getloadavg()
    with StageCpu(sample_s) as cpu:
        report = run_demo(options)
    assert report.calls_played is not None
    started, ended = report.calls_played
    used, window_s = cpu.between(started + warmup_s, ended)
    delivery = sent_latencies(conform(read_audit_trail(report.summary["audit_uri"]))).delivery_ms
    steady = [latency for at, latency in report.chunk_latencies if at > warmup_s]
    return RunResult(
        calls=options.calls,
        summary=report.summary,
        ok=report.ok,
        cpu_percent={stage: 100 * seconds / window_s for stage, seconds in used.items()},
        window_s=window_s,
        load_average=load,
        steady_p99_ms=float(np.percentile(steady, 99)) if steady else float("nan"),
        delivery_ms=tuple(np.percentile(delivery, [50, 99])) if len(delivery) else (float("nan"), float("nan")),
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}ms"


def print_table(results: Sequence[RunResult]) -> None:
    stages = [*STAGES, *([OTHER_CHILDREN] if any(r.cpu_percent.get(OTHER_CHILDREN) for r in results) else [])]
    print(
        f"{'calls':>5} {'chunks':>7} {'lost':>16} {'dup':>10} {'exact':>7} {'p50':>7} {'p99':>7} {'p99 st':>7} "
        f"{'asm→sent':>13} {'late':>7} "
        f"{'ok':>3} " + " ".join(f"{stage:>{max(len(stage), 4)}}" for stage in stages)
        + f" {'total':>6} {'/call':>5} {'others':>6} {'load':>4}"
    )
    for r in results:
        s = r.summary
        print(
            f"{r.calls:>5} {s['chunks']:>7} {r.lost:>16} {r.duplicated:>10} "
            f"{str(s['cresta_audio_exact']) + '/' + str(s['calls']):>7} {_ms(s['latency_ms_p50']):>7} "
            f"{_ms(s['latency_ms_p99']):>7} {_ms(r.steady_p99_ms):>7} {r.delivery_ms[0]:>5.0f}/{r.delivery_ms[1]:>5.0f}ms "
            f"{_ms(s['fragment_writes_late_ms_p99']):>7} {'yes' if r.ok else 'NO':>3} "
            + " ".join(f"{r.cpu_percent.get(stage, 0.0):>{max(len(stage), 4) - 1}.0f}%" for stage in stages)
            + f" {r.ours_percent:>5.0f}% {r.ours_percent / r.calls:>4.1f}% {r.others_percent:>5.0f}%"
            + f" {r.load_average[0]:>4.1f}"
        )
    print(
        "lost: chunks missing from the audit trail / source audio missing from it / audio that never reached "
        "Cresta; dup: audit rows "
        "duplicated / audio Cresta received twice; exact: contacts whose audio at Cresta is the source's, once; "
        "p50/p99: pipeline-added latency (fragment written into KVS → Cresta's receipt of the chunk's last sample); "
        "p99 st: p99 of the chunks after each call's warm-up; asm→sent: its delivery part, chunk assembled → written into Cresta's socket, p50/p99; "
        "late: KVS writes behind real time, p99; ok: the demo's checks passed. CPU in % of one core over the calls' "
        "steady part (see --help); total: all stages, /call: that per call; others: the rest of the machine. "
        "load: 1-minute load average before the run."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--calls", type=_counts, default=[50, 100, 200],
                        help="concurrent calls per run, comma-separated (default 50,100,200)")
    parser.add_argument("--call-seconds", type=float, default=20.0, help="length of each call (default 20)")
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per chunk (default 100)")
    parser.add_argument("--connector-workers", type=int, default=2,
                        help="KVS connector worker processes (default 2, as the demo)")
    parser.add_argument("--parallelism", type=int, default=1, help="Flink job parallelism (default 1)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0,
                        help="the calls' first seconds left out of the CPU figures and the steady p99 (default 3)")
    parser.add_argument("--sample-seconds", type=float, default=0.5,
                        help="how often CPU times are read (default 0.5)")
    parser.add_argument("--quiet", action="store_true",
                        help="no live progress during the runs (what watching costs: see progress)")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep each run's demo output under this folder (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.call_seconds <= args.warmup_seconds + 2 * args.sample_seconds:
        parser.error("--call-seconds must exceed --warmup-seconds by a few samples")

    results = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as scratch:
        root = args.out or Path(scratch)
        for number, calls in enumerate(args.calls, 1):
            print(
                f"run {number}/{len(args.calls)}: {calls} calls of {args.call_seconds:g} s "
                f"(load average {os.getloadavg()[0]:.1f})",
                file=sys.stderr,
                flush=True,
            )
            options = DemoOptions(
                calls=calls,
                call_seconds=args.call_seconds,
                out=root / f"calls-{calls}",
                chunk_ms=args.chunk_ms,
                audit_audio=False,
                parallelism=args.parallelism,
                fragment_ms=1000,
                as_json=False,
                connector_workers=args.connector_workers,
                kill_connector_after_s=None,
                audit_uri=None,
                fail_job_after_s=None,
                quiet=args.quiet,
            )
            # Each run in a process of its own, as each demo is: module-level state such
            # as the Lambda handlers' boto3 clients must not outlive its stack.
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as run:
                try:
                    results.append(run.submit(run_once, options, args.warmup_seconds, args.sample_seconds).result())
                except Exception as error:  # a demo that could not finish is a result too
                    failures.append(f"{calls} calls: the demo failed: {error}")
                    print(failures[-1], file=sys.stderr, flush=True)
                    continue
            print_table(results[-1:])
    print(
        f"\n{args.call_seconds:g} s calls, {args.chunk_ms} ms chunks, {args.connector_workers} connector worker(s), "
        f"parallelism {args.parallelism}, live progress {'off' if args.quiet else 'on'}; {os.cpu_count()} cores"
    )
    print_table(results)
    for failure in failures:
        print(failure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
