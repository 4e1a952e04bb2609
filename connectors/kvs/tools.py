"""`cresta-pipeline kvs inspect` / `kvs dump`: look into KVS media as the connector reads it.

Both commands read one GetMedia response — a saved file, stdin, or a live GetMedia call
through boto3 — through the connector's own parser and Connect rules
(``pipeline.kvs_fragments``), so what they show is what the connector would see.
A response that breaks off or is corrupt still shows everything read before the fault,
then the fault on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Final

import boto3

from connectors.kvs.media import KvsMediaSource, MediaSourceError
from pipeline.audio import write_wav_pcm16
from pipeline.config import ConfigError, add_setting_flags, flag_overrides, load_config
from pipeline.kvs_fragments import (
    ContactAudio,
    ContactAudioCollector,
    FragmentSummariser,
    FragmentSummary,
    describe_kvs_error,
)
from pipeline.mkv import MkvError, MkvEvent, MkvStreamParser, TrackEntry

PROG: Final = "cresta-pipeline kvs"
#: Read size for files and stdin; GetMedia bodies come in the media source's own chunks.
FILE_CHUNK_BYTES: Final = 64 * 1024
#: A ContactId becomes a folder name: Connect's are UUIDs, and anything that could
#: climb out of --out ("..", "/") is refused.
_SAFE_FOLDER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FRAGMENT_NUMBER_WIDTH: Final = 48
PCM16_BYTES_PER_SAMPLE: Final = 2

EXAMPLES: Final = """\
examples:
  cresta-pipeline kvs inspect getmedia.mkv       # a response saved by `aws kinesis-video-media get-media`
  cresta-pipeline kvs inspect - --json < getmedia.mkv
  cresta-pipeline kvs inspect --stream-arn ARN --start-fragment 91343852333181432392682062607743920146264440000
  cresta-pipeline kvs dump getmedia.mkv --out calls   # calls/<ContactId>/customer.wav, agent.wav
"""


class SourceError(Exception):
    """The input could not be opened or read."""


def main(argv: list[str] | None = None) -> int:
    parser = _argument_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if (args.source is None) == (args.stream_arn is None):
        args.command_parser.error("give one SOURCE: a file, - for stdin, or --stream-arn ARN")
    if args.start_fragment is not None and args.stream_arn is None:
        args.command_parser.error("--start-fragment needs --stream-arn")
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


#: Flags of a live read and the settings they override (the connector's, by default).
_LIVE_FLAGS = {
    "--endpoint-url": "aws.endpoint_url",
    "--region": "aws.region",
    "--kvs-media-endpoint": "connector.kvs_media_endpoint",
}


def _argument_parser() -> argparse.ArgumentParser:
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "source", nargs="?", metavar="SOURCE",
        help="a saved GetMedia response (MKV), or - to read one from stdin",
    )
    live = source.add_argument_group("live stream (instead of SOURCE)")
    live.add_argument("--stream-arn", metavar="ARN", help="call GetMedia on this KVS stream; "
                      "reading ends when the response ends (about 3 s after the newest fragment)")
    live.add_argument("--start-fragment", metavar="N", help="start with the fragment AFTER fragment "
                      "number N (StartSelector FRAGMENT_NUMBER); default: the oldest fragment (EARLIEST)")
    add_setting_flags(live, _LIVE_FLAGS)

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look into Kinesis Video Streams media as the connector reads it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect", parents=[source], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="one line per fragment: number, timestamps, frames per track, ContactId",
        description="List the tracks and, per fragment, the fragment number, producer and server "
                    "timestamps, frames per track and ContactId.",
    )
    inspect.add_argument("--json", action="store_true", help='print one JSON object: {"tracks": [...], '
                         '"fragments": [{"fragment_number", "producer_timestamp_ms", '
                         '"server_timestamp_ms", "tags", "frames"}]}')
    inspect.set_defaults(run=_inspect, command_parser=inspect)
    dump = commands.add_parser(
        "dump", parents=[source], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="write each contact's audio as DIR/<ContactId>/customer.wav and agent.wav",
        description="Write each contact's audio, exactly as the connector would publish it, as "
                    "DIR/<ContactId>/customer.wav (AUDIO_FROM_CUSTOMER) and agent.wav "
                    "(AUDIO_TO_CUSTOMER): 16-bit mono PCM at the rate of the MimeType tag.",
    )
    dump.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    dump.set_defaults(run=_dump, command_parser=dump)
    return parser


# -- input ---------------------------------------------------------------------------------


def _chunks(args: argparse.Namespace) -> Iterator[bytes]:
    if args.stream_arn is not None:
        return _get_media(args)
    if args.source == "-":
        return _read(sys.stdin.buffer, "stdin")
    return _read_file(args.source)


def _read(stream: BinaryIO, name: str) -> Iterator[bytes]:
    try:
        while chunk := stream.read(FILE_CHUNK_BYTES):
            yield chunk
    except OSError as exc:
        raise SourceError(f"cannot read {name}: {exc.strerror}") from None


def _read_file(path: str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as stream:
            yield from _read(stream, path)
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from None


def _get_media(args: argparse.Namespace) -> Iterator[bytes]:
    try:
        config = load_config(overrides=flag_overrides(args, _LIVE_FLAGS))
    except ConfigError as exc:
        raise SourceError(str(exc)) from None
    session = boto3.session.Session(region_name=config["aws.region"])
    source = KvsMediaSource(
        session.client("kinesisvideo", endpoint_url=config["aws.endpoint_url"] or None),
        media_endpoint_override=config["connector.kvs_media_endpoint"] or None,
        session=session,
    )
    selector: dict[str, Any] = (
        {"StartSelectorType": "EARLIEST"}
        if args.start_fragment is None
        else {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": args.start_fragment}
    )
    return source.open(args.stream_arn, selector)


def _read_events(args: argparse.Namespace, consume: Callable[[list[MkvEvent]], None]) -> str | None:
    """Parse the input into ``consume``; the reason reading stopped early, if it did."""
    parser = MkvStreamParser()
    try:
        for chunk in _chunks(args):
            consume(parser.feed(chunk))
        consume(parser.close())
    except MkvError as exc:
        return f"the input is not a readable KVS stream: {exc}"
    except MediaSourceError as exc:
        return f"GetMedia failed: {exc}"
    except SourceError as exc:
        return str(exc)
    return None


def _report_problems(problems: list[str]) -> int:
    for problem in problems:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


# -- inspect -------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    summariser = FragmentSummariser()
    fragments: list[FragmentSummary] = []

    def take(completed: list[FragmentSummary]) -> None:
        for fragment in completed:
            fragments.append(fragment)
            # A live stream is followed line by line; JSON is one document at the end.
            if not args.json:
                if len(fragments) == 1:
                    print(_table_row("fragment", "producer time (UTC)", "server time (UTC)", "frames", "ContactId"))
                print(_fragment_row(fragment), flush=True)

    failure = _read_events(args, lambda events: take(summariser.feed(events)))
    take(summariser.close())
    if args.json:
        print(json.dumps(_inspect_document(summariser.tracks, fragments), indent=2))
    else:
        print(f"tracks: {_describe_tracks(summariser.tracks)}")
    problems = [describe_kvs_error(fragment.kvs_error) for fragment in fragments if fragment.kvs_error]
    return _report_problems([*problems, *([failure] if failure else [])])


def _inspect_document(tracks: list[TrackEntry], fragments: list[FragmentSummary]) -> dict[str, Any]:
    return {
        "tracks": [{"number": t.number, "name": t.name, "codec_id": t.codec_id} for t in tracks],
        "fragments": [
            {
                "fragment_number": fragment.fragment_number,
                "producer_timestamp_ms": fragment.producer_timestamp_ms,
                "server_timestamp_ms": fragment.server_timestamp_ms,
                "tags": fragment.tags,
                "frames": fragment.frames,
            }
            for fragment in fragments
        ],
    }


def _fragment_row(fragment: FragmentSummary) -> str:
    frames = " ".join(f"{label}={count}" for label, count in fragment.frames.items())
    return _table_row(
        fragment.fragment_number or "-",
        _utc(fragment.producer_timestamp_ms),
        _utc(fragment.server_timestamp_ms),
        frames or "-",
        fragment.contact_id or "-",
    )


def _table_row(number: str, producer: str, server: str, frames: str, contact: str) -> str:
    return f"{number:<{_FRAGMENT_NUMBER_WIDTH}}  {producer:<23}  {server:<23}  {frames:<44}  {contact}"


def _utc(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "-"
    seconds, millis = divmod(epoch_ms, 1000)
    try:
        moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        # A tag can claim any number; show it rather than fail on it.
        return f"{epoch_ms} ms"
    return f"{moment:%Y-%m-%d %H:%M:%S}.{millis:03d}"


def _describe_tracks(tracks: list[TrackEntry]) -> str:
    return ", ".join(f"{t.number} {t.name or '(no name)'} ({t.codec_id})" for t in tracks) or "none"


# -- dump ----------------------------------------------------------------------------------


def _dump(args: argparse.Namespace) -> int:
    collector = ContactAudioCollector()
    failure = _read_events(args, collector.feed)
    collector.close()
    problems = [*collector.problems, *([failure] if failure else [])]
    for audio in collector.contacts.values():
        if _SAFE_FOLDER_NAME.fullmatch(audio.contact_id) is None:
            problems.append(f"ContactId {audio.contact_id!r} cannot be a folder name; its audio was not written")
            continue
        try:
            _write_contact(args.out, audio)
        except OSError as exc:
            problems.append(f"cannot write {audio.contact_id}'s audio under {args.out}: {exc.strerror}")
    if not collector.contacts:
        print("no contact audio in the input")
    if collector.frames_without_contact:
        print(f"skipped {collector.frames_without_contact} frames of fragments without a ContactId tag")
    for name, count in collector.unknown_track_frames.items():
        print(f"skipped {count} frames of track {name!r}, which is not a Connect audio track")
    return _report_problems(problems)


def _write_contact(out: Path, audio: ContactAudio) -> None:
    folder = out / audio.contact_id
    folder.mkdir(parents=True, exist_ok=True)
    for track, pcm in audio.pcm.items():
        path = folder / f"{track.label}.wav"
        write_wav_pcm16(path, bytes(pcm), audio.sample_rate)
        seconds = len(pcm) / (PCM16_BYTES_PER_SAMPLE * audio.sample_rate)
        print(f"{path}  {seconds:.3f} s  ({len(pcm)} bytes of PCM at {audio.sample_rate} Hz)")


if __name__ == "__main__":
    sys.exit(main())
