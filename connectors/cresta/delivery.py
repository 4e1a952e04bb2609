"""The job's synchronous delivery interface, a thin wrapper over ``CrestaDeliveryService``.

``deliver`` hands the chunk to the service and waits for that chunk's receipt. A
synchronous caller cannot keep submitting while Cresta is away, so the wait is bounded:
after ``deliver_timeout_s`` the contact's stream is given up (the chunk is FAILED and the
next chunk opens a new stream, with a new CallId). The non-blocking service itself is the
interface to move to; this wrapper keeps the job's current calls working meanwhile.
"""

from __future__ import annotations

from typing import Any, Mapping

from connectors.cresta.service import CrestaDeliveryService, Delivered
from connectors.cresta.settings import CrestaSettings, create_delivery_service
from pipeline.assembler import AudioChunk
from pipeline.audit import DeliveryReceipt

DEFAULT_DELIVER_TIMEOUT_S = 2.0


class CrestaDelivery:
    def __init__(
        self, service: CrestaDeliveryService, deliver_timeout_s: float = DEFAULT_DELIVER_TIMEOUT_S
    ) -> None:
        self.service = service
        self.deliver_timeout_s = deliver_timeout_s

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "CrestaDelivery":
        return cls(create_delivery_service(CrestaSettings.from_config(config)))

    def deliver(self, chunk: AudioChunk) -> DeliveryReceipt:
        self.service.submit(chunk)
        delivered = self.service.drain(self.deliver_timeout_s)
        if self.service.outstanding:
            self.service.close_contact(chunk.contact_id, grace_ms=0)
            # The service settles a given-up chunk within its adapter's timeouts; this
            # wait only guards against that promise being broken.
            delivered += self.service.drain(timeout_s=120.0)
        return _receipt_of(chunk, delivered)

    def close_contact(self, contact_id: str) -> None:
        self.service.close_contact(contact_id)

    def close_all(self) -> None:
        self.service.close()


def _receipt_of(chunk: AudioChunk, delivered: list[Delivered]) -> DeliveryReceipt:
    receipts = [d.receipt for d in delivered if d.chunk is chunk]
    if len(receipts) != 1:
        raise RuntimeError(f"contact {chunk.contact_id}: chunk {chunk.seq} got {len(receipts)} receipts")
    return receipts[0]
