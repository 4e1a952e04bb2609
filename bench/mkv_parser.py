"""Benchmark: the streaming MKV parser against ebmlite on a long Connect call.

    python -m bench.mkv_parser [--minutes 10] [--repeat 5]

The input is what GetMedia returns for one call: two 8 kHz PCM16 tracks in Connect's
layout (``write_connect_fragment``), one fragment per second, with the fragment tags
KVS adds. ``MkvStreamParser`` gets it the way the connector does, in 1 KiB chunks
(botocore's StreamingBody default); ebmlite, which needs the whole, seekable document,
gets all of it at once and every element is read, so both really parse every byte.
That setting favours ebmlite: it sees no chunk boundaries and does not decode block
headers. CPU time is ``time.process_time`` (one core), best of ``--repeat`` runs. Peak
memory is what ``tracemalloc`` sees the parser allocate, in a separate run because
tracing slows both down; the input is not part of it, so the table also shows how much
of the input each parser needs in memory at once (one chunk, or the whole response).

Not a test: it prints figures and asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import ebmlite
from ebmlite.core import Document, MasterElement

from emulators.connect.simulator import EMULATED_INSTANCE_ID
from pipeline.connect_stream import TAG_FRAGMENT_NUMBER
from pipeline.kvs_fragments import TAG_PRODUCER_TIMESTAMP, TAG_SERVER_TIMESTAMP
from pipeline.mkv import Frame, MkvStreamParser, write_connect_fragment

CHUNK_BYTES: Final = 1024
SAMPLE_RATE: Final = 8000
FRAGMENT_SECONDS: Final = 1
BYTES_PER_SAMPLE: Final = 2
CALL_START_MS: Final = 1_726_677_688_724
#: The first fragment number of a real capture; later ones only need to grow.
FIRST_FRAGMENT_NUMBER: Final = 91343852333181432392682062607743920146264440000
SIMPLE_BLOCK_NAME: Final = "SimpleBlock"


@dataclass(frozen=True)
class Measurement:
    name: str
    input_held_bytes: int
    cpu_seconds: float
    peak_memory_bytes: int
    frames: int


def connect_call(minutes: float, seed: int = 1) -> bytes:
    """A GetMedia response of a ``minutes``-long Connect call, noise on both tracks."""
    rng = random.Random(seed)
    fragment_bytes = SAMPLE_RATE * FRAGMENT_SECONDS * BYTES_PER_SAMPLE
    fragments = []
    for index in range(round(minutes * 60 / FRAGMENT_SECONDS)):
        timecode_ms = CALL_START_MS + index * FRAGMENT_SECONDS * 1000
        timestamp = f"{timecode_ms // 1000}.{timecode_ms % 1000:03d}"
        fragments.append(
            write_connect_fragment(
                contact_id="d111f871-5fe7-40b1-b5f7-6b67060de0c2",
                instance_id=EMULATED_INSTANCE_ID,
                timecode_ms=timecode_ms,
                customer_pcm=rng.randbytes(fragment_bytes),
                agent_pcm=rng.randbytes(fragment_bytes),
                extra_tags_before_cluster=[
                    [
                        (TAG_FRAGMENT_NUMBER, str(FIRST_FRAGMENT_NUMBER + index)),
                        (TAG_SERVER_TIMESTAMP, timestamp),
                        (TAG_PRODUCER_TIMESTAMP, timestamp),
                    ]
                ],
            )
        )
    return b"".join(fragments)


def parse_streaming(data: bytes) -> int:
    """Frames read by ``MkvStreamParser`` fed ``data`` in GetMedia-sized chunks."""
    parser = MkvStreamParser()
    feed = parser.feed
    frames = 0
    # A plain loop rather than sum() over a generator per chunk, whose setup would be
    # timed as if it were parsing: every event is still looked at.
    for offset in range(0, len(data), CHUNK_BYTES):
        for event in feed(data[offset : offset + CHUNK_BYTES]):
            if isinstance(event, Frame):
                frames += 1
    return frames + sum(isinstance(event, Frame) for event in parser.close())


def parse_ebmlite(data: bytes, schema: Any) -> int:
    """SimpleBlocks found by ebmlite, after reading the value of every element."""
    return _walk(schema.loads(data))


def _walk(parent: Document | MasterElement) -> int:
    blocks = 0
    for element in parent:
        if isinstance(element, MasterElement):
            blocks += _walk(element)
        else:
            # ebmlite reads values lazily; asking for it makes it read the bytes.
            element.value
            blocks += element.name == SIMPLE_BLOCK_NAME
    return blocks


def measure(parsers: dict[str, tuple[int, Callable[[], int]]], repeat: int) -> list[Measurement]:
    """Time each parser ``repeat`` times, taking turns so that a burst of load on the
    machine does not fall on one parser only; then trace each parser's memory once."""
    best = {name: float("inf") for name in parsers}
    frames = {}
    for _ in range(repeat):
        for name, (_, parse) in parsers.items():
            started = time.process_time()
            frames[name] = parse()
            best[name] = min(best[name], time.process_time() - started)
    results = []
    for name, (input_held_bytes, parse) in parsers.items():
        tracemalloc.start()
        try:
            parse()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        results.append(Measurement(name, input_held_bytes, best[name], peak, frames[name]))
    return results


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1024:.0f} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mkv_parser", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the call (default 10)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per parser; the best counts (default 5)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.repeat < 1:
        parser.error("--minutes must be positive and --repeat at least 1")

    data = connect_call(args.minutes)
    audio_seconds = args.minutes * 60
    schema = ebmlite.loadSchema("matroska.xml")
    results = measure(
        {
            f"MkvStreamParser, {CHUNK_BYTES} B chunks": (CHUNK_BYTES, lambda: parse_streaming(data)),
            "ebmlite, whole document": (len(data), lambda: parse_ebmlite(data, schema)),
        },
        args.repeat,
    )
    if len({result.frames for result in results}) != 1:
        print(f"the parsers disagree on the number of frames: {results}", file=sys.stderr)
        return 1

    streaming, reference = results
    print(
        f"{args.minutes:g} min Connect call, 2 tracks of {SAMPLE_RATE} Hz PCM16: {len(data) / 1e6:.1f} MB, "
        f"{streaming.frames} frames; CPU time best of {args.repeat}"
    )
    print(f"{'parser':<32}{'CPU s':>7}{'MB/s':>7}{'real-time factor':>18}{'peak memory':>13}{'input held':>12}")
    for result in results:
        print(
            f"{result.name:<32}{result.cpu_seconds:>7.3f}{len(data) / 1e6 / result.cpu_seconds:>7.1f}"
            f"{audio_seconds / result.cpu_seconds:>17.0f}x{result.peak_memory_bytes / 1024:>9.1f} KiB"
            f"{_size(result.input_held_bytes):>12}"
        )
    print(f"MkvStreamParser / ebmlite: {reference.cpu_seconds / streaming.cpu_seconds:.2f}x the throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
