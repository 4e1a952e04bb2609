"""CrestaDeliveryService against a fake Cresta: adapters that record what they carry and
fail, hang or refuse on demand."""

import asyncio
import logging
import threading
import time

import pytest

from connectors.cresta.adapters import CrestaDeliveryError, StreamContact
from connectors.cresta.service import CrestaDeliveryService, chunk_duration_ms
from pipeline.assembler import AudioChunk, ContactInfo
from pipeline.audit import DeliveryStatus
from pipeline.delivery_policy import BreakerState, PolicySettings
from pipeline.records import Track

SENT, FAILED, DROPPED, SKIPPED = (
    DeliveryStatus.SENT,
    DeliveryStatus.FAILED,
    DeliveryStatus.DROPPED,
    DeliveryStatus.SKIPPED,
)
#: Short waits so that failing tests fail fast; every wait here is only a safety net.
SAFETY_S = 20.0
FAST = PolicySettings(
    backoff_base_ms=1, backoff_max_ms=5, breaker_cooldown_ms=5, close_grace_ms=2000, backoff_jitter=0.0
)


class FakeCresta:
    """One fake endpoint: what its adapters received, and its faults."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened: list[StreamContact] = []
        self.received: dict[str, list[bytes]] = {}
        self.stops: list[str] = []
        self.refuse = False
        self.break_sends = False
        #: Sends that raise an unexpected exception, as a bug in an adapter would.
        self.adapter_bugs = 0
        self.sends_flow = threading.Event()
        self.sends_flow.set()

    def new_adapter(self) -> "FakeAdapter":
        return FakeAdapter(self)


class FakeAdapter:
    def __init__(self, cresta: FakeCresta) -> None:
        self.cresta = cresta
        self.contact: StreamContact | None = None

    @property
    def is_open(self) -> bool:
        return self.contact is not None

    async def open_contact(self, contact: StreamContact) -> None:
        if self.cresta.refuse:
            raise CrestaDeliveryError("refused: HTTP 503", 503)
        self.contact = contact
        with self.cresta.lock:
            self.cresta.opened.append(contact)

    async def send_chunk(self, track: Track, pcm16: bytes) -> None:
        while not self.cresta.sends_flow.is_set():
            await asyncio.sleep(0.001)
        if self.cresta.adapter_bugs:
            self.cresta.adapter_bugs -= 1
            raise ZeroDivisionError("a bug in an adapter")
        if self.cresta.break_sends:
            self.contact = None
            raise CrestaDeliveryError("stream broke")
        with self.cresta.lock:
            self.cresta.received.setdefault(self.contact.contact_id, []).append(pcm16)

    async def close_contact(self) -> None:
        if self.contact is not None:
            with self.cresta.lock:
                self.cresta.stops.append(self.contact.contact_id)
        self.contact = None


def chunk(contact_id: str, seq: int, samples: int = 800, track: Track = Track.CUSTOMER) -> AudioChunk:
    pcm = seq.to_bytes(2, "little") * samples
    info = ContactInfo("instance-1", "agent-1", "queue-1", {"queue": "billing", "ssn": "123"})
    return AudioChunk(contact_id, track, seq, 1_000 * seq, 8000, pcm, False, info, False, 1_000)


@pytest.fixture
def cresta():
    return FakeCresta()


@pytest.fixture
def make_service(cresta):
    services = []

    def make(settings=FAST, **kwargs):
        service = CrestaDeliveryService(cresta.new_adapter, settings, **kwargs)
        services.append(service)
        return service

    yield make
    for service in services:
        service.close(timeout_s=SAFETY_S)


def drain_all(service) -> list:
    delivered = service.drain(SAFETY_S)
    assert service.outstanding == 0, "a chunk never got its receipt"
    return delivered


def by_contact(delivered) -> dict[str, list[tuple[int, DeliveryStatus]]]:
    result: dict[str, list] = {}
    for d in delivered:
        result.setdefault(d.chunk.contact_id, []).append((d.chunk.seq, d.receipt.status))
    return result


def test_each_contact_s_chunks_arrive_in_order_over_one_stream(cresta, make_service):
    service = make_service(attribute_allowlist=frozenset({"queue"}))
    contacts = [f"contact-{n}" for n in range(5)]
    for seq in range(20):
        for contact in contacts:
            service.submit(chunk(contact, seq))
    delivered = drain_all(service)
    assert len(delivered) == 100
    for contact in contacts:
        assert [s for s, _ in by_contact(delivered)[contact]] == list(range(20))
        assert {status for _, status in by_contact(delivered)[contact]} == {SENT}
        assert cresta.received[contact] == [chunk(contact, seq).pcm for seq in range(20)]
    assert sorted(c.contact_id for c in cresta.opened) == contacts
    assert cresta.opened[0].attributes == {"queue": "billing"}
    assert cresta.opened[0].agent_id == "agent-1" and cresta.opened[0].instance_id == "instance-1"


def test_receipts_carry_attempts_latency_and_finish_time(make_service):
    service = make_service(epoch_ms=lambda: 1_250)
    service.submit(chunk("c", 1))
    (delivered,) = drain_all(service)
    assert delivered.receipt.status is SENT
    assert (delivered.receipt.attempts, delivered.receipt.latency_ms, delivered.receipt.finished_at_ms) == (1, 250, 1_250)


def test_an_empty_chunk_is_skipped(make_service):
    service = make_service()
    service.submit(chunk("c", 1, samples=0))
    (delivered,) = drain_all(service)
    assert (delivered.receipt.status, delivered.receipt.attempts) == (SKIPPED, 0)


def test_a_few_samples_count_as_audio():
    assert chunk_duration_ms(chunk("c", 1, samples=1)) == 1


def test_a_hung_cresta_never_blocks_the_caller_and_memory_stays_bounded(cresta, make_service):
    """The backpressure test: sends hang past the stall time, the caller keeps submitting
    100 ms chunks far faster than real time; the buffer holds 1 s, the rest is DROPPED
    at once."""
    cresta.sends_flow.clear()
    service = make_service(PolicySettings(buffer_ms=1000, stall_ms=50, close_grace_ms=2000))
    service.submit(chunk("c", 0))
    _wait_for(lambda: cresta.opened)
    time.sleep(0.1)  # the first send is held past the stall time
    for seq in range(1, 200):
        service.submit(chunk("c", seq))
        assert service.buffered_ms("c") <= 1000
    dropped = service.poll_receipts()
    assert [d.chunk.seq for d in dropped] == list(range(10, 200))
    assert {d.receipt.status for d in dropped} == {DROPPED}
    assert service.outstanding == 10

    cresta.sends_flow.set()
    delivered = drain_all(service)
    assert [(d.chunk.seq, d.receipt.status) for d in delivered] == [(seq, SENT) for seq in range(10)]
    service.submit(chunk("c", 200))
    (after,) = drain_all(service)
    assert after.receipt.status is SENT


def test_a_burst_larger_than_the_buffer_is_all_sent_while_cresta_answers(cresta, make_service):
    """A job restored from a checkpoint submits its backlog at once: 5 s of audio against
    a 0.5 s outage buffer, and nothing is DROPPED."""
    service = make_service(PolicySettings(buffer_ms=500, **_fast_timers()))
    for seq in range(50):
        service.submit(chunk("c", seq))
    delivered = drain_all(service)
    assert [(d.chunk.seq, d.receipt.status) for d in delivered] == [(seq, SENT) for seq in range(50)]
    assert cresta.received["c"] == [chunk("c", seq).pcm for seq in range(50)]


def test_a_burst_beyond_the_burst_bound_is_dropped(cresta, make_service):
    cresta.sends_flow.clear()
    service = make_service(PolicySettings(buffer_ms=500, burst_ms=2000, **_fast_timers()))
    for seq in range(30):
        service.submit(chunk("c", seq))
    assert service.buffered_ms("c") == 2000
    cresta.sends_flow.set()
    delivered = drain_all(service)
    assert [d.chunk.seq for d in delivered if d.receipt.status is SENT] == list(range(20))
    assert [d.chunk.seq for d in delivered if d.receipt.status is DROPPED] == list(range(20, 30))


def test_an_outage_is_ridden_out_in_order_and_the_breaker_recovers(cresta, make_service):
    # The outage bound from the first chunk on, however fast the failure is reported.
    service = make_service(PolicySettings(buffer_ms=500, burst_ms=500, breaker_threshold=2, **_fast_timers()))
    service.submit(chunk("c", 0))
    drain_all(service)
    cresta.break_sends = cresta.refuse = True
    for seq in range(1, 9):
        service.submit(chunk("c", seq))
    dropped = service.poll_receipts()
    assert [(d.chunk.seq, d.receipt.status) for d in dropped] == [(seq, DROPPED) for seq in range(6, 9)]
    _wait_for(lambda: service.breaker_state is not BreakerState.CLOSED)

    cresta.break_sends = cresta.refuse = False
    delivered = drain_all(service)
    assert [(d.chunk.seq, d.receipt.status) for d in delivered] == [(seq, SENT) for seq in range(1, 6)]
    assert delivered[0].receipt.attempts == 2  # its first send broke the stream
    assert service.breaker_state is BreakerState.CLOSED
    assert cresta.received["c"] == [chunk("c", seq).pcm for seq in range(6)]
    assert len(cresta.opened) >= 2


def test_an_adapter_bug_costs_the_contact_a_reconnect_only(cresta, make_service):
    service = make_service()
    cresta.adapter_bugs = 1
    service.submit(chunk("c", 1))
    (delivered,) = drain_all(service)
    assert (delivered.receipt.status, delivered.receipt.attempts) == (SENT, 2)
    assert len(cresta.opened) == 2


def test_receipts_are_polled_per_contact_each_in_the_order_they_came(cresta, make_service):
    service = make_service()
    for seq in range(4):
        service.submit(chunk("a", seq))
        service.submit(chunk("b", seq, samples=0 if seq == 2 else 800))
    _wait_for(lambda: service.outstanding == 0)
    assert [(d.chunk.seq, d.receipt.status) for d in service.poll_receipts("a")] == [(s, SENT) for s in range(4)]
    assert service.poll_receipts("a") == []
    b = service.poll_receipts()
    assert {d.chunk.contact_id for d in b} == {"b"}
    # An empty chunk is SKIPPED at once, so it may come ahead of chunks still on their way.
    assert sorted((d.chunk.seq, d.receipt.status) for d in b) == [(0, SENT), (1, SENT), (2, SKIPPED), (3, SENT)]
    assert service.poll_receipts() == []


def test_a_contact_s_poll_never_returns_nor_waits_for_another_contact_s_receipts(cresta, make_service):
    cresta.sends_flow.clear()
    service = make_service()
    service.submit(chunk("slow", 0))
    service.submit(chunk("other", 0, samples=0))
    assert service.poll_receipts("slow") == []
    assert [(d.chunk.contact_id, d.receipt.status) for d in service.poll_receipts("other")] == [("other", SKIPPED)]

    cresta.sends_flow.set()
    (delivered,) = service.poll_receipts("slow", timeout_s=SAFETY_S)
    assert (delivered.chunk.contact_id, delivered.receipt.status) == ("slow", SENT)
    assert service.outstanding == 0 and service.poll_receipts() == []


def test_close_contact_sends_the_stop_after_the_queued_chunks(cresta, make_service):
    service = make_service()
    for seq in range(3):
        service.submit(chunk("c", seq))
    service.close_contact("c")
    drain_all(service)
    _wait_for(lambda: cresta.stops == ["c"])
    assert len(cresta.received["c"]) == 3


def test_close_with_cresta_down_fails_what_is_left_and_every_chunk_has_its_receipt(cresta, make_service):
    cresta.refuse = True
    service = make_service(PolicySettings(close_grace_ms=50, **_fast_timers()))
    for seq in range(5):
        service.submit(chunk("c", seq))
    service.close(timeout_s=SAFETY_S)
    delivered = service.poll_receipts()
    assert [(d.chunk.seq, d.receipt.status) for d in delivered] == [(seq, FAILED) for seq in range(5)]
    assert service.outstanding == 0
    with pytest.raises(RuntimeError, match="closed"):
        service.submit(chunk("c", 9))


def test_close_gives_up_on_a_hung_cresta_after_its_timeout(cresta, make_service):
    cresta.sends_flow.clear()
    service = make_service()
    service.submit(chunk("c", 0))
    service.submit(chunk("c", 1))
    service.close(timeout_s=0.05)
    delivered = service.poll_receipts()
    assert sorted((d.chunk.seq, d.receipt.status) for d in delivered) == [(0, FAILED), (1, FAILED)]
    assert service.outstanding == 0


def test_close_without_waiting_fails_what_is_queued_at_once_and_still_stops_open_streams(cresta, make_service, caplog):
    service = make_service()
    service.submit(chunk("c", 0))
    assert [d.receipt.status for d in drain_all(service)] == [SENT]
    cresta.sends_flow.clear()
    service.submit(chunk("c", 1))
    service.submit(chunk("c", 2))
    with caplog.at_level(logging.WARNING):
        service.close(timeout_s=0)
    assert [(d.chunk.seq, d.receipt.status) for d in service.poll_receipts()] == [(1, FAILED), (2, FAILED)]
    assert cresta.stops == ["c"]
    assert caplog.records == []


def _fast_timers() -> dict:
    return {"backoff_base_ms": 1, "backoff_max_ms": 5, "breaker_cooldown_ms": 5, "backoff_jitter": 0.0}


def _wait_for(condition) -> None:
    done = threading.Event()
    for _ in range(int(SAFETY_S / 0.005)):
        if condition():
            return
        done.wait(0.005)
    raise AssertionError("condition not reached")
