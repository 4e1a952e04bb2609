"""Chunk delivery to Cresta from inside the job: one Media Stream per contact.

This first version sends synchronously and reports each chunk's outcome as a
``DeliveryReceipt``; a failed send closes the contact's stream so the next chunk
reconnects (with a new CallId, as Cresta requires).
"""

from __future__ import annotations

import logging
import os
import time

from connectors.cresta.auth import CrestaTokenProvider
from connectors.cresta.media_streams_client import CrestaDeliveryError, MediaStreamsConnection
from pipeline.assembler import AudioChunk
from pipeline.audit import DeliveryReceipt, DeliveryStatus
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

CLIENT_ID_ENV = "CRESTA_CLIENT_ID"
CLIENT_SECRET_ENV = "CRESTA_CLIENT_SECRET"


def _now_ms() -> int:
    return int(time.time() * 1000)


class CrestaDelivery:
    def __init__(
        self,
        ws_url: str,
        media_token: str,
        token_provider: CrestaTokenProvider,
        attribute_allowlist: frozenset[str] = frozenset(),
    ) -> None:
        self.ws_url = ws_url
        self.media_token = media_token
        self.token_provider = token_provider
        self.attribute_allowlist = attribute_allowlist
        self.connections: dict[str, MediaStreamsConnection] = {}

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "CrestaDelivery":
        allowlist = frozenset(a.strip() for a in config["cresta.attribute_allowlist"].split(",") if a.strip())
        provider = CrestaTokenProvider(
            config["cresta.auth_url"], os.environ.get(CLIENT_ID_ENV, ""), os.environ.get(CLIENT_SECRET_ENV, "")
        )
        return cls(config["cresta.ws_url"], config["cresta.media_token"], provider, allowlist)

    def deliver(self, chunk: AudioChunk) -> DeliveryReceipt:
        started = _now_ms()
        if chunk.sample_count == 0:
            return DeliveryReceipt(DeliveryStatus.SKIPPED, attempts=0, latency_ms=0, finished_at_ms=started)
        try:
            connection = self._connection_for(chunk)
            connection.send_chunk(chunk.track.label, chunk.pcm)
            status = DeliveryStatus.SENT
        except CrestaDeliveryError as exc:
            log.warning("contact %s: chunk %s/%d not delivered: %s", chunk.contact_id, chunk.track.label, chunk.seq, exc)
            self.close_contact(chunk.contact_id)
            status = DeliveryStatus.FAILED
        finished = _now_ms()
        return DeliveryReceipt(status, attempts=1, latency_ms=finished - chunk.assembled_at_ms, finished_at_ms=finished)

    def close_contact(self, contact_id: str) -> None:
        connection = self.connections.pop(contact_id, None)
        if connection is not None:
            try:
                connection.close()
            except CrestaDeliveryError as exc:
                log.warning("contact %s: closing the Media Stream failed: %s", contact_id, exc)

    def close_all(self) -> None:
        for contact_id in list(self.connections):
            self.close_contact(contact_id)

    def _connection_for(self, chunk: AudioChunk) -> MediaStreamsConnection:
        connection = self.connections.get(chunk.contact_id)
        if connection is None:
            connection = MediaStreamsConnection(
                self.ws_url, self.media_token, self.token_provider.token, account_sid=chunk.info.instance_id
            )
            attributes = {k: v for k, v in chunk.info.attributes.items() if k in self.attribute_allowlist}
            connection.open(chunk.contact_id, attributes, agent_id=chunk.info.agent_id)
            self.connections[chunk.contact_id] = connection
        return connection
