"""A local Cresta: the OAuth token endpoint and strict stream receivers, with injectable faults.

Two listeners, because the ``websockets`` server only accepts GET upgrade requests:

- ``auth_url``: a stdlib ``ThreadingHTTPServer`` serving ``POST /v1/oauth/regionalToken``
  the way Cresta's client expects it (HTTP Basic client credentials, JSON
  ``{"grant_type":"client_credentials"}``), answering 401/400/404/405 otherwise. Issued
  tokens expire after ``token_ttl_s`` on the emulator's clock.
- ``ws_url`` (Twilio Media Streams, path ``/``) and ``l16_url`` (the L16 protocol of
  ``pipeline.l16_stream``, path ``/l16``): a ``websockets`` asyncio server on its own
  thread and event loop. The upgrade needs ``Authorization: Bearer <token issued above
  and not expired>`` (else 401). Each connection is checked by one strict receiver;
  what it reads is recorded per call (``callSid``), a second stream for the same call
  (a reconnect) appends, and a CallId seen before is a violation (Cresta rejects it).

``faults`` (a ``CrestaFaults``) changes behaviour at runtime, from any thread: refuse
upgrades, cut each connection after N messages, stop reading (stall), read slowly,
answer token requests with 503 or 401, and an outage window (upgrades refused and open
streams closed) that ``--cresta-outage START:DURATION`` can drive through
``parse_outage``. ``set_client_credentials`` and ``revoke_tokens`` play a secret
rotation.

>>> emulator = CrestaEmulator(client_id="id", client_secret="secret", media_token="token")
>>> emulator.start()
>>> emulator.auth_url.startswith("http://127.0.0.1:"), emulator.l16_url.endswith("/l16")
(True, True)
>>> emulator.stop()
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from connectors.cresta.log_redaction import RedactingLogger
from pipeline.audio import write_wav_mulaw, write_wav_pcm16
from pipeline.l16_stream import MEDIA_FORMAT as L16_MEDIA_FORMAT
from pipeline.l16_stream import L16Receiver
from pipeline.media_streams import MEDIA_ENCODING, TWILIO_TRACKS, Media, MediaStreamsReceiver, Start, Stop

logger = logging.getLogger(__name__)

TOKEN_PATH = "/v1/oauth/regionalToken"
#: A token request body is a few dozen bytes; anything far larger is refused unread.
MAX_TOKEN_REQUEST_BYTES = 4096
WAV_NAMES = {"inbound": "customer.wav", "outbound": "agent.wav"}
MEDIA_STREAMS_PATH = "/"
L16_PATH = "/l16"
L16_ENCODING = L16_MEDIA_FORMAT["encoding"]
#: How often stalled readers and the outage watcher look at the faults again.
FAULT_POLL_S = 0.01
_SAFE_DIRECTORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class CallRecord:
    """What the emulator received for one call, over all of its streams."""

    call_sid: str
    custom_parameters: dict[str, str]
    tracks: dict[str, bytes]
    media_receive_times: dict[str, list[float]]
    violations: list[str]
    stopped: bool
    stream_sids: list[str] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)
    #: Per stream, the WebSocket extensions its connection negotiated (permessage-deflate).
    stream_extensions: list[tuple[str, ...]] = field(default_factory=list)
    #: ``audio/x-mulaw`` (tracks hold μ-law) or ``audio/L16`` (tracks hold PCM16LE).
    encoding: str = MEDIA_ENCODING


def _per_track(factory):
    return field(default_factory=lambda: {name: factory() for name in TWILIO_TRACKS})


@dataclass
class _StreamState:
    stream_sid: str
    call_id: str | None
    custom_parameters: dict[str, str]
    extensions: tuple[str, ...]
    tracks: dict[str, bytearray] = _per_track(bytearray)
    media_receive_times: dict[str, list[float]] = _per_track(list)
    stopped: bool = False


@dataclass
class _CallState:
    """A call's streams by connection number: a reconnect's stream may be read while the
    old one's backlog still is, so audio is joined per stream, in the order they connected."""

    call_sid: str
    encoding: str
    streams: dict[int, _StreamState] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def snapshot(self) -> CallRecord:
        streams = [self.streams[number] for number in sorted(self.streams)]
        return CallRecord(
            call_sid=self.call_sid,
            custom_parameters=dict(streams[-1].custom_parameters),
            tracks={name: b"".join(s.tracks[name] for s in streams) for name in TWILIO_TRACKS},
            media_receive_times={
                name: [t for s in streams for t in s.media_receive_times[name]] for name in TWILIO_TRACKS
            },
            violations=list(self.violations),
            stopped=streams[-1].stopped,
            stream_sids=[s.stream_sid for s in streams],
            call_ids=[s.call_id for s in streams if s.call_id is not None],
            stream_extensions=[s.extensions for s in streams],
            encoding=self.encoding,
        )


def parse_outage(text: str) -> tuple[float, float]:
    """``START:DURATION`` in seconds, as the demo's ``--cresta-outage`` flag takes it.

    >>> parse_outage("10:5.5")
    (10.0, 5.5)
    """
    start, sep, duration = text.partition(":")
    try:
        window = float(start), float(duration)
    except ValueError:
        window = None
    if not sep or window is None or window[0] < 0 or window[1] <= 0:
        raise ValueError(f"expected START:DURATION in seconds (START >= 0, DURATION > 0), got {text!r}")
    return window


class CrestaFaults:
    """Faults the emulator injects; every method may be called from any thread at any time.

    Times are on the emulator's clock (monotonic seconds unless a test injects one).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._refuse_status: int | None = None
        self._drop_after: int | None = None
        self._stalled = False
        self._read_delay_s = 0.0
        self._token_failures: list[int] = []
        self._outage: tuple[float, float] | None = None

    def refuse_connections(self, status: int = 503) -> None:
        """Answer every stream upgrade with HTTP ``status`` until ``accept_connections``."""
        with self._lock:
            self._refuse_status = status

    def accept_connections(self) -> None:
        with self._lock:
            self._refuse_status = None

    def drop_after(self, messages: int | None) -> None:
        """Cut every connection (TCP abort, no close frame) once it has delivered
        ``messages`` messages; ``None`` stops cutting."""
        with self._lock:
            self._drop_after = messages

    def stall(self) -> None:
        """Stop reading every stream: the sender's buffers fill and its pings go unanswered."""
        with self._lock:
            self._stalled = True

    def resume(self) -> None:
        with self._lock:
            self._stalled = False

    def slow_reads(self, delay_s: float) -> None:
        """Wait ``delay_s`` after each message read (0 reads at full speed again)."""
        with self._lock:
            self._read_delay_s = delay_s

    def fail_token_requests(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` token requests with ``status`` (503, 401, …)."""
        with self._lock:
            self._token_failures.extend([status] * count)

    def outage(self, start_s: float, duration_s: float) -> None:
        """From ``start_s`` from now, for ``duration_s``: upgrades refused with 503 and
        every open stream closed (close code 1001, going away)."""
        with self._lock:
            begin = self._clock() + start_s
            self._outage = (begin, begin + duration_s)

    def clear(self) -> None:
        with self._lock:
            self._refuse_status = self._drop_after = self._outage = None
            self._stalled = False
            self._read_delay_s = 0.0
            self._token_failures.clear()

    # --- what the emulator asks ------------------------------------------------------

    def in_outage(self) -> bool:
        with self._lock:
            return self._outage is not None and self._outage[0] <= self._clock() < self._outage[1]

    def upgrade_refusal(self) -> int | None:
        if self.in_outage():
            return HTTPStatus.SERVICE_UNAVAILABLE
        with self._lock:
            return self._refuse_status

    def next_token_failure(self) -> int | None:
        with self._lock:
            return self._token_failures.pop(0) if self._token_failures else None

    @property
    def stalled(self) -> bool:
        with self._lock:
            return self._stalled

    @property
    def read_delay_s(self) -> float:
        with self._lock:
            return self._read_delay_s

    @property
    def drop_after_messages(self) -> int | None:
        with self._lock:
            return self._drop_after


class CrestaEmulator:
    """Cresta's token endpoint and stream receivers on loopback, for tests and the demo.

    ``port`` is the WebSocket port and ``auth_port`` the token endpoint's; 0 picks a free one.
    ``clock`` (monotonic seconds) decides when issued tokens expire and when an outage runs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_id: str,
        client_secret: str,
        media_token: str,
        token_ttl_s: int = 3600,
        auth_port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._requested_auth_port = auth_port
        self._client_id = client_id
        self._client_secret = client_secret
        self._media_token = media_token
        self.token_ttl_s = token_ttl_s
        self._clock = clock
        self.faults = CrestaFaults(clock)
        self._lock = threading.Lock()
        self._closed = threading.Condition(self._lock)
        self._issued_tokens: dict[str, float] = {}
        self._every_token: list[str] = []
        self._calls: dict[str, _CallState] = {}
        self._call_ids_seen: set[str] = set()
        self._unattributed_violations: list[str] = []
        self._connections_closed = 0
        self._connection_counter = 0
        self.token_requests = 0
        # Touched only on the WebSocket thread.
        self._open_connections: set[ServerConnection] = set()
        self._http_server: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._ws_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_serving: asyncio.Event | None = None
        self._ws_port: int | None = None

    def __repr__(self) -> str:
        return f"CrestaEmulator(host={self.host!r}, running={self._ws_port is not None})"

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._ws_thread is not None:
            raise RuntimeError("the emulator is already running")
        self._http_server = ThreadingHTTPServer(
            (self.host, self._requested_auth_port), _token_handler(self)
        )
        self._http_server.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._http_server.serve_forever,
            # shutdown() waits up to one poll interval; the default 0.5 s slows every stop.
            kwargs={"poll_interval": 0.05},
            name="cresta-emulator-auth",
            daemon=True,
        )
        self._http_thread.start()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._ws_thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(ready, failure)),
            name="cresta-emulator-ws",
            daemon=True,
        )
        self._ws_thread.start()
        ready.wait()
        if failure:
            self.stop()
            raise RuntimeError("the Cresta emulator's WebSocket server did not start") from (
                failure[0]
            )
        logger.info("Cresta emulator: auth %s, media streams %s", self.auth_url, self.ws_url)

    def stop(self) -> None:
        if self._loop is not None and self._stop_serving is not None:
            self._loop.call_soon_threadsafe(self._stop_serving.set)
        if self._ws_thread is not None:
            self._ws_thread.join()
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
        if self._http_thread is not None:
            self._http_thread.join()
        self._ws_thread = self._http_thread = self._http_server = None
        self._loop = self._stop_serving = None
        self._ws_port = None

    def __enter__(self) -> "CrestaEmulator":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def auth_url(self) -> str:
        if self._http_server is None:
            raise RuntimeError("the emulator is not running")
        return f"http://{self.host}:{self._http_server.server_address[1]}"

    @property
    def ws_url(self) -> str:
        """The Twilio Media Streams endpoint."""
        if self._ws_port is None:
            raise RuntimeError("the emulator is not running")
        return f"ws://{self.host}:{self._ws_port}{MEDIA_STREAMS_PATH}"

    @property
    def l16_url(self) -> str:
        """The L16 endpoint (``pipeline.l16_stream``)."""
        return self.ws_url.rstrip("/") + L16_PATH

    # --- credentials, as Cresta's side of a rotation -------------------------------------

    def set_client_credentials(self, client_id: str, client_secret: str) -> None:
        """From now on only these credentials get tokens (the old secret is refused)."""
        with self._lock:
            self._client_id, self._client_secret = client_id, client_secret

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working for stream upgrades."""
        with self._lock:
            self._issued_tokens.clear()

    # --- what was received -------------------------------------------------------------

    def calls(self) -> dict[str, CallRecord]:
        """A snapshot of every call received so far, keyed by ``callSid``."""
        with self._lock:
            return {sid: state.snapshot() for sid, state in self._calls.items()}

    def violations(self) -> list[str]:
        """Every protocol violation seen, including those of streams that never started."""
        with self._lock:
            attributed = [
                f"call {sid}: {text}"
                for sid, state in self._calls.items()
                for text in state.violations
            ]
            return attributed + list(self._unattributed_violations)

    def wait_connections_closed(self, count: int, timeout_s: float = 5.0) -> None:
        """Block until ``count`` stream connections have ended and been recorded."""
        with self._closed:
            if not self._closed.wait_for(lambda: self._connections_closed >= count, timeout_s):
                raise TimeoutError(
                    f"{self._connections_closed} of {count} stream connections closed "
                    f"after {timeout_s}s"
                )

    @property
    def connections_opened(self) -> int:
        """Stream connections accepted so far (upgrades that were not refused)."""
        with self._lock:
            return self._connection_counter

    def issued_tokens(self) -> list[str]:
        """Every access token issued since the start, for tests that prove none leaks."""
        with self._lock:
            return list(self._every_token)

    @property
    def connections_closed(self) -> int:
        with self._lock:
            return self._connections_closed

    def write_wavs(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """``out_dir/<callSid>/customer.wav`` and ``agent.wav``: the audio exactly as received
        (μ-law for Media Streams, PCM for L16)."""
        written = []
        for call_sid, record in self.calls().items():
            directory = Path(out_dir) / _directory_name(call_sid)
            directory.mkdir(parents=True, exist_ok=True)
            write = write_wav_pcm16 if record.encoding == L16_ENCODING else write_wav_mulaw
            for track, name in WAV_NAMES.items():
                path = directory / name
                write(path, record.tracks[track])
                written.append(path)
        return written

    # --- token endpoint ----------------------------------------------------------------

    def _issue_token(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._issued_tokens = {t: exp for t, exp in self._issued_tokens.items() if exp > now}
            self._issued_tokens[token] = now + self.token_ttl_s
            self._every_token.append(token)
            self.token_requests += 1
        return token

    def _token_is_valid(self, token: str) -> bool:
        with self._lock:
            expires = self._issued_tokens.get(token)
        return expires is not None and self._clock() < expires

    def _credentials_match(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(authorization[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, _, client_secret = decoded.partition(":")
        with self._lock:
            expected_id, expected_secret = self._client_id, self._client_secret
        # Both comparisons always run, so the timing does not tell which part was wrong.
        id_matches = hmac.compare_digest(client_id.encode(), expected_id.encode())
        secret_matches = hmac.compare_digest(client_secret.encode(), expected_secret.encode())
        return id_matches and secret_matches

    # --- streams -----------------------------------------------------------------------

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_serving = asyncio.Event()
        try:
            server = await serve(
                self._handle_stream,
                self.host,
                self._requested_port,
                process_request=self._authorize_upgrade,
                logger=RedactingLogger(logging.getLogger("websockets.server")),
            )
        except Exception as exc:
            failure.append(exc)
            ready.set()
            return
        self._ws_port = server.sockets[0].getsockname()[1]
        ready.set()
        watcher = asyncio.create_task(self._enforce_outages())
        async with server:
            await self._stop_serving.wait()
        watcher.cancel()

    async def _enforce_outages(self) -> None:
        """Closes every open stream while an outage runs (checked every ``FAULT_POLL_S``)."""
        while True:
            if self.faults.in_outage() and self._open_connections:
                closing = list(self._open_connections)
                self._open_connections.clear()
                for connection in closing:
                    asyncio.create_task(connection.close(1001, "outage"))
            await asyncio.sleep(FAULT_POLL_S)

    def _authorize_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path not in (MEDIA_STREAMS_PATH, L16_PATH):
            return connection.respond(HTTPStatus.NOT_FOUND, "no stream endpoint here\n")
        refusal = self.faults.upgrade_refusal()
        if refusal is not None:
            logger.info("Cresta emulator: refusing a stream upgrade with HTTP %d (fault)", refusal)
            return connection.respond(HTTPStatus(refusal), "refused (injected fault)\n")
        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme == "Bearer" and token and self._token_is_valid(token):
            return None
        logger.info("Cresta emulator: refused a stream upgrade without a valid token")
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "a valid Bearer token is required\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="cresta-emulator"'
        return response

    async def _handle_stream(self, connection: ServerConnection) -> None:
        with self._lock:
            self._connection_counter += 1
            connection_number = self._connection_counter
        if urlsplit(connection.request.path).path == L16_PATH:
            receiver: MediaStreamsReceiver | L16Receiver = L16Receiver(expected_token=self._media_token)
            encoding = L16_ENCODING
        else:
            receiver = MediaStreamsReceiver(expected_token=self._media_token)
            encoding = MEDIA_ENCODING
        self._open_connections.add(connection)
        extensions = tuple(extension.name for extension in connection.protocol.extensions)
        recorded_violations = 0
        messages = 0
        call: _CallState | None = None
        stream: _StreamState | None = None
        try:
            while True:
                # A stop ends the stall: the server waits for every handler before it closes.
                while self.faults.stalled and not self._stop_serving.is_set():
                    await asyncio.sleep(FAULT_POLL_S)
                try:
                    message = await connection.recv()
                except ConnectionClosed:
                    break
                received_at = time.time()
                messages += 1
                if isinstance(message, str):
                    events = receiver.receive_text(message)
                else:
                    events = receiver.receive_bytes(message)
                with self._lock:
                    for event in events:
                        if isinstance(event, Start) and stream is None:
                            call, stream = self._stream_for(event, encoding, connection_number, extensions)
                        elif isinstance(event, Media) and stream is not None:
                            stream.tracks[event.track] += event.payload
                            stream.media_receive_times[event.track].append(received_at)
                        elif isinstance(event, Stop) and stream is not None:
                            stream.stopped = True
                    new = receiver.violations[recorded_violations:]
                    recorded_violations = len(receiver.violations)
                    if call is not None:
                        call.violations.extend(new)
                    else:
                        self._unattributed_violations.extend(
                            f"connection {connection_number}: {text}" for text in new
                        )
                drop_after = self.faults.drop_after_messages
                if drop_after is not None and messages >= drop_after:
                    connection.transport.abort()
                    break
                delay = self.faults.read_delay_s
                if delay:
                    await asyncio.sleep(delay)
        finally:
            self._open_connections.discard(connection)
            await connection.wait_closed()
            with self._closed:
                self._connections_closed += 1
                self._closed.notify_all()

    def _stream_for(
        self, start: Start, encoding: str, connection_number: int, extensions: tuple[str, ...]
    ) -> tuple[_CallState, _StreamState]:
        """The call a ``start`` belongs to, and the new stream in it. The caller holds the lock."""
        call = self._calls.get(start.call_sid)
        if call is None:
            call = self._calls[start.call_sid] = _CallState(start.call_sid, encoding)
        elif call.encoding != encoding:
            call.violations.append(f"stream {start.stream_sid}: {encoding} after {call.encoding} on the same call")
        call_id = start.custom_parameters.get("CallId")
        if call_id is None:
            call.violations.append(f"stream {start.stream_sid}: customParameters.CallId is missing")
        elif call_id in self._call_ids_seen:
            call.violations.append(
                f"stream {start.stream_sid}: duplicate CallId {call_id!r} (Cresta rejects a CallId it has seen)"
            )
        else:
            self._call_ids_seen.add(call_id)
        stream = call.streams[connection_number] = _StreamState(
            start.stream_sid, call_id, dict(start.custom_parameters), extensions
        )
        return call, stream


def _directory_name(call_sid: str) -> str:
    # callSid comes off the network; it must not climb out of out_dir.
    if _SAFE_DIRECTORY_NAME.fullmatch(call_sid):
        return call_sid
    return re.sub(r"[^A-Za-z0-9._-]", "_", call_sid).lstrip(".") or "_"


def _token_handler(emulator: CrestaEmulator) -> type[BaseHTTPRequestHandler]:
    class TokenRequestHandler(BaseHTTPRequestHandler):
        server_version = "CrestaEmulator/1"
        protocol_version = "HTTP/1.1"
        #: Seconds a client may take to send its request before the socket is dropped.
        timeout = 10

        def do_POST(self) -> None:
            if self.path != TOKEN_PATH:
                self._reply(HTTPStatus.NOT_FOUND, {"error": "not_found"})
                return
            length_header = self.headers.get("Content-Length")
            if length_header is None or not length_header.isdigit():
                self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "invalid_request"})
                return
            length = int(length_header)
            if length > MAX_TOKEN_REQUEST_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "invalid_request"})
                return
            body = self.rfile.read(length)
            injected = emulator.faults.next_token_failure()
            if injected is not None:
                self._reply(HTTPStatus(injected), {"error": "injected_fault"})
                return
            if not emulator._credentials_match(self.headers.get("Authorization")):
                self._reply(
                    HTTPStatus.UNAUTHORIZED,
                    {"error": "invalid_client"},
                    {"WWW-Authenticate": 'Basic realm="cresta-emulator"'},
                )
                return
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != "application/json":
                self._reply(HTTPStatus.BAD_REQUEST, {"error": "invalid_request"})
                return
            try:
                request = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._reply(HTTPStatus.BAD_REQUEST, {"error": "invalid_request"})
                return
            if not isinstance(request, dict) or request.get("grant_type") != "client_credentials":
                self._reply(HTTPStatus.BAD_REQUEST, {"error": "unsupported_grant_type"})
                return
            self._reply(
                HTTPStatus.OK,
                {
                    "access_token": emulator._issue_token(),
                    "token_type": "Bearer",
                    "expires_in": emulator.token_ttl_s,
                },
            )

        def do_GET(self) -> None:
            self._reply(
                HTTPStatus.METHOD_NOT_ALLOWED, {"error": "method_not_allowed"}, {"Allow": "POST"}
            )

        do_PUT = do_DELETE = do_PATCH = do_GET

        def _reply(
            self, status: HTTPStatus, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("Cresta emulator auth: " + format, *args)

    return TokenRequestHandler
