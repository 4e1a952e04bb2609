"""When to open, send, close, wait or drop: the delivery policy for one Cresta endpoint, with no I/O.

The delivery service (``connectors.cresta.service``) feeds this state machine what happens
(a chunk submitted, a stream opened or failed, a send done or failed, a contact closing,
time passing) and carries out the actions it asks for. Nothing here sleeps, reads a
clock or touches a socket: time comes in as ``now_ms`` (monotonic milliseconds) and
randomness (the backoff's jitter) from an injected function, so every rule can be
driven step by step in tests.

Rules, in the order they apply:

- **Order and reuse.** Each contact has one FIFO queue and at most one operation in
  flight, so its chunks leave in the order they came; its stream stays open between
  chunks and is closed only when the contact is closed (a close is queued behind the
  chunks before it).
- **Bounded buffer.** Chunks waiting for a contact (not yet sent, including the one in
  flight) hold at most ``buffer_ms`` of audio while Cresta is not answering that contact:
  its last open or send failed, the breaker is not closed, or an operation has been in
  flight for ``stall_ms`` or more. While Cresta answers, the bound is ``burst_ms``, so a
  backlog submitted all at once (a job restoring from a checkpoint, a connector worker
  resuming a contact) goes out instead of being DROPPED behind a healthy stream. An
  empty buffer takes any one chunk, so a chunk longer than the buffer still flows. A
  chunk that does not fit is DROPPED and the contact starts **dropping**: every later
  chunk is DROPPED too, until Cresta answers again on that contact (a stream opens or a
  send succeeds). That keeps what reaches Cresta one gap per outage instead of a
  scatter of holes.
- **Reconnect with backoff.** A failed open or send ends the stream; the contact waits
  ``backoff_base_ms`` × 2^(failures − 1), at most ``backoff_max_ms``, less a random part of
  up to ``backoff_jitter`` of it (so contacts cut together do not reconnect in lockstep),
  then opens a new stream and resends from the head of its queue.
- **Attempts.** A chunk whose send failed ``max_attempts`` times is FAILED, so a chunk
  that breaks every stream cannot hold its contact forever.
- **Circuit breaker.** ``breaker_threshold`` failures in a row on the endpoint (any
  contact) open the breaker: for ``breaker_cooldown_ms`` nothing is opened or sent to
  it. Then one operation (a probe) may go; its success closes the breaker, its failure
  opens it again. Any success closes it.
- **Closing.** A contact's close waits at most ``close_grace_ms`` for the chunks queued
  before it; those still waiting then are FAILED (the one in flight finishes first).

Every submitted chunk gets exactly one ``Outcome``: SENT, FAILED, DROPPED or SKIPPED
(no audio).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar, Union

from pipeline.audit import DeliveryStatus

Item = TypeVar("Item")


@dataclass(frozen=True)
class PolicySettings:
    """The policy's limits; the defaults are the pipeline's."""

    #: Five seconds of audio ride out a short outage (DESIGN §5, seed Q10).
    buffer_ms: int = 5000
    #: A minute of audio (both tracks: 30 s of a call) replayed at once still goes out;
    #: the bound keeps a Cresta that reads slower than real time from costing memory
    #: without end.
    burst_ms: int = 60_000
    #: A loopback or regional round trip is milliseconds; an operation held a second is
    #: Cresta not reading.
    stall_ms: int = 1000
    max_attempts: int = 3
    backoff_base_ms: int = 100
    #: Delivery resumes within 3 s of Cresta's return: after an outage the next attempt
    #: comes at most one backoff or one breaker cooldown after its end.
    backoff_max_ms: int = 2000
    backoff_jitter: float = 0.5
    breaker_threshold: int = 5
    breaker_cooldown_ms: int = 2000
    close_grace_ms: int = 5000

    def __post_init__(self) -> None:
        checks = {
            "buffer_ms": self.buffer_ms >= 0,
            "burst_ms": self.burst_ms >= self.buffer_ms,
            "stall_ms": self.stall_ms >= 0,
            "max_attempts": self.max_attempts >= 1,
            "backoff_base_ms": self.backoff_base_ms >= 0,
            "backoff_max_ms": self.backoff_max_ms >= self.backoff_base_ms,
            "backoff_jitter": 0.0 <= self.backoff_jitter <= 1.0,
            "breaker_threshold": self.breaker_threshold >= 1,
            "breaker_cooldown_ms": self.breaker_cooldown_ms >= 0,
            "close_grace_ms": self.close_grace_ms >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid delivery policy settings: {', '.join(bad)} ({self})")


# --- actions: what the driver must do ----------------------------------------------------


@dataclass(frozen=True)
class Open(Generic[Item]):
    """Open a stream for the contact; ``first`` is the chunk it will carry first."""

    contact_id: str
    first: Item


@dataclass(frozen=True)
class Send(Generic[Item]):
    contact_id: str
    item: Item


@dataclass(frozen=True)
class Close:
    """End the contact's open stream (final messages, then close)."""

    contact_id: str


@dataclass(frozen=True)
class Release:
    """The policy forgot the contact: its per-contact resources may go."""

    contact_id: str


@dataclass(frozen=True)
class WakeAt:
    """Call ``tick`` at ``at_ms`` (a backoff, a breaker cooldown or a close grace ends)."""

    at_ms: int


@dataclass(frozen=True)
class Outcome(Generic[Item]):
    item: Item
    status: DeliveryStatus
    attempts: int


Action = Union[Open, Send, Close, Release, WakeAt, Outcome]


# --- circuit breaker ---------------------------------------------------------------------


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Consecutive-failure breaker for one endpoint; every transition is in this class."""

    def __init__(self, threshold: int, cooldown_ms: int) -> None:
        self.threshold = threshold
        self.cooldown_ms = cooldown_ms
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.open_until_ms = 0
        self._probing = False

    def allows(self, now_ms: int) -> bool:
        """Whether an operation may start now; in HALF_OPEN only the first (the probe)."""
        if self.state is BreakerState.OPEN and now_ms >= self.open_until_ms:
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is BreakerState.OPEN:
            return False
        return self.state is BreakerState.CLOSED or not self._probing

    def started(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def succeeded(self) -> bool:
        """Record a success; True when that closed an open or half-open breaker."""
        reopened = self.state is not BreakerState.CLOSED
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._probing = False
        return reopened

    def failed(self, now_ms: int) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state = BreakerState.OPEN
            self.open_until_ms = now_ms + self.cooldown_ms
            self._probing = False


# --- per-contact state -------------------------------------------------------------------


@dataclass
class _Chunk(Generic[Item]):
    item: Item
    duration_ms: int
    attempts: int = 0


@dataclass
class _CloseMark:
    deadline_ms: int


class _InFlight(enum.Enum):
    OPEN = "open"
    SEND = "send"
    CLOSE = "close"


@dataclass
class _Contact(Generic[Item]):
    queue: deque[Union[_Chunk[Item], _CloseMark]] = field(default_factory=deque)
    buffered_ms: int = 0
    buffered_chunks: int = 0
    stream_open: bool = False
    in_flight: _InFlight | None = None
    in_flight_since_ms: int = 0
    failures: int = 0
    retry_at_ms: int | None = None
    dropping: bool = False
    #: The earliest close grace still running, so most calls skip the queue scan.
    first_deadline_ms: int | None = None


class DeliveryPolicy(Generic[Item]):
    """The delivery state machine of one endpoint. Not thread-safe: one caller at a time.

    Inputs are the methods below; each returns nothing and queues actions, which
    ``take_actions`` returns in order and clears.

    >>> policy = DeliveryPolicy(PolicySettings(buffer_ms=200))
    >>> policy.submit("c1", "chunk-1", 100, now_ms=0)
    >>> policy.take_actions()
    [Open(contact_id='c1', first='chunk-1')]
    >>> policy.submit("c1", "chunk-2", 100, now_ms=1); policy.submit("c1", "chunk-3", 100, now_ms=2)
    >>> policy.take_actions()
    []
    >>> policy.submit("c1", "chunk-4", 100, now_ms=1500)  # the open has been held 1.5 s
    >>> policy.take_actions()
    [Outcome(item='chunk-4', status=<DeliveryStatus.DROPPED: 'DROPPED'>, attempts=0)]
    >>> policy.opened("c1", now_ms=1501); policy.take_actions()
    [Send(contact_id='c1', item='chunk-1')]
    >>> policy.sent("c1", now_ms=1502); policy.take_actions()
    [Outcome(item='chunk-1', status=<DeliveryStatus.SENT: 'SENT'>, attempts=1), Send(contact_id='c1', item='chunk-2')]
    """

    def __init__(self, settings: PolicySettings = PolicySettings(), random: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown_ms)
        self._random = random
        self._contacts: dict[str, _Contact[Item]] = {}
        self._actions: list[Action] = []

    # --- inspection ------------------------------------------------------------------

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def contact_ids(self) -> list[str]:
        return list(self._contacts)

    def buffered_ms(self, contact_id: str) -> int:
        contact = self._contacts.get(contact_id)
        return contact.buffered_ms if contact else 0

    def buffered_chunks(self, contact_id: str) -> int:
        contact = self._contacts.get(contact_id)
        return contact.buffered_chunks if contact else 0

    def is_dropping(self, contact_id: str) -> bool:
        contact = self._contacts.get(contact_id)
        return contact is not None and contact.dropping

    # --- inputs ----------------------------------------------------------------------

    def submit(self, contact_id: str, item: Item, duration_ms: int, now_ms: int) -> None:
        if duration_ms <= 0:
            self._actions.append(Outcome(item, DeliveryStatus.SKIPPED, 0))
            return
        contact = self._contacts.setdefault(contact_id, _Contact())
        limit = self.settings.burst_ms if self._answering(contact, now_ms) else self.settings.buffer_ms
        fits = contact.buffered_chunks == 0 or contact.buffered_ms + duration_ms <= limit
        if contact.dropping or not fits:
            contact.dropping = True
            self._actions.append(Outcome(item, DeliveryStatus.DROPPED, 0))
            return
        contact.queue.append(_Chunk(item, duration_ms))
        contact.buffered_ms += duration_ms
        contact.buffered_chunks += 1
        self._advance(contact_id, now_ms)

    def close_contact(self, contact_id: str, now_ms: int, grace_ms: int | None = None) -> None:
        """End the contact's stream after the chunks already queued (within the grace)."""
        contact = self._contacts.get(contact_id)
        if contact is None:
            return
        grace = self.settings.close_grace_ms if grace_ms is None else grace_ms
        deadline = now_ms + grace
        contact.queue.append(_CloseMark(deadline))
        if contact.first_deadline_ms is None or deadline < contact.first_deadline_ms:
            contact.first_deadline_ms = deadline
        if grace > 0:
            self._actions.append(WakeAt(deadline))
        self._advance(contact_id, now_ms)

    def close_all(self, now_ms: int, grace_ms: int | None = None) -> None:
        for contact_id in list(self._contacts):
            self.close_contact(contact_id, now_ms, grace_ms)

    def abandon(self) -> None:
        """Give up on everything now (shutdown): every chunk still held is FAILED,
        including those in flight, whose results will be ignored."""
        for contact_id, contact in self._contacts.items():
            for entry in contact.queue:
                if isinstance(entry, _Chunk):
                    self._actions.append(Outcome(entry.item, DeliveryStatus.FAILED, entry.attempts))
            self._actions.append(Release(contact_id))
        self._contacts.clear()

    def opened(self, contact_id: str, now_ms: int) -> None:
        contact = self._finish(contact_id, _InFlight.OPEN)
        if contact is None:
            return
        contact.stream_open = True
        self._answered(contact_id, contact, now_ms)

    def open_failed(self, contact_id: str, now_ms: int) -> None:
        contact = self._finish(contact_id, _InFlight.OPEN)
        if contact is None:
            return
        self._failed(contact_id, contact, now_ms)

    def sent(self, contact_id: str, now_ms: int) -> None:
        contact = self._finish(contact_id, _InFlight.SEND)
        if contact is None:
            return
        self._answered(contact_id, contact, now_ms, DeliveryStatus.SENT)

    def send_failed(self, contact_id: str, now_ms: int) -> None:
        contact = self._finish(contact_id, _InFlight.SEND)
        if contact is None:
            return
        head = contact.queue[0]
        assert isinstance(head, _Chunk)
        if head.attempts >= self.settings.max_attempts:
            self._pop_chunk(contact, DeliveryStatus.FAILED)
        self._failed(contact_id, contact, now_ms)

    def closed(self, contact_id: str, now_ms: int) -> None:
        """The stream's close finished, cleanly or not: either way it is gone."""
        contact = self._finish(contact_id, _InFlight.CLOSE)
        if contact is None:
            return
        contact.stream_open = False
        contact.queue.popleft()
        self._advance(contact_id, now_ms)

    def tick(self, now_ms: int) -> None:
        """Time has reached a ``WakeAt``: expired graces, ended backoffs and cooldowns."""
        self._advance_all(now_ms)

    # --- transitions -----------------------------------------------------------------

    def _answering(self, contact: _Contact[Item], now_ms: int) -> bool:
        """Whether Cresta is taking this contact's audio as fast as it is asked to."""
        held_up = contact.in_flight is not None and now_ms - contact.in_flight_since_ms >= self.settings.stall_ms
        return contact.failures == 0 and self.breaker.state is BreakerState.CLOSED and not held_up

    def _advance(self, contact_id: str, now_ms: int) -> None:
        """Start the contact's next operation, if it has one and may start it now."""
        contact = self._contacts.get(contact_id)
        if contact is None:
            return
        self._expire_marks(contact, now_ms)
        if contact.in_flight is not None:
            return
        while contact.queue and isinstance(contact.queue[0], _CloseMark) and not contact.stream_open:
            contact.queue.popleft()
        if not contact.queue:
            if not contact.stream_open:
                del self._contacts[contact_id]
                self._actions.append(Release(contact_id))
            return
        head = contact.queue[0]
        if isinstance(head, _CloseMark):
            self._start(contact, _InFlight.CLOSE, now_ms)
            self._actions.append(Close(contact_id))
            return
        if not contact.stream_open and contact.retry_at_ms is not None and now_ms < contact.retry_at_ms:
            return
        if not self.breaker.allows(now_ms):
            return
        self.breaker.started()
        if contact.stream_open:
            head.attempts += 1
            self._start(contact, _InFlight.SEND, now_ms)
            self._actions.append(Send(contact_id, head.item))
        else:
            self._start(contact, _InFlight.OPEN, now_ms)
            self._actions.append(Open(contact_id, head.item))

    @staticmethod
    def _start(contact: _Contact[Item], operation: _InFlight, now_ms: int) -> None:
        contact.in_flight = operation
        contact.in_flight_since_ms = now_ms

    def _advance_all(self, now_ms: int) -> None:
        for contact_id in list(self._contacts):
            self._advance(contact_id, now_ms)

    def _finish(self, contact_id: str, expected: _InFlight) -> _Contact[Item] | None:
        contact = self._contacts.get(contact_id)
        if contact is None:
            return None  # abandoned while the operation ran
        if contact.in_flight is not expected:
            raise RuntimeError(f"contact {contact_id}: {expected.value} result while {contact.in_flight} in flight")
        contact.in_flight = None
        return contact

    def _answered(
        self, contact_id: str, contact: _Contact[Item], now_ms: int, head_status: DeliveryStatus | None = None
    ) -> None:
        """Cresta took an open or a send: the contact and the breaker recover."""
        contact.failures = 0
        contact.retry_at_ms = None
        contact.dropping = False
        # The breaker closes before the chunk is reported SENT, so no SENT is ever
        # reported while it is open.
        breaker_recovered = self.breaker.succeeded()
        if head_status is not None:
            self._pop_chunk(contact, head_status)
        if breaker_recovered:
            self._advance_all(now_ms)
        else:
            self._advance(contact_id, now_ms)

    def _failed(self, contact_id: str, contact: _Contact[Item], now_ms: int) -> None:
        contact.stream_open = False
        contact.failures += 1
        delay = min(self.settings.backoff_max_ms, self.settings.backoff_base_ms * 2 ** (contact.failures - 1))
        delay = round(delay * (1.0 - self.settings.backoff_jitter * self._random()))
        contact.retry_at_ms = now_ms + delay
        self._actions.append(WakeAt(contact.retry_at_ms))
        self.breaker.failed(now_ms)
        if self.breaker.state is BreakerState.OPEN:
            self._actions.append(WakeAt(self.breaker.open_until_ms))
        self._advance(contact_id, now_ms)

    def _pop_chunk(self, contact: _Contact[Item], status: DeliveryStatus) -> None:
        head = contact.queue.popleft()
        assert isinstance(head, _Chunk)
        contact.buffered_ms -= head.duration_ms
        contact.buffered_chunks -= 1
        self._actions.append(Outcome(head.item, status, head.attempts))

    def _expire_marks(self, contact: _Contact[Item], now_ms: int) -> None:
        """Chunks queued before a close whose grace has run out are FAILED."""
        if contact.first_deadline_ms is None or now_ms < contact.first_deadline_ms:
            return
        last_expired = 0
        pending_deadlines = []
        for index, entry in enumerate(contact.queue):
            if isinstance(entry, _CloseMark):
                if entry.deadline_ms <= now_ms:
                    last_expired = index
                else:
                    pending_deadlines.append(entry.deadline_ms)
        contact.first_deadline_ms = min(pending_deadlines, default=None)
        in_flight_head = contact.in_flight in (_InFlight.SEND, _InFlight.CLOSE)
        kept: deque[Union[_Chunk[Item], _CloseMark]] = deque()
        for index, entry in enumerate(contact.queue):
            if isinstance(entry, _Chunk) and index < last_expired and not (index == 0 and in_flight_head):
                contact.buffered_ms -= entry.duration_ms
                contact.buffered_chunks -= 1
                self._actions.append(Outcome(entry.item, DeliveryStatus.FAILED, entry.attempts))
            else:
                kept.append(entry)
        contact.queue = kept
