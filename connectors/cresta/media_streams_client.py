"""One contact's audio to Cresta over a Twilio Media Streams WebSocket (blocking).

A thin adapter: ``pipeline.media_streams.MediaStreamsSender`` decides what to send, this
class moves it over ``websockets.sync.client``. Delivery policy (buffering through an
outage, reconnecting, giving up) belongs to the caller.

What a stream carries, after Cresta's Twilio Flex integration:

- ``callSid`` is the Connect ContactId; ``streamSid`` is a fresh ``MZ`` + 32 hex digits.
- customParameters ``CallId`` = ContactId + ``-<epoch ms>``, because Cresta rejects a
  second stream with a CallId it has seen (a reconnect is a new stream); ``AgentId``;
  ``Token`` (the per-customer Media Streams token Cresta issues); ``ParticipantMode``
  ``"agent"``, so the customer's audio (``AUDIO_FROM_CUSTOMER``) is ``"inbound"`` and the
  agent's (``AUDIO_TO_CUSTOMER``) is ``"outbound"``; then the contact attributes given.
  The four protocol parameters win over attributes of the same name.
- The WebSocket upgrade carries ``Authorization: Bearer <OAuth access token>``. Whether
  Cresta's Connect ingest wants it there is not public (seed question Q1); the Cresta
  emulator requires it.
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import ExitStack
from typing import Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from pipeline.media_streams import MediaStreamsSender
from pipeline.records import Track

logger = logging.getLogger(__name__)

PARTICIPANT_MODE = "agent"
PROTOCOL_PARAMETERS = ("CallId", "AgentId", "Token", "ParticipantMode")


class CrestaDeliveryError(Exception):
    """Audio could not be handed to Cresta. The text never contains a token."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def new_stream_sid() -> str:
    return "MZ" + secrets.token_hex(16)


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def redacted_url(url: str) -> str:
    """``url`` without user info, query or fragment, which may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class MediaStreamsConnection:
    """A Media Stream for one contact at a time: ``open``, ``send_chunk``…, ``close``.

    Not thread-safe: one caller drives one connection.

    Parameters
    ----------
    ws_url:
        The customer's Cresta Media Streams ``wss://`` URL.
    media_token:
        The Media Streams token Cresta issued, sent as customParameters ``Token``.
    bearer_token:
        Returns an OAuth access token for the upgrade request, e.g.
        ``CrestaTokenProvider.token``; called on every ``open``.
    account_sid:
        Sent as ``accountSid`` (Twilio's account); the Connect instance id fits.
    """

    def __init__(
        self,
        ws_url: str,
        media_token: str,
        bearer_token: Callable[[], str],
        *,
        account_sid: str = "",
        open_timeout_s: float = 10.0,
        epoch_ms: Callable[[], int] = _epoch_ms,
    ) -> None:
        self.ws_url = ws_url
        self._media_token = media_token
        self._bearer_token = bearer_token
        self.account_sid = account_sid
        self._open_timeout_s = open_timeout_s
        self._epoch_ms = epoch_ms
        self._websocket: ClientConnection | None = None
        self._exit_stack = ExitStack()
        self._sender: MediaStreamsSender | None = None

    def __repr__(self) -> str:
        return f"MediaStreamsConnection(ws_url={redacted_url(self.ws_url)!r}, open={self.is_open})"

    @property
    def is_open(self) -> bool:
        return self._websocket is not None

    @property
    def stream_sid(self) -> str | None:
        return self._sender.stream_sid if self._sender else None

    @property
    def call_id(self) -> str | None:
        return self._sender.custom_parameters["CallId"] if self._sender else None

    def open(
        self,
        contact_id: str,
        custom_parameters: Mapping[str, str] | None = None,
        *,
        agent_id: str = "",
    ) -> None:
        """Connect and send ``connected`` and ``start`` for ``contact_id``."""
        if self._websocket is not None:
            raise RuntimeError("the connection is already open; close it first")
        url = redacted_url(self.ws_url)
        parameters = dict(custom_parameters or {})
        parameters.update(
            CallId=f"{contact_id}-{self._epoch_ms()}",
            AgentId=agent_id,
            Token=self._media_token,
            ParticipantMode=PARTICIPANT_MODE,
        )
        sender = MediaStreamsSender(new_stream_sid(), self.account_sid, contact_id, parameters)
        try:
            headers = {"Authorization": f"Bearer {self._bearer_token()}"}
        except Exception as exc:
            raise CrestaDeliveryError(
                f"no access token for the Media Streams connection to {url}: {exc}"
            ) from exc
        try:
            # Entered as a context manager: websockets 17 deprecates a bare connect(), and
            # its ``legacy`` opt-out does not exist before 17.
            websocket = self._exit_stack.enter_context(
                connect(self.ws_url, additional_headers=headers, open_timeout=self._open_timeout_s)
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise CrestaDeliveryError(
                f"Media Streams connection to {url} for contact {contact_id} refused: "
                f"HTTP {status}",
                status,
            ) from None
        except (WebSocketException, OSError) as exc:
            # Some errors (InvalidURI) quote the URL, which may carry credentials.
            reason = str(exc).replace(self.ws_url, url)
            raise CrestaDeliveryError(
                f"Media Streams connection to {url} for contact {contact_id} failed: "
                f"{type(exc).__name__}: {reason}"
            ) from None
        self._websocket = websocket
        self._sender = sender
        self._send(sender.start_messages())
        logger.info(
            "opened Media Stream %s to %s for contact %s (CallId %s)",
            sender.stream_sid,
            url,
            contact_id,
            parameters["CallId"],
        )

    def send_chunk(self, track: Track | str, pcm16: bytes) -> None:
        """Send PCM16LE 8 kHz audio of ``"customer"`` or ``"agent"`` as 20 ms μ-law frames.

        A remainder shorter than 20 ms waits for the track's next chunk (or ``close``).
        """
        if self._sender is None:
            raise CrestaDeliveryError("the Media Streams connection is not open")
        self._send(self._sender.media_messages(track, pcm16))

    def close(self) -> None:
        """Send the last partial frames and ``stop``, then close; a no-op when not open."""
        sender = self._sender
        if sender is None:
            return
        try:
            self._send(sender.stop_messages())
        finally:
            self._disconnect()
        logger.info("closed Media Stream %s", sender.stream_sid)

    def _send(self, messages: list[str]) -> None:
        websocket, sender = self._websocket, self._sender
        if websocket is None or sender is None:
            raise CrestaDeliveryError("the Media Streams connection is not open")
        try:
            for message in messages:
                websocket.send(message)
        except (ConnectionClosed, OSError) as exc:
            self._disconnect()
            raise CrestaDeliveryError(
                f"Media Stream {sender.stream_sid} to {redacted_url(self.ws_url)} broke: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def _disconnect(self) -> None:
        self._websocket = self._sender = None
        self._exit_stack.close()
