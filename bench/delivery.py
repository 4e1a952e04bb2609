"""Benchmark: the Cresta delivery service under N concurrent live contacts.

    python -m bench.delivery [--contacts 50,100,200] [--seconds 20] [--protocol media_streams]

For each N, two processes: the Cresta emulator (``CrestaEmulator``: token endpoint, strict
stream receivers, every message checked and recorded), and the delivery process, which
builds ``CrestaDeliveryService`` as the job does, ``create_delivery_service(
CrestaSettings.from_config(config))`` with the client credentials in the environment, and
plays N contacts: each hands the service one 100 ms chunk per track (customer and agent)
every 100 ms, as a live call's audio comes out of the assembler, the contacts' phases
spread evenly over the 100 ms. A collector thread polls the receipts every 10 ms, as the
job's function polls them between records. At the end every contact is closed and every
receipt drained.

Measured per chunk, leaving out the first ``--warmup-seconds`` of every contact (they
include the token request and each contact's WebSocket upgrade):

- submit → receipt SENT: the receipt's ``latency_ms`` (the delivery latency the job
  reports), the chunk's ``assembled_at_ms`` being the moment it was submitted; both
  ends are whole epoch milliseconds, so a figure is ±1 ms;
- submit → Cresta: when the emulator read the chunk's last message off the socket
  (``CallRecord.media_receive_times``). Every 20 ms frame carries its chunk's number
  in its first two μ-law codes, so arrivals are matched to chunks by content, and
  chunks lost, cut short or out of order would be counted.

CPU is user + system time over the steady part (warm-up end → last submit), per process,
in % of one core, and per SENT chunk: "SENT/core-s" is the chunks SENT in the steady
part per CPU-second of the delivery process. The delivery process's figure includes
building the chunk objects and the collector, as the job's function would spend them;
"others" is the rest of the machine (``/proc/stat``). Peak RSS: the delivery process's ``ru_maxrss`` next to
its RSS before the service started, and the emulator's ``VmHWM``, which includes the
audio it records (16 KB per contact-second for Media Streams). "late" is how far behind
schedule the load generator submitted.

Not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

import numpy as np

from bench.connector import ChildProcess, machine_busy_seconds, percentile, process_cpu_seconds
from connectors.cresta.credentials import CLIENT_ID_ENV, CLIENT_SECRET_ENV
from connectors.cresta.settings import CrestaSettings, create_delivery_service
from emulators.connect.simulator import EMULATED_INSTANCE_ID as INSTANCE_ID
from emulators.cresta import CrestaEmulator
from pipeline.assembler import AudioChunk, ContactInfo
from pipeline.audio import mulaw_to_pcm16, pcm16_to_mulaw
from pipeline.audit import DeliveryStatus
from pipeline.config import load_config
from pipeline.media_streams import FRAME_BYTES, MEDIA_ENCODING, TWILIO_TRACK_OF
from pipeline.records import Track

SAMPLE_RATE: Final = 8000
CHUNK_MS: Final = 100
CHUNK_SAMPLES: Final = SAMPLE_RATE * CHUNK_MS // 1000
TRACKS: Final = (Track.CUSTOMER, Track.AGENT)
#: A chunk's number is written into the first two μ-law codes of each of its 20 ms
#: frames, as two base-127 digits coded 0x80…0xFE: codes that survive μ-law decoding and
#: re-encoding unchanged (0x7F and 0xFF both decode to 0).
TAG_BASE: Final = 127
TAG_FIRST_CODE: Final = 0x80
MAX_CHUNKS: Final = TAG_BASE * TAG_BASE
CLIENT_ID: Final = "bench-client"
PROGRESS_EVERY_S: Final = 5.0
#: The collector polls the receipts this often without waiting on them, as a Flink
#: function polls between elements; each receipt carries its own finish time.
POLL_INTERVAL_S: Final = 0.01
#: The load generator sleeps only when the next contact is due this much later or more,
#: so that 200 contacts 0.5 ms apart do not cost 2,000 wake-ups a second.
PACING_QUANTUM_S: Final = 0.002
#: The emulator is told to stop only after the run; this bounds the wait for its answer.
EMULATOR_STOP_TIMEOUT_S: Final = 300.0


# -- chunk audio, tagged with its number ---------------------------------------------------


def tag_codes(seq: int) -> bytes:
    return bytes([TAG_FIRST_CODE + seq // TAG_BASE, TAG_FIRST_CODE + seq % TAG_BASE])


def tagged_pcm(seq: int, body: np.ndarray) -> bytes:
    """100 ms of PCM whose every 20 ms frame starts with ``seq``'s tag; the rest is
    ``body`` (μ-law codes, so the audio survives μ-law encoding exactly)."""
    codes = body.copy()
    tag = np.frombuffer(tag_codes(seq), dtype=np.uint8)
    for frame_start in range(0, CHUNK_SAMPLES, FRAME_BYTES):
        codes[frame_start : frame_start + len(tag)] = tag
    return mulaw_to_pcm16(codes.tobytes())


def seq_of_tag(codes: bytes, offset: int) -> int:
    return (codes[offset] - TAG_FIRST_CODE) * TAG_BASE + codes[offset + 1] - TAG_FIRST_CODE


# -- the emulator's process ------------------------------------------------------------------


@dataclass(frozen=True)
class EmulatorEndpoints:
    auth_url: str
    ws_url: str
    l16_url: str
    client_secret: str
    media_token: str


@dataclass
class EmulatorMeasurement:
    """What the emulator read, reduced to what the figures need."""

    #: (contact id, track) → chunk number → when its last message was read (epoch s).
    arrivals: dict[tuple[str, Track], dict[int, float]]
    #: Chunks whose messages arrived only in part.
    incomplete: int
    #: Chunks that arrived behind a later chunk of their track.
    reordered: int
    violations: list[str]
    #: Stream connections accepted: one per contact unless streams were reopened.
    connections: int
    peak_rss_kb: int


def _serve_cresta(conn: Connection) -> None:
    client_secret, media_token = secrets.token_urlsafe(24), secrets.token_urlsafe(16)
    with CrestaEmulator(client_id=CLIENT_ID, client_secret=client_secret, media_token=media_token) as emulator:
        conn.send(EmulatorEndpoints(emulator.auth_url, emulator.ws_url, emulator.l16_url, client_secret, media_token))
        conn.recv()
        received = _reduce(emulator)
    conn.send(received)


def _reduce(emulator: CrestaEmulator) -> EmulatorMeasurement:
    arrivals: dict[tuple[str, Track], dict[int, float]] = {}
    incomplete = reordered = 0
    for call_sid, record in emulator.calls().items():
        for track in TRACKS:
            audio = record.tracks[TWILIO_TRACK_OF[track]]
            # μ-law arrives in 20 ms messages; L16 in one message per chunk.
            if record.encoding == MEDIA_ENCODING:
                codes, message_samples = audio, FRAME_BYTES
            else:
                codes, message_samples = pcm16_to_mulaw(audio), CHUNK_SAMPLES
            times = record.media_receive_times[TWILIO_TRACK_OF[track]]
            chunk_arrivals, cut, behind = _chunk_arrivals(codes, times, message_samples)
            arrivals[(call_sid, track)] = chunk_arrivals
            incomplete += cut
            reordered += behind
    return EmulatorMeasurement(
        arrivals, incomplete, reordered, emulator.violations(), emulator.connections_opened, _peak_rss_kb()
    )


def _chunk_arrivals(codes: bytes, times: Sequence[float], message_samples: int) -> tuple[dict[int, float], int, int]:
    """Chunk number → arrival of its last message (its first complete copy), and the
    numbers of chunks cut short and of chunks behind a later one."""
    messages_per_chunk = CHUNK_SAMPLES // message_samples
    arrivals: dict[int, float] = {}
    cut = behind = 0
    highest = -1
    run_seq, run_length, run_end = -1, 0, 0.0

    def finish_run() -> None:
        nonlocal cut, behind, highest
        if run_length == 0:
            return
        if run_length != messages_per_chunk:
            cut += 1
        elif run_seq not in arrivals:
            arrivals[run_seq] = run_end
        if run_seq < highest:
            behind += 1
        highest = max(highest, run_seq)

    for index, received_at in enumerate(times):
        seq = seq_of_tag(codes, index * message_samples)
        if seq != run_seq or run_length == messages_per_chunk:
            finish_run()
            run_seq, run_length = seq, 0
        run_length += 1
        run_end = received_at
    finish_run()
    return arrivals, cut, behind


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _rss_kb() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


# -- the delivery process ------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryRun:
    contacts: int
    seconds: int
    warmup_s: int
    protocol: str
    endpoints: EmulatorEndpoints
    emulator_pid: int


@dataclass
class DeliveryMeasurement:
    """What the delivery process measured."""

    #: (contact id, track, seq) → submit time (epoch s), for every chunk submitted.
    submitted: dict[tuple[str, Track, int], float]
    #: Receipt latency (ms) of each SENT chunk after the warm-up.
    sent_latency_ms: list[int]
    #: When each SENT receipt was issued (epoch s).
    sent_at_s: list[float]
    #: (contact id, track, seq) of every chunk whose receipt is not SENT.
    not_sent: set[tuple[str, Track, int]]
    statuses: Counter[str]
    attempts_over_one: int
    #: The steady part (epoch s): the last contact's warm-up end → the last submit.
    steady_from: float
    steady_until: float
    cpu_s: float
    emulator_cpu_s: float
    machine_busy_s: float
    rss_before_kb: int
    peak_rss_kb: int
    late_s: list[float]


def contact_id(index: int) -> str:
    return f"bench-contact-{index:04d}"


def deliver(run: DeliveryRun) -> DeliveryMeasurement:
    """Runs in a fresh process: plays the contacts through the service and measures it."""
    os.environ[CLIENT_ID_ENV] = CLIENT_ID
    os.environ[CLIENT_SECRET_ENV] = run.endpoints.client_secret
    config = load_config(
        env={},
        overrides={
            "cresta.ws_url": run.endpoints.l16_url if run.protocol == "l16" else run.endpoints.ws_url,
            "cresta.auth_url": run.endpoints.auth_url,
            "cresta.media_token": run.endpoints.media_token,
            "cresta.protocol": run.protocol,
            "cresta.attribute_allowlist": "queue",
        },
    )
    rss_before_kb = _rss_kb()
    service = create_delivery_service(CrestaSettings.from_config(config))
    info = ContactInfo(INSTANCE_ID, "agent-1", "queue-1", {"queue": "billing"})
    bodies = {
        track: np.random.default_rng(seed).integers(0, 256, CHUNK_SAMPLES, dtype=np.uint8)
        for seed, track in enumerate(TRACKS)
    }
    ids = [contact_id(i) for i in range(run.contacts)]
    ticks = run.seconds * 1000 // CHUNK_MS
    warmup_ticks = run.warmup_s * 1000 // CHUNK_MS
    started_at = time.time() + 0.5
    started_ms = int(started_at * 1000)

    submitted: dict[tuple[str, Track, int], float] = {}
    sent_latency_ms: list[int] = []
    sent_at_s: list[float] = []
    not_sent: set[tuple[str, Track, int]] = set()
    statuses: Counter[str] = Counter()
    attempts_over_one = 0
    finished = threading.Event()

    def collect() -> None:
        nonlocal attempts_over_one
        while True:
            done = finished.is_set()
            for delivered in service.poll_receipts():
                receipt, chunk = delivered.receipt, delivered.chunk
                statuses[receipt.status.value] += 1
                attempts_over_one += receipt.attempts > 1
                if receipt.status is DeliveryStatus.SENT:
                    sent_at_s.append(receipt.finished_at_ms / 1000)
                    if chunk.seq >= warmup_ticks:
                        sent_latency_ms.append(receipt.latency_ms)
                else:
                    not_sent.add((chunk.contact_id, chunk.track, chunk.seq))
            if done and service.outstanding == 0:
                return
            time.sleep(POLL_INTERVAL_S)

    collector = threading.Thread(target=collect, name="receipts")
    collector.start()

    steady_from = started_at + (warmup_ticks + 1) * CHUNK_MS / 1000
    cpu_before: dict[str, float] = {}

    def sample_at_steady_start() -> None:
        time.sleep(max(steady_from - time.time(), 0))
        cpu_before.update(_cpu_sample(run.emulator_pid))

    sampler = threading.Thread(target=sample_at_steady_start, name="sampler")
    sampler.start()
    late_s: list[float] = []
    next_progress = started_at + PROGRESS_EVERY_S
    for tick in range(ticks):
        pcm = {track: tagged_pcm(tick, bodies[track]) for track in TRACKS}
        for index, contact in enumerate(ids):
            due = started_at + (tick + index / run.contacts) * CHUNK_MS / 1000
            wait = due - time.time()
            if wait > PACING_QUANTUM_S:
                time.sleep(wait)
            for track in TRACKS:
                now = time.time()
                chunk = AudioChunk(
                    contact, track, tick, started_ms + tick * CHUNK_MS, SAMPLE_RATE, pcm[track], False, info,
                    False, int(now * 1000),
                )
                submitted[(contact, track, tick)] = now
                service.submit(chunk)
            late_s.append(max(0.0, time.time() - due))
        if time.time() >= next_progress:
            next_progress += PROGRESS_EVERY_S
            print(
                f"  {run.contacts} contacts, {time.time() - started_at:4.0f} s: {len(submitted)} chunks submitted, "
                f"receipts {dict(statuses)}, {service.outstanding} outstanding",
                file=sys.stderr,
                flush=True,
            )
    sampler.join()
    cpu_after = _cpu_sample(run.emulator_pid)
    steady_until = time.time()

    for contact in ids:
        service.close_contact(contact)
    service.close()
    finished.set()
    collector.join()
    return DeliveryMeasurement(
        submitted=submitted,
        sent_latency_ms=sent_latency_ms,
        sent_at_s=sent_at_s,
        not_sent=not_sent,
        statuses=statuses,
        attempts_over_one=attempts_over_one,
        steady_from=steady_from,
        steady_until=steady_until,
        cpu_s=cpu_after["self"] - cpu_before["self"],
        emulator_cpu_s=cpu_after["emulator"] - cpu_before["emulator"],
        machine_busy_s=cpu_after["machine"] - cpu_before["machine"],
        rss_before_kb=rss_before_kb,
        peak_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        late_s=late_s,
    )


def _cpu_sample(emulator_pid: int) -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "self": usage.ru_utime + usage.ru_stime,
        "emulator": process_cpu_seconds(emulator_pid),
        "machine": machine_busy_seconds(),
    }


# -- one run ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    contacts: int
    submitted_per_s: float
    sent_per_s: float
    statuses: Counter[str]
    attempts_over_one: int
    sent_p50_ms: float
    sent_p99_ms: float
    cresta_p50_ms: float
    cresta_p99_ms: float
    #: Chunks SENT that never reached the emulator whole.
    lost: int
    incomplete: int
    reordered: int
    violations: int
    streams: int
    delivery_cpu_percent: float
    emulator_cpu_percent: float
    others_cpu_percent: float
    #: CPU per SENT chunk (µs), and SENT chunks per CPU-second, over the steady part.
    delivery_us_per_sent: float
    emulator_us_per_sent: float
    sent_per_core_s: float
    rss_before_mb: float
    peak_rss_mb: float
    emulator_peak_rss_mb: float
    late_p99_ms: float


def run_once(contacts: int, seconds: int, warmup_s: int, protocol: str) -> RunResult:
    emulator = ChildProcess(_serve_cresta)
    try:
        run = DeliveryRun(contacts, seconds, warmup_s, protocol, emulator.started_with, emulator.pid)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            delivered = pool.submit(deliver, run).result()
    finally:
        received: EmulatorMeasurement | None = emulator.stop(timeout_s=EMULATOR_STOP_TIMEOUT_S)
    if received is None:
        raise RuntimeError("the Cresta emulator did not report what it received")
    return _summarize(contacts, warmup_s, delivered, received)


def _summarize(
    contacts: int, warmup_s: int, delivered: DeliveryMeasurement, received: EmulatorMeasurement
) -> RunResult:
    warmup_ticks = warmup_s * 1000 // CHUNK_MS
    cresta_latencies = []
    lost = 0
    for key, submitted_at in delivered.submitted.items():
        contact, track, seq = key
        arrived = received.arrivals.get((contact, track), {}).get(seq)
        if arrived is None:
            lost += key not in delivered.not_sent
        elif seq >= warmup_ticks:
            cresta_latencies.append(1000 * (arrived - submitted_at))
    steady_from, steady_until = delivered.steady_from, delivered.steady_until
    window_s = steady_until - steady_from
    submitted = sum(steady_from <= at <= steady_until for at in delivered.submitted.values())
    # Receipts are stamped in whole milliseconds.
    sent = sum(steady_from - 0.001 <= at <= steady_until for at in delivered.sent_at_s)
    return RunResult(
        contacts=contacts,
        submitted_per_s=submitted / window_s,
        sent_per_s=sent / window_s,
        statuses=delivered.statuses,
        attempts_over_one=delivered.attempts_over_one,
        sent_p50_ms=percentile(delivered.sent_latency_ms, 0.50),
        sent_p99_ms=percentile(delivered.sent_latency_ms, 0.99),
        cresta_p50_ms=percentile(cresta_latencies, 0.50),
        cresta_p99_ms=percentile(cresta_latencies, 0.99),
        lost=lost,
        incomplete=received.incomplete,
        reordered=received.reordered,
        violations=len(received.violations),
        streams=received.connections,
        delivery_cpu_percent=100 * delivered.cpu_s / window_s,
        emulator_cpu_percent=100 * delivered.emulator_cpu_s / window_s,
        others_cpu_percent=100 * (delivered.machine_busy_s - delivered.cpu_s - delivered.emulator_cpu_s) / window_s,
        delivery_us_per_sent=1e6 * delivered.cpu_s / sent if sent else float("nan"),
        emulator_us_per_sent=1e6 * delivered.emulator_cpu_s / sent if sent else float("nan"),
        sent_per_core_s=sent / delivered.cpu_s if delivered.cpu_s else float("nan"),
        rss_before_mb=delivered.rss_before_kb / 1024,
        peak_rss_mb=delivered.peak_rss_kb / 1024,
        emulator_peak_rss_mb=received.peak_rss_kb / 1024,
        late_p99_ms=1000 * percentile(delivered.late_s, 0.99),
    )


# -- CLI --------------------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive numbers")
    return counts


def _print_table(results: Sequence[RunResult]) -> None:
    print(
        f"{'contacts':>8} {'submit/s':>8} {'SENT/s':>7} {'SENT':>6} {'DROPPED':>7} {'FAILED':>6} {'retried':>7} "
        f"{'SENT p50':>8} {'SENT p99':>8} {'Cresta p50':>10} {'Cresta p99':>10} "
        f"{'delivery':>8} {'µs/SENT':>7} {'SENT/core-s':>11} {'emulator':>8} {'µs/SENT':>7} {'others':>6} "
        f"{'RSS start→peak':>15} {'emu RSS':>7} {'late p99':>8} {'streams':>7} {'faults':>6}"
    )
    for r in results:
        faults = r.lost + r.incomplete + r.reordered + r.violations
        print(
            f"{r.contacts:>8} {r.submitted_per_s:>8,.0f} {r.sent_per_s:>7,.0f} {r.statuses['SENT']:>6} "
            f"{r.statuses['DROPPED']:>7} {r.statuses['FAILED']:>6} {r.attempts_over_one:>7} "
            f"{r.sent_p50_ms:>6.0f}ms {r.sent_p99_ms:>6.0f}ms {r.cresta_p50_ms:>8.1f}ms {r.cresta_p99_ms:>8.1f}ms "
            f"{r.delivery_cpu_percent:>7.0f}% {r.delivery_us_per_sent:>7.0f} {r.sent_per_core_s:>11,.0f} "
            f"{r.emulator_cpu_percent:>7.0f}% {r.emulator_us_per_sent:>7.0f} {r.others_cpu_percent:>5.0f}% "
            f"{r.rss_before_mb:>6.0f}→{r.peak_rss_mb:>4.0f} MB {r.emulator_peak_rss_mb:>5.0f}MB "
            f"{r.late_p99_ms:>6.0f}ms {r.streams:>7} {faults:>6}"
        )
    print(
        "submit/s, SENT/s: chunks submitted and SENT receipts per second over the steady part (a contact submits "
        "2 tracks × 10 chunks a second). SENT / DROPPED / FAILED: receipts of the whole run; retried: receipts "
        "with more than one attempt. SENT p50/p99: submit → receipt SENT (the receipt's latency_ms, ±1 ms); "
        "Cresta p50/p99: submit → the emulator read the chunk's last message; both after the warm-up. "
        "delivery / emulator: CPU in % of one core; µs/SENT: CPU per SENT chunk; SENT/core-s: SENT chunks per "
        "CPU-second of the delivery process; others: the rest of the machine. RSS: the delivery process "
        "before the service started → its peak; emu RSS: the emulator's peak, its recordings included. late: "
        "how late the load generator submitted. streams: stream connections the emulator accepted (one per "
        "contact unless streams were reopened). faults: chunks SENT but missing at Cresta, cut short or out "
        "of order, plus protocol violations."
    )
    for r in results:
        if r.lost or r.incomplete or r.reordered or r.violations:
            print(
                f"{r.contacts} contacts: {r.lost} SENT chunks lost, {r.incomplete} cut short, "
                f"{r.reordered} out of order, {r.violations} protocol violations",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.delivery",
        description="\n\n".join(part for i, part in enumerate(__doc__.split("\n\n")) if i != 1),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each run starts a fresh emulator process and a fresh delivery process. Progress goes to "
        "stderr; the table to stdout.",
    )
    parser.add_argument("--contacts", type=_counts, default=[50, 100, 200],
                        help="concurrent contacts per run, comma-separated (default 50,100,200)")
    parser.add_argument("--seconds", type=int, default=20,
                        help="audio per contact, in seconds: 10 chunks per track per second (default 20)")
    parser.add_argument("--warmup-seconds", type=int, default=3,
                        help="first seconds of each contact left out of the figures (default 3)")
    parser.add_argument("--protocol", choices=["media_streams", "l16"], default="media_streams",
                        help="the cresta.protocol the service is built with (default media_streams)")
    args = parser.parse_args(argv)
    if args.seconds <= args.warmup_seconds + 1:
        parser.error("--seconds must exceed --warmup-seconds by more than 1")
    if args.seconds * 1000 // CHUNK_MS > MAX_CHUNKS:
        parser.error(f"--seconds must be at most {MAX_CHUNKS * CHUNK_MS // 1000} (chunk numbers are tagged in audio)")

    results = []
    for count in args.contacts:
        print(f"running {count} contacts for {args.seconds} s…", file=sys.stderr, flush=True)
        results.append(run_once(count, args.seconds, args.warmup_seconds, args.protocol))
    print(
        f"{args.seconds} s per contact, {CHUNK_MS} ms chunks on 2 tracks, protocol {args.protocol}; "
        f"{os.cpu_count()} cores; load average at the end {os.getloadavg()[0]:.2f}"
    )
    _print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
