"""One contact's audio to Cresta: the narrow adapter interface and its WebSocket adapters.

The delivery service knows only ``CrestaStreamAdapter``: open a contact's stream, send a
chunk's audio, close it. Which wire format goes over the socket is a sans-I/O sender
chosen by name (``PROTOCOLS``): ``media_streams`` (Twilio Media Streams, the default:
the only publicly evidenced Cresta ingest) or ``l16`` (raw PCM frames,
``pipeline.l16_stream``). A new protocol is a new sender class and an entry there; the
job does not change.

What a stream carries, after Cresta's Twilio Flex integration:

- ``callSid`` is the Connect ContactId; ``streamSid`` is a fresh ``MZ`` + 32 hex digits.
- customParameters ``CallId`` = ContactId + ``-<epoch ms>``: Cresta rejects a second
  stream with a CallId it has seen, so every (re)connect of a contact needs a new one;
  the milliseconds come from one process-wide clock that never repeats a value.
  ``AgentId``; ``Token`` (the per-customer Media Streams token Cresta issues);
  ``ParticipantMode`` ``"agent"``, so the customer's audio (``AUDIO_FROM_CUSTOMER``) is
  ``"inbound"`` and the agent's (``AUDIO_TO_CUSTOMER``) ``"outbound"``; then the
  allowlisted contact attributes. The four protocol parameters win over attributes of
  the same name.
- The WebSocket upgrade carries ``Authorization: Bearer <OAuth access token>``. Whether
  Cresta's Connect ingest wants it there is not public (seed question Q1); the Cresta
  emulator requires it. A 401 on the upgrade renews the token (reading the client
  credentials again) and retries once.

A send counts as done when its messages are in the socket's buffers and the buffer
is below ``write_limit`` (Twilio's protocol has no acknowledgement); a receiver that
stops reading makes sends wait, and ``send_timeout_s`` or the keepalive
(``ping_timeout_s``) then fail the stream.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from connectors.cresta.auth import CrestaAuthError
from connectors.cresta.log_redaction import RedactingLogger
from pipeline.assembler import AudioChunk
from pipeline.l16_stream import L16Sender
from pipeline.media_streams import MediaStreamsSender
from pipeline.records import Track

logger = logging.getLogger(__name__)
_websocket_logger = RedactingLogger(logging.getLogger("websockets.client"))

PARTICIPANT_MODE = "agent"


class CrestaDeliveryError(Exception):
    """Audio could not be handed to Cresta. The text never contains a token."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class StreamContact:
    """What a stream tells Cresta about its contact; attributes already allowlisted."""

    contact_id: str
    instance_id: str = ""
    agent_id: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_chunk(cls, chunk: AudioChunk, attribute_allowlist: frozenset[str]) -> "StreamContact":
        attributes = {k: v for k, v in chunk.info.attributes.items() if k in attribute_allowlist}
        return cls(chunk.contact_id, chunk.info.instance_id, chunk.info.agent_id, attributes)


class CrestaStreamAdapter(Protocol):
    """One contact's stream to Cresta; opened again (a new stream) after any failure.

    Every method raises ``CrestaDeliveryError`` on failure, after which the stream is
    closed and ``is_open`` is False.
    """

    @property
    def is_open(self) -> bool: ...

    async def open_contact(self, contact: StreamContact) -> None: ...

    async def send_chunk(self, track: Track, pcm16: bytes) -> None: ...

    async def close_contact(self) -> None: ...


class StreamSender(Protocol):
    """A sans-I/O wire format: ``MediaStreamsSender`` or ``L16Sender``."""

    def start_messages(self) -> list[str]: ...

    def media_messages(self, track: Track | str, pcm16: bytes) -> list[str] | list[bytes]: ...

    def stop_messages(self) -> list[str]: ...


#: (stream_sid, account_sid, call_sid, custom_parameters) → sender
SenderFactory = Callable[[str, str, str, dict[str, str]], StreamSender]

PROTOCOLS: Mapping[str, SenderFactory] = {
    "media_streams": MediaStreamsSender,
    "l16": L16Sender,
}


class BearerTokens(Protocol):
    """Access tokens for the upgrade: ``CrestaTokenProvider``."""

    def token(self) -> str: ...

    def renew(self, rejected_token: str) -> str: ...


class UniqueMillis:
    """Epoch milliseconds that never repeat within the process (two reconnects of a
    contact in one millisecond would otherwise share a CallId)."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(self._clock_ns() // 1_000_000, self._last + 1)
            return self._last


unique_epoch_ms = UniqueMillis()


def new_stream_sid() -> str:
    return "MZ" + secrets.token_hex(16)


def redacted_url(url: str) -> str:
    """``url`` without user info, query or fragment, which may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class WebSocketOptions:
    open_timeout_s: float = 10.0
    send_timeout_s: float = 10.0
    close_timeout_s: float = 5.0
    #: websockets' keepalive: a receiver that stops answering pings fails the stream.
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    #: Bytes the socket may hold unsent before a send waits: the bound on what a slow
    #: reader leaves in memory per contact, on top of the policy's buffer.
    write_limit: int = 64 * 1024
    #: "deflate" offers permessage-deflate (websockets' default); None offers nothing.
    compression: str | None = "deflate"


class WebSocketStreamAdapter:
    """A ``CrestaStreamAdapter`` over one WebSocket per stream, speaking ``new_sender``'s
    format. Driven by one task at a time (the delivery service's per-contact order)."""

    def __init__(
        self,
        ws_url: str,
        media_token: str,
        tokens: BearerTokens,
        new_sender: SenderFactory = MediaStreamsSender,
        options: WebSocketOptions = WebSocketOptions(),
        *,
        epoch_ms: Callable[[], int] = unique_epoch_ms,
    ) -> None:
        self.ws_url = ws_url
        self._media_token = media_token
        self._tokens = tokens
        self._new_sender = new_sender
        self.options = options
        self._epoch_ms = epoch_ms
        self._websocket: ClientConnection | None = None
        self._sender: StreamSender | None = None
        self.stream_sid: str | None = None
        self.call_id: str | None = None

    def __repr__(self) -> str:
        return f"WebSocketStreamAdapter(ws_url={redacted_url(self.ws_url)!r}, open={self.is_open})"

    @property
    def is_open(self) -> bool:
        return self._websocket is not None

    async def open_contact(self, contact: StreamContact) -> None:
        """Connect and send the protocol's opening messages for ``contact``."""
        if self._websocket is not None:
            raise RuntimeError("the stream is already open; close it first")
        call_id = f"{contact.contact_id}-{self._epoch_ms()}"
        parameters = dict(contact.attributes)
        parameters.update(
            CallId=call_id,
            AgentId=contact.agent_id,
            Token=self._media_token,
            ParticipantMode=PARTICIPANT_MODE,
        )
        stream_sid = new_stream_sid()
        sender = self._new_sender(stream_sid, contact.instance_id, contact.contact_id, parameters)
        token = await self._bearer(self._tokens.token)
        try:
            websocket = await self._connect(contact.contact_id, token)
        except CrestaDeliveryError as exc:
            if exc.status_code != 401:
                raise
            logger.warning(
                "Media stream upgrade for contact %s refused with HTTP 401; renewing the token",
                contact.contact_id,
            )
            token = await self._bearer(lambda: self._tokens.renew(token))
            websocket = await self._connect(contact.contact_id, token)
        self._websocket, self._sender = websocket, sender
        self.stream_sid, self.call_id = stream_sid, call_id
        await self._send(sender.start_messages())
        logger.info(
            "opened stream %s to %s for contact %s (CallId %s)",
            stream_sid,
            redacted_url(self.ws_url),
            contact.contact_id,
            call_id,
        )

    async def send_chunk(self, track: Track, pcm16: bytes) -> None:
        if self._sender is None:
            raise CrestaDeliveryError("the stream is not open")
        await self._send(self._sender.media_messages(track, pcm16))

    async def close_contact(self) -> None:
        """Send the closing messages, then close; a no-op when not open."""
        websocket, sender = self._websocket, self._sender
        if websocket is None or sender is None:
            return
        await self._send(sender.stop_messages())
        self._websocket = self._sender = None
        # close() waits for Cresta's close frame at most close_timeout, then drops the socket.
        await websocket.close()
        logger.info("closed stream %s", self.stream_sid)

    async def _bearer(self, fetch: Callable[[], str]) -> str:
        # The token provider blocks (HTTP with retries); the event loop must not.
        try:
            return await asyncio.to_thread(fetch)
        except CrestaAuthError as exc:
            raise CrestaDeliveryError(
                f"no access token for the stream to {redacted_url(self.ws_url)}: {exc}"
            ) from None

    async def _connect(self, contact_id: str, token: str) -> ClientConnection:
        url = redacted_url(self.ws_url)
        try:
            return await connect(
                self.ws_url,
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=self.options.open_timeout_s,
                close_timeout=self.options.close_timeout_s,
                ping_interval=self.options.ping_interval_s,
                ping_timeout=self.options.ping_timeout_s,
                write_limit=self.options.write_limit,
                compression=self.options.compression,
                logger=_websocket_logger,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise CrestaDeliveryError(
                f"stream to {url} for contact {contact_id} refused: HTTP {status}", status
            ) from None
        except (WebSocketException, OSError, TimeoutError) as exc:
            # Some errors (InvalidURI) quote the URL, which may carry credentials.
            reason = str(exc).replace(self.ws_url, url)
            raise CrestaDeliveryError(
                f"stream to {url} for contact {contact_id} failed: {type(exc).__name__}: {reason}"
            ) from None

    async def _send(self, messages: list[str] | list[bytes]) -> None:
        websocket = self._websocket
        if websocket is None:
            raise CrestaDeliveryError("the stream is not open")
        try:
            async with asyncio.timeout(self.options.send_timeout_s):
                for message in messages:
                    await websocket.send(message)
        except asyncio.CancelledError:
            self._drop(websocket)
            raise
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            self._drop(websocket)
            raise CrestaDeliveryError(
                f"stream {self.stream_sid} to {redacted_url(self.ws_url)} broke: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def _drop(self, websocket: ClientConnection) -> None:
        # A send cut short may have left half a frame: the socket is unusable.
        self._websocket = self._sender = None
        websocket.transport.abort()


def adapter_factory(
    protocol: str,
    ws_url: str,
    media_token: str,
    tokens: BearerTokens,
    options: WebSocketOptions = WebSocketOptions(),
) -> Callable[[], CrestaStreamAdapter]:
    """New adapters for ``protocol`` (a key of ``PROTOCOLS``), one per contact."""
    try:
        new_sender = PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"unknown Cresta protocol {protocol!r}; known: {sorted(PROTOCOLS)}") from None
    return lambda: WebSocketStreamAdapter(ws_url, media_token, tokens, new_sender, options)
