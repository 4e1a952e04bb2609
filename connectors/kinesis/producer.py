"""Batched, ordered writes of binary records to a Kinesis Data Stream.

``KinesisRecordProducer.put`` queues a record; one background thread sends PutRecords
batches (up to 500 records / 5 MiB, the API's limits) after a short linger. ``put``
blocks while the buffer is full, so a slow stream slows the reader instead of growing
memory.

Ordering: PutRecords "doesn't guarantee the ordering of records" — a record can fail
while later records of the same partition key in the same call succeed (Kinesis API
reference, PutRecords). After a partial failure the producer re-sends, in their original
order, the failed records *and every later record of the same partition key from that
call*, ahead of anything newer for that key. The stream then holds, per key, a tail that
is complete and in order after any out-of-order attempt; consumers dedupe on the record's
unique key and must let the re-sent tail win.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

#: PutRecords limits (Kinesis API reference): 500 records, 5 MiB per call including
#: partition keys, 1 MiB per record including its partition key.
MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MAX_PARTITION_KEY_LENGTH = 256

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

    @property
    def size(self) -> int:
        return len(self.data) + len(self.partition_key.encode())


class KinesisRecordProducer:
    """Send records to ``stream_name`` in PutRecords batches from a background thread.

    Parameters
    ----------
    kinesis_client:
        A boto3 ``kinesis`` client (injected so tests can stub it).
    linger_s:
        How long the first record of a batch waits for company; bounds added latency.
    max_buffered_records:
        ``put`` blocks while this many records are queued or in flight.
    retry_backoff_s, max_retry_backoff_s:
        Exponential backoff between attempts after a failure.
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
    ) -> None:
        if not 1 <= max_batch_records <= MAX_RECORDS_PER_CALL:
            raise ValueError(f"max_batch_records must be within 1..{MAX_RECORDS_PER_CALL}")
        if not MAX_RECORD_BYTES <= max_batch_bytes <= MAX_BYTES_PER_CALL:
            raise ValueError(f"max_batch_bytes must be within {MAX_RECORD_BYTES}..{MAX_BYTES_PER_CALL}")
        self._client = kinesis_client
        self.stream_name = stream_name
        self.max_batch_records = max_batch_records
        self.max_batch_bytes = max_batch_bytes
        self.linger_s = linger_s
        self.max_buffered_records = max_buffered_records
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: deque[_Entry] = deque()
        self._queued_bytes = 0
        # Every record put and not yet written, by sequence: flush() waits on the oldest.
        self._outstanding: OrderedDict[int, None] = OrderedDict()
        self._next_sequence = 0
        self._flush_waiters = 0
        self._closing = False
        self._failure: Exception | None = None
        self.records_sent = 0
        self.records_retried = 0
        self.calls = 0
        self._thread = threading.Thread(target=self._run, name=f"kinesis-producer-{stream_name}", daemon=True)
        self._thread.start()

    # -- API ---------------------------------------------------------------------------

    def put(self, data: bytes, partition_key: str) -> None:
        """Queue one record; blocks while the buffer is full."""
        if not partition_key or len(partition_key) > MAX_PARTITION_KEY_LENGTH:
            raise ValueError(f"partition key must be 1..{MAX_PARTITION_KEY_LENGTH} characters")
        entry_size = len(data) + len(partition_key.encode())
        if entry_size > MAX_RECORD_BYTES:
            raise ValueError(f"record of {entry_size} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")
        with self._changed:
            while len(self._outstanding) >= self.max_buffered_records and not self._stopped():
                self._changed.wait()
            self._raise_if_stopped()
            entry = _Entry(self._next_sequence, bytes(data), partition_key)
            self._next_sequence += 1
            self._queue.append(entry)
            self._queued_bytes += entry.size
            self._outstanding[entry.sequence] = None
            self._changed.notify_all()

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every record put before this call is written."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            target = self._next_sequence
            # While anyone waits in flush() the sender does not linger.
            self._flush_waiters += 1
            self._changed.notify_all()
            try:
                while self._outstanding and next(iter(self._outstanding)) < target:
                    if self._failure is not None:
                        raise ProducerError(f"producer failed: {self._failure}") from self._failure
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"{len(self._outstanding)} records still unsent")
                    self._changed.wait(remaining)
            finally:
                self._flush_waiters -= 1

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, then stop the sender thread."""
        try:
            if self._failure is None:
                self.flush(timeout_s)
        finally:
            with self._changed:
                self._closing = True
                self._changed.notify_all()
            self._thread.join(timeout_s)

    def __enter__(self) -> "KinesisRecordProducer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._outstanding)

    # -- sender thread -----------------------------------------------------------------

    def _stopped(self) -> bool:
        return self._closing or self._failure is not None

    def _raise_if_stopped(self) -> None:
        if self._failure is not None:
            raise ProducerError(f"producer failed: {self._failure}") from self._failure
        if self._closing:
            raise ProducerError("producer is closed")

    def _run(self) -> None:
        backoff = 0.0
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                response = self._client.put_records(
                    StreamName=self.stream_name,
                    Records=[{"Data": entry.data, "PartitionKey": entry.partition_key} for entry in batch],
                )
            except (ClientError, BotoCoreError) as exc:
                code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
                if isinstance(exc, ClientError) and code not in RETRYABLE_ERROR_CODES:
                    log.error("PutRecords to %s failed for good: %s", self.stream_name, exc)
                    self._fail(exc)
                    return
                log.warning(
                    "PutRecords to %s failed (%s); retrying %d records", self.stream_name, code, len(batch)
                )
                self._requeue(batch)
                backoff = self._next_backoff(backoff)
                self._sleep(backoff)
                continue
            finally:
                self.calls += 1
            retry = _records_to_resend(batch, response["Records"])
            self._complete(batch, retry)
            if retry:
                log.warning(
                    "PutRecords to %s: %d of %d records failed; re-sending %d in order",
                    self.stream_name,
                    response.get("FailedRecordCount", 0),
                    len(batch),
                    len(retry),
                )
                backoff = self._next_backoff(backoff)
                self._sleep(backoff)
            else:
                backoff = 0.0

    def _next_batch(self) -> list[_Entry] | None:
        with self._changed:
            while not self._queue and not self._closing:
                self._changed.wait()
            if not self._queue:
                return None
            linger_until = time.monotonic() + self.linger_s
            while not (self._closing or self._flush_waiters or self._batch_is_full()):
                remaining = linger_until - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            batch: list[_Entry] = []
            size = 0
            while self._queue and len(batch) < self.max_batch_records:
                entry = self._queue[0]
                if batch and size + entry.size > self.max_batch_bytes:
                    break
                batch.append(self._queue.popleft())
                size += entry.size
            self._queued_bytes -= size
            return batch

    def _batch_is_full(self) -> bool:
        return len(self._queue) >= self.max_batch_records or self._queued_bytes >= self.max_batch_bytes

    def _complete(self, batch: list[_Entry], retry: list[_Entry]) -> None:
        resent = {entry.sequence for entry in retry}
        with self._changed:
            for entry in batch:
                if entry.sequence not in resent:
                    self._outstanding.pop(entry.sequence, None)
                    self.records_sent += 1
            self.records_retried += len(retry)
            self._queue.extendleft(reversed(retry))
            self._queued_bytes += sum(entry.size for entry in retry)
            self._changed.notify_all()

    def _requeue(self, batch: list[_Entry]) -> None:
        with self._changed:
            self._queue.extendleft(reversed(batch))
            self._queued_bytes += sum(entry.size for entry in batch)

    def _fail(self, exc: Exception) -> None:
        with self._changed:
            self._failure = exc
            self._changed.notify_all()

    def _next_backoff(self, backoff: float) -> float:
        return min(max(backoff * 2, self.retry_backoff_s), self.max_retry_backoff_s)

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _records_to_resend(batch: list[_Entry], results: list[dict]) -> list[_Entry]:
    """Failed records plus every later record of a key that had a failure, in order."""
    failed_keys: set[str] = set()
    resend = []
    for entry, result in zip(batch, results):
        if result.get("ErrorCode") or entry.partition_key in failed_keys:
            failed_keys.add(entry.partition_key)
            resend.append(entry)
    return resend
