"""Batched writes of binary records to a Kinesis Data Stream, never reordering a partition key.

``KinesisRecordProducer.put`` queues a record; background sender threads write records
with PutRecords (up to 500 records / 5 MiB per call, the API's limits). ``put`` blocks
while ``max_buffered_records`` records are unwritten, so a slow or throttled stream slows
the reader instead of growing memory.

Ordering
--------
What the service promises, from the Kinesis API reference (the same text is in botocore's
``kinesis`` service model): for PutRecords, "Kinesis Data Streams attempts to process all
records in each PutRecords request. A single record failure does not stop the processing
of subsequent records. As a result, PutRecords doesn't guarantee the ordering of records.
If you need to read records in the same order they are written to the stream, use
PutRecord instead of PutRecords, and write to the same shard"; "all data records with the
same partition key map to the same shard"; and for PutRecord, "Sequence numbers increase
over time and are specific to a shard".

So a failed record says nothing about the records behind it in the same request: with
frames f and f+1 of one contact in one call, f can fail (throttled, ``InternalFailure``)
while f+1 is written, and no retry can put f back in front of it. Any scheme that sends
a key's next record before the service has confirmed the previous one can reorder that
key. Fewer round trips per contact would take fewer records per contact (several frames
packed into one), and the record format is fixed (``pipeline/records.py``).

The rule here: **per partition key, at most one record is in flight, and it is the oldest
unwritten record of that key.** A key's next record is sent only after the response that
confirms its predecessor (a SequenceNumber in its result). A PutRecords call therefore
holds at most one record per key, and up to ``max_calls_in_flight`` calls run at once, no
key in two of them. Why that is correct:

- Order: record n+1 of a key is sent after the response that confirmed record n, so the
  service stores it after n, on the same shard, where sequence numbers grow with time.
  (A reshard moves a key to a child shard; order across it is the consumer's part: read
  a parent shard to its end before its children.)
- Nothing lost: a record leaves the buffer only when its result carries a SequenceNumber.
  A record whose result has an ErrorCode, or that was in a call answered with an error,
  stays at the head of its key and goes again, before anything newer of that key.
- Nothing doubled by partial failures or throttling: a record whose result says it failed
  was not written, and a call answered with an error wrote nothing, so sending it again
  writes it once. Only an ambiguous failure (the connection broke or timed out after the
  service may have stored the call; botocore retries those by itself too) can write a
  record twice. The copy is then adjacent — nothing newer of the key was sent in between
  — so order holds, and consumers drop it by the record's unique key.

The cost: one round trip per record of a key. A contact's burst (a 1 s Connect fragment is
32 frames, published together) needs 32 successive calls to reach the stream, so a
frame's added latency grows with its place in the burst times the call latency, and a
contact cannot publish faster than one record per call. Each call carries the next
record of every waiting key, oldest first, so all contacts advance together.

One call in flight or several (``max_calls_in_flight``): with several, a key confirmed
by one call goes out in the next free sender's call instead of waiting for the running
call to end, which saves at most one call's time per burst; but the waiting keys are
spread over more, smaller calls, and each call has a fixed cost. On the local stack
four calls in flight were several times slower than one (BENCHMARKS.md, "KVS
connector"), so the default is one; against AWS, where a call's latency is mostly
fixed, the option is there to be measured. The same section compares the cost of this
rule with the earlier scheme, which sent a key's records together and re-sent the tail
behind a failed record (reordering and duplicating on partial failures).

A throttled call or a call with failed records backs off exponentially; no sender starts
a call until the backoff has passed.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

log = logging.getLogger(__name__)

#: PutRecords limits (Kinesis API reference): 500 records, 5 MiB per call including
#: partition keys, 1 MiB per record including its partition key.
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MAX_PARTITION_KEY_LENGTH = 256
#: One or several: see the module's "The cost" and BENCHMARKS.md, "KVS connector".
DEFAULT_MAX_CALLS_IN_FLIGHT = 1

#: Whole-call errors worth retrying; anything else (missing stream, no permission,
#: validation) will not heal by waiting.
RETRYABLE_ERROR_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "KMSThrottlingException",
    }
)


class ProducerError(RuntimeError):
    """The producer cannot deliver (closed, or the stream rejects every call)."""


@dataclass
class _Entry:
    sequence: int
    data: bytes
    partition_key: str
    put_at: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return len(self.data) + len(self.partition_key.encode())


class KinesisRecordProducer:
    """Send records to ``stream_name`` in PutRecords calls, in order per partition key.

    Parameters
    ----------
    kinesis_client:
        A boto3 ``kinesis`` client (injected so tests can stub it).
    max_batch_records, max_batch_bytes:
        Limits of one PutRecords call.
    linger_s:
        How long a record may wait for company before a call goes out for it; bounds the
        latency batching adds. A key's next record, ready once its predecessor is
        confirmed, has waited that long already and goes with the next call.
    max_buffered_records:
        ``put`` blocks while this many records are unwritten.
    retry_backoff_s, max_retry_backoff_s:
        Exponential backoff after a throttled call or failed records.
    max_calls_in_flight:
        PutRecords calls running at once (one sender thread each).
    """

    def __init__(
        self,
        kinesis_client,
        stream_name: str,
        max_batch_records: int = MAX_RECORDS_PER_CALL,
        max_batch_bytes: int = MAX_BYTES_PER_CALL,
        linger_s: float = 0.02,
        max_buffered_records: int = 10_000,
        *,
        retry_backoff_s: float = 0.05,
        max_retry_backoff_s: float = 2.0,
        max_calls_in_flight: int = DEFAULT_MAX_CALLS_IN_FLIGHT,
    ) -> None:
        if not 1 <= max_batch_records <= MAX_RECORDS_PER_CALL:
            raise ValueError(f"max_batch_records must be within 1..{MAX_RECORDS_PER_CALL}")
        if not MAX_RECORD_BYTES <= max_batch_bytes <= MAX_BYTES_PER_CALL:
            raise ValueError(f"max_batch_bytes must be within {MAX_RECORD_BYTES}..{MAX_BYTES_PER_CALL}")
        if max_calls_in_flight < 1:
            raise ValueError("max_calls_in_flight must be at least 1")
        self._client = kinesis_client
        self.stream_name = stream_name
        self.max_batch_records = max_batch_records
        self.max_batch_bytes = max_batch_bytes
        self.linger_s = linger_s
        self.max_buffered_records = max_buffered_records
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.max_calls_in_flight = max_calls_in_flight
        self._lock = threading.Lock()
        # Two conditions on one lock, so that a put wakes a sender only, and a call's
        # result wakes the threads waiting for records to be written: with every contact
        # thread of a worker on one condition, each put woke every waiting flush.
        self._sendable = threading.Condition(self._lock)
        self._written = threading.Condition(self._lock)
        # Unwritten records per key, oldest first. A key in _in_flight has its head in a call.
        self._by_key: dict[str, deque[_Entry]] = {}
        self._in_flight: set[str] = set()
        # Keys whose head may go in the next call, as a heap on the head's sequence: the
        # longest-waiting records go first.
        self._ready: list[tuple[int, str]] = []
        self._ready_bytes = 0
        # Every record put and not yet written, by sequence: flush() waits on the oldest.
        self._outstanding: OrderedDict[int, None] = OrderedDict()
        self._next_sequence = 0
        self._flush_waiters = 0
        self._backoff_s = 0.0
        self._resume_at = 0.0
        self._closing = False
        self._failure: Exception | None = None
        self.records_sent = 0
        self.records_retried = 0
        self.calls = 0
        self._senders = [
            threading.Thread(target=self._send_loop, name=f"kinesis-producer-{stream_name}-{i}", daemon=True)
            for i in range(max_calls_in_flight)
        ]
        for sender in self._senders:
            sender.start()

    # -- API ---------------------------------------------------------------------------

    def put(self, data: bytes, partition_key: str) -> None:
        """Queue one record; blocks while the buffer is full."""
        if not partition_key or len(partition_key) > MAX_PARTITION_KEY_LENGTH:
            raise ValueError(f"partition key must be 1..{MAX_PARTITION_KEY_LENGTH} characters")
        entry_size = len(data) + len(partition_key.encode())
        if entry_size > MAX_RECORD_BYTES:
            raise ValueError(f"record of {entry_size} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")
        with self._lock:
            while len(self._outstanding) >= self.max_buffered_records and not self._stopped():
                self._written.wait()
            self._raise_if_stopped()
            entry = _Entry(self._next_sequence, bytes(data), partition_key)
            self._next_sequence += 1
            self._outstanding[entry.sequence] = None
            pending = self._by_key.setdefault(partition_key, deque())
            pending.append(entry)
            if len(pending) == 1:
                self._make_ready(partition_key)
                # A sender waits without a deadline only while nothing is ready, and
                # until a call is due otherwise: only these two changes concern it.
                if len(self._ready) == 1 or self._ready_is_full():
                    self._sendable.notify()

    def flush(self, timeout_s: float | None = None, partition_key: str | None = None) -> None:
        """Block until every record put before this call (of ``partition_key`` only, if
        given) is written.

        Flushing everything is a barrier (shutdown): while it waits the senders send
        without lingering. One key's flush waits as that key's records do.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            target = self._next_sequence
            if partition_key is None:
                self._flush_waiters += 1
                self._sendable.notify_all()
            try:
                while self._unwritten_before(target, partition_key):
                    if self._failure is not None:
                        raise ProducerError(f"producer failed: {self._failure}") from self._failure
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"{len(self._outstanding)} records still unsent")
                    self._written.wait(remaining)
            finally:
                if partition_key is None:
                    self._flush_waiters -= 1

    def _unwritten_before(self, target: int, partition_key: str | None) -> bool:
        if partition_key is None:
            return bool(self._outstanding) and next(iter(self._outstanding)) < target
        pending = self._by_key.get(partition_key)
        return bool(pending) and pending[0].sequence < target

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, then stop the sender threads."""
        try:
            if self._failure is None:
                self.flush(timeout_s)
        finally:
            with self._lock:
                self._closing = True
                self._notify_all()
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            for sender in self._senders:
                sender.join(None if deadline is None else max(deadline - time.monotonic(), 0))

    def __enter__(self) -> "KinesisRecordProducer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._outstanding)

    # -- senders -----------------------------------------------------------------------

    def _notify_all(self) -> None:
        self._sendable.notify_all()
        self._written.notify_all()

    def _stopped(self) -> bool:
        return self._closing or self._failure is not None

    def _raise_if_stopped(self) -> None:
        if self._failure is not None:
            raise ProducerError(f"producer failed: {self._failure}") from self._failure
        if self._closing:
            raise ProducerError("producer is closed")

    def _make_ready(self, partition_key: str) -> None:
        head = self._by_key[partition_key][0]
        heapq.heappush(self._ready, (head.sequence, partition_key))
        self._ready_bytes += head.size

    def _send_loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            written = self._put_records(batch)
            if written is None:
                return
            self._settle(batch, written)

    def _next_batch(self) -> list[_Entry] | None:
        """The heads of the longest-waiting ready keys, once a call is due; None to stop."""
        with self._lock:
            while True:
                if self._failure is not None or (self._closing and not self._ready):
                    return None
                now = time.monotonic()
                if not self._ready:
                    self._sendable.wait()
                elif now < self._resume_at:
                    self._sendable.wait(self._resume_at - now)
                else:
                    oldest_key = self._ready[0][1]
                    due = self._by_key[oldest_key][0].put_at + self.linger_s
                    if now >= due or self._closing or self._flush_waiters or self._ready_is_full():
                        return self._take_ready()
                    self._sendable.wait(due - now)

    def _ready_is_full(self) -> bool:
        return len(self._ready) >= self.max_batch_records or self._ready_bytes >= self.max_batch_bytes

    def _take_ready(self) -> list[_Entry]:
        batch: list[_Entry] = []
        size = 0
        while self._ready and len(batch) < self.max_batch_records:
            head = self._by_key[self._ready[0][1]][0]
            if batch and size + head.size > self.max_batch_bytes:
                break
            heapq.heappop(self._ready)
            self._ready_bytes -= head.size
            self._in_flight.add(head.partition_key)
            batch.append(head)
            size += head.size
        self.calls += 1
        return batch

    def _put_records(self, batch: list[_Entry]) -> list[bool] | None:
        """Which records the call wrote; None when the producer has failed for good."""
        try:
            response = self._client.put_records(
                StreamName=self.stream_name,
                Records=[{"Data": entry.data, "PartitionKey": entry.partition_key} for entry in batch],
            )
        except (ClientError, BotoCoreError) as exc:
            code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
            if isinstance(exc, ParamValidationError) or (
                isinstance(exc, ClientError) and code not in RETRYABLE_ERROR_CODES
            ):
                log.error("PutRecords to %s failed for good: %s", self.stream_name, exc)
                with self._lock:
                    self._failure = exc
                    self._notify_all()
                return None
            log.warning("PutRecords to %s failed (%s); retrying %d records", self.stream_name, code, len(batch))
            return [False] * len(batch)
        written = [not result.get("ErrorCode") for result in response["Records"]]
        if not all(written):
            log.warning(
                "PutRecords to %s: %d of %d records failed; they go again before their keys' next records",
                self.stream_name,
                written.count(False),
                len(batch),
            )
        return written

    def _settle(self, batch: list[_Entry], written: list[bool]) -> None:
        with self._lock:
            for entry, is_written in zip(batch, written):
                key = entry.partition_key
                self._in_flight.discard(key)
                pending = self._by_key[key]
                if is_written:
                    pending.popleft()
                    del self._outstanding[entry.sequence]
                    self.records_sent += 1
                else:
                    self.records_retried += 1
                if pending:
                    self._make_ready(key)
                else:
                    del self._by_key[key]
            if all(written):
                self._backoff_s = 0.0
            else:
                self._backoff_s = min(max(self._backoff_s * 2, self.retry_backoff_s), self.max_retry_backoff_s)
                self._resume_at = time.monotonic() + self._backoff_s
            self._notify_all()
