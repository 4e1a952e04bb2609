"""A local Cresta: the OAuth token endpoint and a strict Media Streams WebSocket receiver.

Two listeners, because the ``websockets`` server only accepts GET upgrade requests:

- ``auth_url``: a stdlib ``ThreadingHTTPServer`` serving ``POST /v1/oauth/regionalToken``
  the way Cresta's client expects it (HTTP Basic client credentials, JSON
  ``{"grant_type":"client_credentials"}``), answering 401/400/404/405 otherwise.
- ``ws_url``: a ``websockets`` asyncio server on its own thread and event loop. The
  upgrade needs ``Authorization: Bearer <token issued above and not expired>`` (else 401).
  Each connection is checked by one ``MediaStreamsReceiver``; what it reads is recorded
  per call (``callSid``), and a second stream for the same call (a reconnect) appends.

>>> emulator = CrestaEmulator(client_id="id", client_secret="secret", media_token="token")
>>> emulator.start()
>>> emulator.auth_url.startswith("http://127.0.0.1:"), emulator.ws_url.startswith("ws://")
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

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pipeline.audio import write_wav_mulaw
from pipeline.media_streams import TWILIO_TRACKS, Media, MediaStreamsReceiver, Start, Stop

logger = logging.getLogger(__name__)

TOKEN_PATH = "/v1/oauth/regionalToken"
#: A token request body is a few dozen bytes; anything far larger is refused unread.
MAX_TOKEN_REQUEST_BYTES = 4096
WAV_NAMES = {"inbound": "customer.wav", "outbound": "agent.wav"}
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


@dataclass
class _CallState:
    call_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    tracks: dict[str, bytearray] = field(
        default_factory=lambda: {name: bytearray() for name in TWILIO_TRACKS}
    )
    media_receive_times: dict[str, list[float]] = field(
        default_factory=lambda: {name: [] for name in TWILIO_TRACKS}
    )
    violations: list[str] = field(default_factory=list)
    stopped: bool = False
    stream_sids: list[str] = field(default_factory=list)

    def snapshot(self) -> CallRecord:
        return CallRecord(
            call_sid=self.call_sid,
            custom_parameters=dict(self.custom_parameters),
            tracks={name: bytes(audio) for name, audio in self.tracks.items()},
            media_receive_times={name: list(t) for name, t in self.media_receive_times.items()},
            violations=list(self.violations),
            stopped=self.stopped,
            stream_sids=list(self.stream_sids),
        )


class CrestaEmulator:
    """Cresta's token endpoint and Media Streams receiver on loopback, for tests and the demo.

    ``port`` is the WebSocket port and ``auth_port`` the token endpoint's; 0 picks a free one.
    ``clock`` (monotonic seconds) decides when issued tokens expire.
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
        self._lock = threading.Lock()
        self._closed = threading.Condition(self._lock)
        self._issued_tokens: dict[str, float] = {}
        self._calls: dict[str, _CallState] = {}
        self._unattributed_violations: list[str] = []
        self._connections_closed = 0
        self._connection_counter = 0
        self.token_requests = 0
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
        if self._ws_port is None:
            raise RuntimeError("the emulator is not running")
        return f"ws://{self.host}:{self._ws_port}/"

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
        """Block until ``count`` Media Streams connections have ended and been recorded."""
        with self._closed:
            if not self._closed.wait_for(lambda: self._connections_closed >= count, timeout_s):
                raise TimeoutError(
                    f"{self._connections_closed} of {count} Media Streams connections closed "
                    f"after {timeout_s}s"
                )

    def write_wavs(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """``out_dir/<callSid>/customer.wav`` and ``agent.wav``: the μ-law exactly as received."""
        written = []
        for call_sid, record in self.calls().items():
            directory = Path(out_dir) / _directory_name(call_sid)
            directory.mkdir(parents=True, exist_ok=True)
            for track, name in WAV_NAMES.items():
                path = directory / name
                write_wav_mulaw(path, record.tracks[track])
                written.append(path)
        return written

    # --- token endpoint ----------------------------------------------------------------

    def _issue_token(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._issued_tokens = {t: exp for t, exp in self._issued_tokens.items() if exp > now}
            self._issued_tokens[token] = now + self.token_ttl_s
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
        # Both comparisons always run, so the timing does not tell which part was wrong.
        id_matches = hmac.compare_digest(client_id.encode(), self._client_id.encode())
        secret_matches = hmac.compare_digest(client_secret.encode(), self._client_secret.encode())
        return id_matches and secret_matches

    # --- Media Streams -----------------------------------------------------------------

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_serving = asyncio.Event()
        try:
            server = await serve(
                self._handle_stream,
                self.host,
                self._requested_port,
                process_request=self._authorize_upgrade,
            )
        except Exception as exc:
            failure.append(exc)
            ready.set()
            return
        self._ws_port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stop_serving.wait()

    def _authorize_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme == "Bearer" and token and self._token_is_valid(token):
            return None
        logger.info("Cresta emulator: refused a Media Streams upgrade without a valid token")
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "a valid Bearer token is required\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="cresta-emulator"'
        return response

    async def _handle_stream(self, connection: ServerConnection) -> None:
        with self._lock:
            self._connection_counter += 1
            connection_number = self._connection_counter
        receiver = MediaStreamsReceiver(expected_token=self._media_token)
        recorded_violations = 0
        call: _CallState | None = None
        try:
            async for message in connection:
                received_at = time.time()
                if isinstance(message, str):
                    events = receiver.receive_text(message)
                else:
                    events = receiver.receive_bytes(message)
                with self._lock:
                    for event in events:
                        if isinstance(event, Start) and call is None:
                            call = self._call_for(event)
                        elif isinstance(event, Media) and call is not None:
                            call.tracks[event.track] += event.payload
                            call.media_receive_times[event.track].append(received_at)
                        elif isinstance(event, Stop) and call is not None:
                            call.stopped = True
                    new = receiver.violations[recorded_violations:]
                    recorded_violations = len(receiver.violations)
                    if call is not None:
                        call.violations.extend(new)
                    else:
                        self._unattributed_violations.extend(
                            f"connection {connection_number}: {text}" for text in new
                        )
        except ConnectionClosed:
            pass
        finally:
            with self._closed:
                self._connections_closed += 1
                self._closed.notify_all()

    def _call_for(self, start: Start) -> _CallState:
        """The call a ``start`` belongs to; a later stream of the same call appends to it."""
        call = self._calls.get(start.call_sid)
        if call is None:
            call = self._calls[start.call_sid] = _CallState(start.call_sid)
        call.custom_parameters = dict(start.custom_parameters)
        call.stream_sids.append(start.stream_sid)
        call.stopped = False
        return call


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
