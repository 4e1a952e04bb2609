"""Non-blocking, ordered delivery of chunks to Cresta, usable from a Flink function.

The caller's thread hands chunks in (``submit``) and collects their receipts
(``poll_receipts``: every contact's or one contact's; ``drain``); it never waits on the
network. Decisions (order, buffer, drop, backoff, breaker) are
``pipeline.delivery_policy.DeliveryPolicy``'s; this module only carries out its actions:
the I/O runs on an asyncio event loop in one background thread, one operation per
contact at a time, through one ``CrestaStreamAdapter`` per contact (reused across
chunks, reopened after failures).

Memory is bounded by construction: the policy decides, synchronously inside ``submit``,
whether a chunk fits its contact's buffer (``buffer_ms`` while Cresta is away or held up,
``burst_ms`` while it answers; else it is DROPPED at once), each contact has at most one
operation queued on the loop, and each socket holds at most the adapter's
``write_limit`` unsent. A slow or stalled Cresta therefore costs dropped audio, never
memory or a blocked caller. Receipts wait, per contact, until polled; the caller polls
them as it goes. In a Flink function keyed by contact (``jobs.functions``)::

    service = create_delivery_service(CrestaSettings.from_config(config))   # open()
    service.submit(chunk)                                                    # per chunk
    for delivered in service.poll_receipts(contact_id): yield audit row      # in the contact's key context
    service.close_contact(contact_id)                                        # ContactClosed
    service.close()                                                          # close()

"SENT" means handed to the socket: Media Streams has no acknowledgement, so audio written
into a connection that Cresta has just cut, before the reset arrives, is SENT and lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from connectors.cresta.adapters import CrestaDeliveryError, CrestaStreamAdapter, StreamContact
from pipeline.assembler import AudioChunk
from pipeline.audit import DeliveryReceipt
from pipeline.delivery_policy import (
    BreakerState,
    Close,
    DeliveryPolicy,
    Open,
    Outcome,
    PolicySettings,
    Release,
    Send,
    WakeAt,
)

logger = logging.getLogger(__name__)


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def chunk_duration_ms(chunk: AudioChunk) -> int:
    """The chunk's audio in whole milliseconds, rounded up so that any audio counts."""
    return math.ceil(chunk.sample_count * 1000 / chunk.sample_rate) if chunk.sample_count else 0


@dataclass(frozen=True)
class Delivered:
    """A chunk and its receipt: one per submitted chunk."""

    chunk: AudioChunk
    receipt: DeliveryReceipt


class CrestaDeliveryService:
    """Delivers chunks to one Cresta endpoint in the background; thread-safe.

    Parameters
    ----------
    new_adapter:
        Makes one contact's adapter, e.g. ``connectors.cresta.adapters.adapter_factory(…)``.
    settings:
        The delivery policy's limits (buffer, attempts, backoff, breaker, close grace).
    attribute_allowlist:
        Contact attributes that may leave the account with the stream.
    epoch_ms, random:
        Wall-clock milliseconds for receipts and the backoff's jitter source.
    """

    def __init__(
        self,
        new_adapter: Callable[[], CrestaStreamAdapter],
        settings: PolicySettings = PolicySettings(),
        *,
        attribute_allowlist: frozenset[str] = frozenset(),
        epoch_ms: Callable[[], int] = _epoch_ms,
        random: Callable[[], float] = random.random,
        name: str = "cresta-delivery",
    ) -> None:
        self._new_adapter = new_adapter
        self.settings = settings
        self.attribute_allowlist = attribute_allowlist
        self._epoch_ms = epoch_ms
        self._policy: DeliveryPolicy[AudioChunk] = DeliveryPolicy(settings, random)
        # One lock for the policy and the receipts; re-entrant because dispatching
        # happens while it is held.
        self._lock = threading.Condition(threading.RLock())
        self._receipts: dict[str, deque[Delivered]] = {}
        self._outstanding = 0
        self._closed = False
        # Touched only on the loop's thread.
        self._adapters: dict[str, CrestaStreamAdapter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"CrestaDeliveryService(contacts={len(self._policy.contact_ids())}, breaker={self.breaker_state.value})"

    def __enter__(self) -> "CrestaDeliveryService":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the caller's side -------------------------------------------------------------

    def submit(self, chunk: AudioChunk) -> None:
        """Queue ``chunk`` behind its contact's earlier chunks; never blocks on I/O."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the delivery service is closed")
            self._outstanding += 1
            self._policy.submit(chunk.contact_id, chunk, chunk_duration_ms(chunk), _monotonic_ms())
            self._dispatch()

    def close_contact(self, contact_id: str, grace_ms: int | None = None) -> None:
        """End the contact's stream once its queued chunks are out, or after ``grace_ms``
        (default: the settings' ``close_grace_ms``), when those still waiting are FAILED."""
        with self._lock:
            self._policy.close_contact(contact_id, _monotonic_ms(), grace_ms)
            self._dispatch()

    def poll_receipts(self, contact_id: str | None = None, timeout_s: float = 0.0) -> list[Delivered]:
        """Every receipt ready now, or only ``contact_id``'s, each contact's in the order
        they came; waits up to ``timeout_s`` for the first one."""
        with self._lock:
            if contact_id is None:
                self._lock.wait_for(lambda: self._receipts, timeout_s)
                receipts = [delivered for ready in self._receipts.values() for delivered in ready]
                self._receipts.clear()
                return receipts
            self._lock.wait_for(lambda: contact_id in self._receipts, timeout_s)
            return list(self._receipts.pop(contact_id, ()))

    def drain(self, timeout_s: float) -> list[Delivered]:
        """Waits up to ``timeout_s`` until every submitted chunk has its receipt, then
        returns the receipts not polled yet."""
        with self._lock:
            self._lock.wait_for(lambda: self._outstanding == 0, timeout_s)
            return self.poll_receipts()

    @property
    def outstanding(self) -> int:
        """Chunks submitted whose receipt is not out yet."""
        with self._lock:
            return self._outstanding

    @property
    def breaker_state(self) -> BreakerState:
        with self._lock:
            return self._policy.breaker.state

    def buffered_ms(self, contact_id: str) -> int:
        """Audio the contact holds unsent (at most the settings' ``burst_ms``, or one chunk)."""
        with self._lock:
            return self._policy.buffered_ms(contact_id)

    def close(self, timeout_s: float = 30.0) -> None:
        """Close every contact (each with its grace), wait up to ``timeout_s`` for that,
        fail whatever is left, and stop. Every chunk has its receipt afterwards.

        ``timeout_s=0`` waits for nothing, for a caller that keeps its unsent chunks
        elsewhere (a Flink task: in its checkpoint); open streams still get their stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._policy.close_all(_monotonic_ms())
            self._dispatch()
            if not self._lock.wait_for(lambda: not self._policy.contact_ids(), timeout_s):
                if timeout_s:
                    logger.warning(
                        "Cresta delivery: %d contacts still busy after %ss; failing their chunks",
                        len(self._policy.contact_ids()),
                        timeout_s,
                    )
                self._policy.abandon()
                self._dispatch()
        asyncio.run_coroutine_threadsafe(self._shut_down(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # --- carrying out the policy's actions ----------------------------------------------

    def _dispatch(self) -> None:
        """Carries out the policy's actions; the caller holds the lock."""
        for action in self._policy.take_actions():
            if isinstance(action, Outcome):
                ready = self._receipts.setdefault(action.item.contact_id, deque())
                ready.append(Delivered(action.item, self._receipt(action)))
                self._outstanding -= 1
                self._lock.notify_all()
            elif isinstance(action, WakeAt):
                delay_s = max(0, action.at_ms - _monotonic_ms()) / 1000
                self._loop.call_soon_threadsafe(self._loop.call_later, delay_s, self._tick)
            elif isinstance(action, Release):
                # Once closing, the adapters stay for the shutdown, which ends the streams
                # of contacts given up on while they were open.
                if not self._closed:
                    self._loop.call_soon_threadsafe(self._adapters.pop, action.contact_id, None)
                self._lock.notify_all()
            else:
                self._loop.call_soon_threadsafe(self._start, action)

    def _receipt(self, outcome: Outcome[AudioChunk]) -> DeliveryReceipt:
        finished = self._epoch_ms()
        return DeliveryReceipt(
            outcome.status,
            attempts=outcome.attempts,
            latency_ms=max(0, finished - outcome.item.assembled_at_ms),
            finished_at_ms=finished,
        )

    def _tick(self) -> None:
        with self._lock:
            self._policy.tick(_monotonic_ms())
            self._dispatch()

    def _start(self, action: Open[AudioChunk] | Send[AudioChunk] | Close) -> None:
        task = self._loop.create_task(self._perform(action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _perform(self, action: Open[AudioChunk] | Send[AudioChunk] | Close) -> None:
        contact_id = action.contact_id
        adapter = self._adapters.get(contact_id)
        if adapter is None:
            adapter = self._adapters[contact_id] = self._new_adapter()
        ok = False
        try:
            if isinstance(action, Open):
                await adapter.open_contact(StreamContact.of_chunk(action.first, self.attribute_allowlist))
            elif isinstance(action, Send):
                await adapter.send_chunk(action.item.track, action.item.pcm)
            else:
                await adapter.close_contact()
            ok = True
        except CrestaDeliveryError as exc:
            logger.warning("Cresta delivery, contact %s: %s", contact_id, exc)
        except Exception:
            # An adapter bug must cost this contact a reconnect, not the whole service.
            logger.exception("Cresta delivery, contact %s: adapter failed unexpectedly", contact_id)
            self._adapters.pop(contact_id, None)
        now = _monotonic_ms()
        with self._lock:
            if isinstance(action, Open):
                (self._policy.opened if ok else self._policy.open_failed)(contact_id, now)
            elif isinstance(action, Send):
                (self._policy.sent if ok else self._policy.send_failed)(contact_id, now)
            else:
                self._policy.closed(contact_id, now)
            self._dispatch()

    async def _shut_down(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        grace_s = self.settings.close_grace_ms / 1000
        still_open = [adapter for adapter in self._adapters.values() if adapter.is_open]
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(adapter.close_contact(), grace_s) for adapter in still_open), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, (CrestaDeliveryError, TimeoutError)):
                logger.error("Cresta delivery: a stream failed unexpectedly while closing", exc_info=outcome)
        self._adapters.clear()
