"""A local stand-in for the Kinesis Video Streams media data plane (PutMedia + GetMedia).

moto implements the KVS control plane (CreateStream, DescribeStream, GetDataEndpoint)
but not the media APIs, so the local stack and the tests run this emulator next to
moto. Point a ``kinesis-video-media`` boto3 client at ``endpoint_url`` and call
``get_media`` exactly as against AWS.

What the emulator follows, and where it comes from
---------------------------------------------------
GetMedia API reference (docs.aws.amazon.com/kinesisvideostreams/latest/dg/
API_dataplane_GetMedia.html and API_dataplane_StartSelector.html; the same text is in
botocore's ``kinesis-video-media`` service model):

- ``POST /getMedia`` with a JSON body ``{"StreamARN" | "StreamName", "StartSelector":
  {"StartSelectorType", "AfterFragmentNumber", "StartTimestamp", "ContinuationToken"}}``;
  the answer is ``200`` with the media as a long-running HTTP chunked body; its
  ``Content-Type`` header is the stream's media type.
- ``FRAGMENT_NUMBER`` — "Start with the chunk **after** a specific fragment. You must
  also specify the AfterFragmentNumber parameter." (StartSelectorType). The
  ``AfterFragmentNumber`` member says instead "the fragment number from where you want
  the GetMedia API to start returning the fragments"; the two texts disagree. This
  emulator follows the selector-type text and the field reports that readers starting
  at Connect's StartFragmentNumber miss the start of the audio
  (aws/amazon-kinesis-video-streams-parser-library#199,
  amazon-connect/amazon-connect-realtime-transcription#58): the named fragment itself is
  **not** returned. An unknown fragment number yields the in-stream error 4000.
- ``PRODUCER_TIMESTAMP`` / ``SERVER_TIMESTAMP`` — "Start with the chunk containing a
  fragment with the specified producer or server timestamp" (``StartTimestamp``, epoch
  seconds). Here, for producer time: the first fragment whose last frame is at or after
  the timestamp, i.e. the fragment containing it or, in a gap, the next one; for server
  time (an arrival instant, not a span): the first fragment received at or after it.
- ``NOW`` — "Start with the latest chunk on the stream": the newest stored fragment,
  then live ones. ``EARLIEST`` — the oldest stored fragment.
- ``CONTINUATION_TOKEN`` — the ``AWS_KINESISVIDEO_CONTINUATION_TOKEN`` tag of a fragment
  lets a new request "get the next chunk where the last request terminated" (GetMedia
  Payload). The token is that fragment's number; resuming returns the fragments after it.
- Tags added to each fragment: ``AWS_KINESISVIDEO_FRAGMENT_NUMBER``,
  ``_SERVER_TIMESTAMP``, ``_PRODUCER_TIMESTAMP`` before the Cluster (epoch seconds with
  millisecond precision), ``_MILLIS_BEHIND_NOW`` and ``_CONTINUATION_TOKEN`` at the end;
  errors as ``AWS_KINESISVIDEO_ERROR_CODE`` / ``AWS_KINESISVIDEO_ERROR_ID`` (4000 =
  "Requested fragment is not found"). Layout as captured from a real Connect stream in
  ``reference/amazon-connect-kvs.md``.
- "reading the HTTP response payload will time out after 3 seconds if there are no
  ingested fragments available" → the body ends after ``idle_timeout_s`` without a new
  fragment; sessions end silently after about 45 minutes → ``session_limit_s``.
- "If you try more than three concurrent GetMedia connections, Kinesis Video Streams
  throttles the newest connections with ConnectionLimitExceededException."
- A dropped connection (fault injection, ``cut_next_get_media``): the body stops in the
  middle of a fragment without its final chunk, so the reader sees a broken response, not
  a clean end; the continuation token of the last whole fragment resumes it.
- Errors (service model): ``ResourceNotFoundException`` 404, ``NotAuthorizedException``
  401, ``InvalidArgumentException`` / ``ConnectionLimitExceededException`` /
  ``ClientLimitExceededException`` 400, sent restJson-style: status, an
  ``x-amzn-ErrorType`` header and a JSON ``{"message": …}`` body.

The signature of a GetMedia request is checked for shape only (SigV4 ``Authorization``
and ``X-Amz-Date`` present): the point is that callers sign, through boto3.

``POST /putMedia`` takes one or more complete MKV fragments as a Connect producer writes
them (stream named by ``x-amzn-stream-arn`` or ``x-amzn-stream-name``), parses them
strictly, stores them and answers one ``PERSISTED`` JSON line per fragment, as PutMedia
acknowledgements look. Any stream ARN is accepted there; the caller creates streams in
moto's control plane. A real producer streams a whole session in one long-running
PutMedia request; here each request holds whole fragments, and a producer that writes
one fragment at a time keeps its connection open (HTTP/1.1 keep-alive) between them.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipeline.mkv import (
    BlockSpec,
    ClusterStart,
    EbmlHeader,
    Frame,
    MkvError,
    MkvStreamParser,
    SegmentInfo,
    Tag,
    TrackEntry,
    TrackSpec,
    write_fragment,
)

log = logging.getLogger(__name__)

TAG_FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_SERVER_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
TAG_PRODUCER_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
TAG_MILLIS_BEHIND_NOW = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"
TAG_CONTINUATION_TOKEN = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"
TAG_ERROR_CODE = "AWS_KINESISVIDEO_ERROR_CODE"
TAG_ERROR_ID = "AWS_KINESISVIDEO_ERROR_ID"

ERROR_FRAGMENT_NOT_FOUND = ("FRAGMENT_NOT_FOUND", "4000")

SELECTOR_TYPES = (
    "FRAGMENT_NUMBER",
    "SERVER_TIMESTAMP",
    "PRODUCER_TIMESTAMP",
    "NOW",
    "EARLIEST",
    "CONTINUATION_TOKEN",
)

#: Real fragment numbers are decimal strings of 47–48 digits that grow with time.
_FRAGMENT_NUMBER_BASE = 91343852333181432392682062607743920146264440000
_FRAGMENT_NUMBER_STEP = 4_951_760_157_141_521_099

#: PutMedia bodies are parsed in memory; KVS caps a fragment at 50 MB.
MAX_PUT_MEDIA_BYTES = 50 * 1024 * 1024
#: The largest GetMedia HTTP chunk in a public capture of KVS (reference/amazon-connect-kvs.md).
MAX_HTTP_CHUNK_BYTES = 16384
#: The API reference's pattern for fragment numbers (1–128 digits).
_FRAGMENT_NUMBER_PATTERN = re.compile(r"^[0-9]{1,128}$")
_ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.kinesis.video.v20170930/"
_SIGV4_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=\S+, SignedHeaders=\S+, Signature=[0-9a-f]+$"
)


@dataclass(frozen=True)
class StoredFragment:
    """A fragment as ingested, in the structure GetMedia re-serialises."""

    number: str
    server_timestamp_ms: int
    producer_timestamp_ms: int
    cluster_timecode: int
    timecode_scale: int
    title: str
    tracks: tuple[TrackSpec, ...]
    blocks: tuple[BlockSpec, ...]
    tags_before_cluster: tuple[tuple[str, str], ...]
    tags_after_cluster: tuple[tuple[str, str], ...]
    last_frame_timestamp_ms: int


class ApiError(Exception):
    """An error answered restJson-style."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


class _ConnectionCut(Exception):
    """A GetMedia response is to be dropped here (fault injection)."""


class _StreamLog:
    def __init__(self, name: str, lock: threading.Lock) -> None:
        self.name = name
        self.fragments: list[StoredFragment] = []
        #: This stream's GetMedia sessions wait here, so that a put wakes them only, not
        #: every session of every stream.
        self.changed = threading.Condition(lock)
        self.active_readers = 0
        #: For each GetMedia connection to be cut: whole fragments it sends first.
        self.cuts: deque[int] = deque()


class KvsMediaEmulator:
    """KVS PutMedia/GetMedia over real HTTP, in a background thread.

    Parameters
    ----------
    idle_timeout_s:
        A GetMedia body ends when no new fragment arrived for this long (KVS: ~3 s).
    session_limit_s:
        A GetMedia body ends after this long whatever happens (KVS: ~45 min).
    max_connections_per_stream:
        Concurrent GetMedia connections allowed per stream (KVS: 3).
    seed:
        Seeds the random HTTP chunk sizes, for reproducible runs.
    random_chunks:
        Cut GetMedia bodies into HTTP chunks of random sizes, from 1 byte (splitting
        element headers) to 16 KiB, the range seen from KVS. False sends each fragment
        as soon as it is stored, in chunks of at most 16 KiB, as KVS does for a reader
        that has caught up: far cheaper for the emulator, for load runs
        (``bench.connector``) rather than parser tests.
    unknown_size_clusters:
        Write Clusters with unknown size, as some KVS producers do.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout_s: float = 3.0,
        session_limit_s: float = 2700.0,
        max_connections_per_stream: int = 3,
        *,
        seed: int | None = None,
        random_chunks: bool = True,
        unknown_size_clusters: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.idle_timeout_s = idle_timeout_s
        self.session_limit_s = session_limit_s
        self.max_connections_per_stream = max_connections_per_stream
        self.random_chunks = random_chunks
        self.unknown_size_clusters = unknown_size_clusters
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._streams: dict[str, _StreamLog] = {}
        self._sequence = 0
        self._stopping = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "KvsMediaEmulator":
        server = _Server((self.host, self.port), _Handler)
        server.daemon_threads = True
        server.emulator = self  # type: ignore[attr-defined]
        self._server = server
        self.port = server.server_address[1]
        # A short poll interval makes stop() quick; shutdown() waits for the next poll.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="kvs-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            for stream_log in self._streams.values():
                stream_log.changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "KvsMediaEmulator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- stores ------------------------------------------------------------------------

    def create_stream(self, stream: str) -> None:
        """Make a stream known before anything is put on it (GetMedia then waits)."""
        with self._lock:
            self._find_stream(stream, create=True)

    def fragments(self, stream: str) -> list[StoredFragment]:
        with self._lock:
            stream_log = self._find_stream(stream, create=False)
            return list(stream_log.fragments) if stream_log else []

    def cut_next_get_media(self, stream: str, after_fragments: int = 0) -> None:
        """Drop the next GetMedia connection to ``stream`` halfway through the fragment
        after its first ``after_fragments`` whole ones (waiting for that fragment if it is
        not stored yet). Each call cuts one more connection."""
        with self._lock:
            self._find_stream(stream, create=True).cuts.append(after_fragments)

    def put_media(self, stream: str, body: bytes) -> list[StoredFragment]:
        """Parse, validate and store the fragments of one PutMedia body."""
        parsed = _parse_fragments(body)
        now_ms = int(time.time() * 1000)
        stored = []
        with self._lock:
            stream_log = self._find_stream(stream, create=True)
            for fragment in parsed:
                self._sequence += 1
                number = str(_FRAGMENT_NUMBER_BASE + self._sequence * _FRAGMENT_NUMBER_STEP)
                stored_fragment = StoredFragment(number=number, server_timestamp_ms=now_ms, **fragment)
                stream_log.fragments.append(stored_fragment)
                stored.append(stored_fragment)
            stream_log.changed.notify_all()
        return stored

    def _find_stream(self, stream: str, *, create: bool) -> _StreamLog | None:
        name = stream_name_of(stream)
        stream_log = self._streams.get(name)
        if stream_log is None and create:
            stream_log = self._streams[name] = _StreamLog(name, self._lock)
        return stream_log

    # -- GetMedia ----------------------------------------------------------------------

    def open_session(self, request: dict) -> "_GetMediaSession":
        """Validate a GetMedia request and take a connection slot (raises ``ApiError``)."""
        if not isinstance(request, dict):
            raise ApiError(400, "InvalidArgumentException", "request body must be a JSON object")
        stream = request.get("StreamARN") or request.get("StreamName")
        if not isinstance(stream, str) or not stream:
            raise ApiError(400, "InvalidArgumentException", "StreamARN or StreamName is required")
        selector = request.get("StartSelector")
        if not isinstance(selector, dict):
            raise ApiError(400, "InvalidArgumentException", "StartSelector is required")
        with self._lock:
            stream_log = self._find_stream(stream, create=False)
            if stream_log is None:
                raise ApiError(404, "ResourceNotFoundException", f"stream {stream} not found")
            start = self._resolve_selector(stream_log, selector)
            if stream_log.active_readers >= self.max_connections_per_stream:
                raise ApiError(
                    400,
                    "ConnectionLimitExceededException",
                    f"stream {stream_log.name} already has {stream_log.active_readers} GetMedia connections",
                )
            stream_log.active_readers += 1
            cut_after = stream_log.cuts.popleft() if stream_log.cuts else None
            # A generator per session, seeded from the emulator's: sessions do not take
            # the lock for every chunk, and a seeded run stays reproducible.
            chunk_seed = self._random.getrandbits(64)
        chunk_sizes = _random_chunk_sizes(random.Random(chunk_seed)) if self.random_chunks else None
        return _GetMediaSession(self, stream_log, start, cut_after, chunk_sizes)

    def _resolve_selector(self, stream_log: _StreamLog, selector: dict) -> int | tuple[str, str]:
        """Index of the first fragment to send, or an in-stream error (code, id)."""
        selector_type = selector.get("StartSelectorType")
        if selector_type not in SELECTOR_TYPES:
            raise ApiError(400, "InvalidArgumentException", f"unknown StartSelectorType {selector_type!r}")
        fragments = stream_log.fragments
        if selector_type == "EARLIEST":
            return 0
        if selector_type == "NOW":
            return max(len(fragments) - 1, 0)
        if selector_type in ("FRAGMENT_NUMBER", "CONTINUATION_TOKEN"):
            field_name = "AfterFragmentNumber" if selector_type == "FRAGMENT_NUMBER" else "ContinuationToken"
            number = selector.get(field_name)
            if not isinstance(number, str) or not _FRAGMENT_NUMBER_PATTERN.match(number):
                raise ApiError(
                    400, "InvalidArgumentException", f"{selector_type} needs {field_name} of 1-128 digits"
                )
            for index, fragment in enumerate(fragments):
                if fragment.number == number:
                    return index + 1
            return ERROR_FRAGMENT_NOT_FOUND
        timestamp = selector.get("StartTimestamp")
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            raise ApiError(400, "InvalidArgumentException", f"{selector_type} needs StartTimestamp")
        start_ms = round(timestamp * 1000)
        for index, fragment in enumerate(fragments):
            if selector_type == "SERVER_TIMESTAMP":
                if fragment.server_timestamp_ms >= start_ms:
                    return index
            elif fragment.last_frame_timestamp_ms >= start_ms:
                return index
        return len(fragments)

    def _release(self, stream_log: _StreamLog) -> None:
        with self._lock:
            stream_log.active_readers -= 1


def _random_chunk_sizes(rng: random.Random) -> Iterator[int]:
    # Tiny chunks split element headers; large ones are what KVS sends when caught up.
    while True:
        band = rng.random()
        if band < 0.3:
            yield rng.randint(1, 16)
        elif band < 0.8:
            yield rng.randint(17, 2048)
        else:
            yield rng.randint(2049, MAX_HTTP_CHUNK_BYTES)


class _GetMediaSession:
    """One GetMedia response: sends stored fragments, then live ones, until idle."""

    def __init__(
        self,
        emulator: KvsMediaEmulator,
        stream_log: _StreamLog,
        start: int | tuple[str, str],
        cut_after: int | None = None,
        chunk_sizes: Iterator[int] | None = None,
    ) -> None:
        self._emulator = emulator
        self._stream_log = stream_log
        self._start = start
        self._cut_after = cut_after
        #: None: each fragment whole, in chunks of at most ``MAX_HTTP_CHUNK_BYTES``.
        self._chunk_sizes = chunk_sizes
        self._closed = False

    def close(self) -> None:
        """Give the connection slot back (once)."""
        if not self._closed:
            self._closed = True
            self._emulator._release(self._stream_log)

    def body(self) -> Iterator[bytes]:
        """The response body in chunked transfer encoding, one write per fragment: its
        HTTP chunks framed together (a write per chunk cost a system call each)."""
        for payload in self._payloads():
            framed = []
            offset = 0
            while offset < len(payload):
                size = next(self._chunk_sizes) if self._chunk_sizes is not None else MAX_HTTP_CHUNK_BYTES
                chunk = payload[offset : offset + size]
                framed.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                offset += size
            yield b"".join(framed)

    def _payloads(self) -> Iterator[bytes]:
        if isinstance(self._start, tuple):
            yield _error_fragment(*self._start)
            return
        emulator = self._emulator
        index = self._start
        began = time.monotonic()
        last_sent = began
        while True:
            with emulator._lock:
                while index >= len(self._stream_log.fragments) and not emulator._stopping:
                    now = time.monotonic()
                    remaining = min(
                        last_sent + emulator.idle_timeout_s - now, began + emulator.session_limit_s - now
                    )
                    if remaining <= 0:
                        break
                    self._stream_log.changed.wait(remaining)
                batch = self._stream_log.fragments[index:]
                stopping = emulator._stopping
            if stopping or not batch:
                return
            for fragment in batch:
                if time.monotonic() - began > emulator.session_limit_s:
                    return
                payload = _serialize(fragment, emulator.unknown_size_clusters)
                if self._cut_after is not None and index - self._start == self._cut_after:
                    yield payload[: len(payload) // 2]
                    raise _ConnectionCut()
                yield payload
                index += 1
                last_sent = time.monotonic()


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: hundreds of producers and readers connecting
    # at once overflowed it, and the dropped connections waited out SYN retransmits
    # (1 s, then 3 s) before KVS saw them.
    request_queue_size = 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "KvsMediaEmulator/1"

    @property
    def emulator(self) -> KvsMediaEmulator:
        return self.server.emulator  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        # Every request logs; formatting the line only to drop it cost every PutMedia.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)

    def do_POST(self) -> None:
        try:
            if self.path == "/getMedia":
                self.close_connection = True
                self._get_media()
            elif self.path == "/putMedia":
                self._put_media()
            else:
                raise ApiError(404, "UnknownOperationException", f"no operation at {self.path}")
        except ApiError as exc:
            # The request body may be left unread: nothing else can follow on this connection.
            self.close_connection = True
            self._send_error(exc)

    def _get_media(self) -> None:
        self._require_signature()
        body = self._read_body()
        try:
            request = json.loads(body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, "InvalidArgumentException", f"request body is not JSON: {exc}") from None
        session = self.emulator.open_session(request)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "video/webm")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            self.end_headers()
            for framed in session.body():
                self.wfile.write(framed)
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except _ConnectionCut:
            # No final chunk: the connection closes with the body unfinished.
            log.debug("GetMedia connection cut (fault injection)")
        except (BrokenPipeError, ConnectionResetError):
            log.debug("GetMedia reader went away")
        finally:
            session.close()

    def _put_media(self) -> None:
        stream = self.headers.get("x-amzn-stream-arn") or self.headers.get("x-amzn-stream-name")
        if not stream:
            raise ApiError(
                400, "InvalidArgumentException", "x-amzn-stream-arn or x-amzn-stream-name is required"
            )
        body = self._read_body()
        try:
            stored = self.emulator.put_media(stream, body)
        except MkvError as exc:
            raise ApiError(400, "InvalidArgumentException", f"malformed MKV: {exc}") from None
        except ValueError as exc:
            raise ApiError(400, "InvalidArgumentException", f"not a KVS fragment: {exc}") from None
        acks = b"".join(
            json.dumps(
                {
                    "EventType": "PERSISTED",
                    "FragmentNumber": fragment.number,
                    "FragmentTimecode": fragment.cluster_timecode,
                },
                separators=(",", ":"),
            ).encode()
            + b"\n"
            for fragment in stored
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(acks)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(acks)

    def _require_signature(self) -> None:
        authorization = self.headers.get("Authorization", "")
        if not _SIGV4_AUTHORIZATION.match(authorization) or not self.headers.get("X-Amz-Date"):
            raise ApiError(
                401, "NotAuthorizedException", "request is not signed with AWS Signature Version 4"
            )

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_PUT_MEDIA_BYTES:
            raise ApiError(400, "InvalidArgumentException", f"body of {length} bytes is too large")
        return self.rfile.read(length)

    def _read_chunked_body(self) -> bytes:
        parts = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ApiError(400, "InvalidArgumentException", "malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_PUT_MEDIA_BYTES:
                raise ApiError(400, "InvalidArgumentException", "body is too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send_error(self, error: ApiError) -> None:
        body = json.dumps({"message": error.message}).encode()
        self.send_response(error.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-ErrorType", error.error_type + _ERROR_TYPE_SUFFIX)
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def stream_name_of(stream: str) -> str:
    """``arn:aws:kinesisvideo:region:account:stream/NAME/creation-time`` → ``NAME``."""
    if stream.startswith("arn:"):
        resource = stream.split(":", 5)[-1]
        parts = resource.split("/")
        if len(parts) >= 2 and parts[0] == "stream":
            return parts[1]
    return stream


def _parse_fragments(body: bytes) -> list[dict]:
    """Split a PutMedia body into per-Cluster fragments (KVS keys fragments by Cluster)."""
    parser = MkvStreamParser()
    events = parser.feed(body) + parser.close()
    fragments: list[dict] = []
    timecode_scale = 1_000_000
    title = ""
    tracks: list[TrackSpec] = []
    tags_before: list[tuple[str, str]] = []
    current: dict | None = None

    def finish() -> None:
        if current is not None:
            frames: list[Frame] = current.pop("frames")
            cluster_timecode = current["cluster_timecode"]
            blocks = []
            for frame in frames:
                relative = frame.timecode - cluster_timecode
                if not -32768 <= relative <= 32767:
                    raise ValueError(f"frame at {frame.timecode} is outside its Cluster's 16-bit range")
                blocks.append(BlockSpec(frame.track_number, relative, frame.payload, frame.keyframe))
            current["blocks"] = tuple(blocks)
            current["tags_after_cluster"] = tuple(current["tags_after_cluster"])
            current["last_frame_timestamp_ms"] = _to_ms(
                max((frame.timecode for frame in frames), default=cluster_timecode), current["timecode_scale"]
            )
            fragments.append(current)

    for event in events:
        if isinstance(event, EbmlHeader):
            finish()
            current, tracks, tags_before = None, [], []
        elif isinstance(event, SegmentInfo):
            timecode_scale, title = event.timecode_scale, event.title
        elif isinstance(event, TrackEntry):
            tracks.append(TrackSpec(event.number, event.name, event.codec_id))
        elif isinstance(event, ClusterStart):
            finish()
            if not tracks:
                raise ValueError("a Cluster comes before any TrackEntry")
            current = {
                "cluster_timecode": event.timecode,
                "producer_timestamp_ms": _to_ms(event.timecode, timecode_scale),
                "timecode_scale": timecode_scale,
                "title": title,
                "tracks": tuple(tracks),
                "tags_before_cluster": tuple(tags_before),
                "tags_after_cluster": [],
                "frames": [],
            }
            tags_before = []
        elif isinstance(event, Frame):
            if current is None:
                raise ValueError("a frame outside a Cluster")
            if event.track_number not in {track.number for track in tracks}:
                raise ValueError(f"a frame of track {event.track_number}, which has no TrackEntry")
            current["frames"].append(event)
        elif isinstance(event, Tag):
            if current is None:
                tags_before.append((event.name, event.value))
            else:
                current["tags_after_cluster"].append((event.name, event.value))
    finish()
    if not fragments:
        raise ValueError("the body holds no Cluster")
    return fragments


def _serialize(fragment: StoredFragment, unknown_size_cluster: bool) -> bytes:
    now_ms = int(time.time() * 1000)
    return write_fragment(
        tracks=fragment.tracks,
        cluster_timecode=fragment.cluster_timecode,
        blocks=fragment.blocks,
        tags_before_cluster=(
            (
                (TAG_FRAGMENT_NUMBER, fragment.number),
                (TAG_SERVER_TIMESTAMP, _epoch_seconds(fragment.server_timestamp_ms)),
                (TAG_PRODUCER_TIMESTAMP, _epoch_seconds(fragment.producer_timestamp_ms)),
            ),
            *(((name, value),) for name, value in fragment.tags_before_cluster),
        ),
        # Connect writes each of its tags in a Tags element of its own.
        tags_after_cluster=(
            *(((name, value),) for name, value in fragment.tags_after_cluster),
            (
                (TAG_MILLIS_BEHIND_NOW, str(max(now_ms - fragment.server_timestamp_ms, 0))),
                (TAG_CONTINUATION_TOKEN, fragment.number),
            ),
        ),
        unknown_size_cluster=unknown_size_cluster,
        title=fragment.title,
        timecode_scale=fragment.timecode_scale,
    )


def _error_fragment(code: str, error_id: str) -> bytes:
    return write_fragment(
        tracks=(),
        cluster_timecode=0,
        blocks=(),
        tags_before_cluster=(((TAG_ERROR_CODE, code), (TAG_ERROR_ID, error_id)),),
    )


def _to_ms(timecode: int, timecode_scale: int) -> int:
    return timecode * timecode_scale // 1_000_000


def _epoch_seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"

