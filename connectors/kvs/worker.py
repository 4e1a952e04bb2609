"""The KVS connector worker: contacts from SQS in, AudioFrame records on KDS out.

``read_contact`` reads one contact: GetMedia (one connection at a time, both tracks in
it) → streaming MKV parser → ``ConnectContactStream`` → ``publish`` every frame
(partition key = ContactId), then the END record with the totals. ``ConnectorWorker``
takes contacts from the work queue and runs ``read_contact`` for each in its own thread.

Where reading starts. The StartSelector documentation says ``FRAGMENT_NUMBER`` starts
"with the chunk after" ``AfterFragmentNumber``, and readers that pass Connect's
StartFragmentNumber there report missing starts (see ``emulators/kvs/server.py`` for the
sources). So when the work item has Connect's StartTimestamp the worker asks for
``PRODUCER_TIMESTAMP`` — "the chunk containing a fragment with the specified
timestamp" — which includes the first fragment; any earlier fragment that comes with it
is dropped by ``ConnectContactStream`` (below the StartFragmentNumber, or another
contact's). Without a timestamp it falls back to ``FRAGMENT_NUMBER`` and logs that the
first fragment may be missing. A contact with a checkpoint (see ``checkpoints.py``)
resumes instead with ``CONTINUATION_TOKEN``.

Publishing whole fragments. A fragment's frames are published when the fragment has
been read to its end: its ``AWS_KINESISVIDEO_CONTINUATION_TOKEN`` tag, which KVS writes
as a fragment's last element, the next fragment's EBML header, or the clean end of the
response. That adds no latency worth the name — Connect writes the ContactId tag after
the Cluster, so a fragment's frames wait for its trailing tags anyway — and it means a
fragment cut off by a broken connection is never published in part: the next
connection reads it again, whole.

Checkpoints. With a checkpoint store, a contact's progress (last fragment, continuation
token, per-track totals) is written after ``flush`` has confirmed that KDS holds every
frame it covers — never before — at most every ``checkpoint_interval_s`` while audio
flows, and always when a connection ends, when the contact is handed back, and when it
ends (then marked completed, so a duplicate delivery of the work item is dropped). A
crash therefore replays at most the frames published since the last checkpoint; they
carry the same unique keys and are dropped downstream. In a ``ConnectorWorker`` the
periodic checkpoints are written by a ``CheckpointWriter`` thread, so that neither the
producer's confirmation nor the store's write holds the contact's reading back; a
refusal there (another reader took the contact over) stops the read at its next
checkpoint. ``flush`` waits for the contact's own records only.

Reconnecting. One contact may need many GetMedia connections: KVS ends a session after
about 45 minutes, connections break, and a body ends about 3 s after the newest fragment
once the reader has caught up with a live producer. Each new connection starts after
the last continuation token read (the original selector if there is none yet), with a
fresh parser and stream state; frame indexes are per fragment, so they need no carrying
over, and totals continue from what this read (and the checkpoint) published. Frames of
a fragment already published are never published again.

When a contact is over. A body that ends cannot say whether the call did: a caught-up
reader of a live call and a reader of a call that hung up see the same thing. The worker
ends the contact on the first of three signals:

- a fragment tagged with another ContactId (Connect reuses the stream for the next
  contact);
- a body that ended cleanly (KVS had no new fragment for ~3 s, so everything Connect
  wrote has been read) for a contact Connect has reported DISCONNECTED: the
  contact-events Lambda marks it ended in the checkpoint table, and the worker asks
  there each time a body ends that way;
- no new data for ``max_idle_s`` (default 10 s) while it keeps reconnecting, for when
  the DISCONNECTED event is late or lost. Connect streams audio continuously while
  media streaming is on — silence is audio too — so several seconds without a fragment
  mean the call or its streaming has stopped; KVS's own ~3 s end of body is too short
  to ride out a producer's hiccup and would end the contact early.

A body that ends while the contact is still active is followed by a new connection from
the last continuation token.

Failure policy.

- Throttling and limits (``ConnectionLimitExceededException``,
  ``ClientLimitExceededException``, throttling), broken connections and network errors:
  reconnect after an exponential backoff with jitter; after ``max_failed_connects``
  failures in a row the contact is handed back to the queue (after a checkpoint).
- ``ResourceNotFoundException``, ``NotAuthorizedException`` and every other error that
  waiting will not cure, corrupt MKV, an error reported inside the stream: an END record
  whose reason says why (``stream_not_found``, ``not_authorized``, ``get_media_failed``,
  ``corrupt_stream``, ``kvs_error``); the message is deleted. No other contact is
  affected.
- The producer fails: handed back without a new checkpoint.
- A checkpoint write is refused as stale: another worker has taken the contact over (its
  message came back to the queue while this one was stuck); this read stops publishing
  and leaves the message alone.
- Shutdown (``stop``): reads stop at the next chunk, drop the fragment in progress,
  checkpoint what is published and hand their messages back for immediate redelivery.

A handed-back message is visible again after ``retry_delay_s``; SQS moves a message that
keeps coming back to the dead-letter queue (RedrivePolicy ``maxReceiveCount``).
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from connectors.kinesis.producer import KinesisRecordProducer
from connectors.kvs.checkpoints import (
    CheckpointError,
    CheckpointStore,
    ContactCheckpoint,
    DynamoDbCheckpointStore,
    StaleCheckpointError,
)
from connectors.kvs.media import KvsMediaSource, MediaSource, MediaSourceError
from pipeline.config import add_setting_flags, flag_overrides, load_config
from pipeline.connect_stream import (
    TAG_CONTINUATION_TOKEN,
    TAG_FRAGMENT_NUMBER,
    ConnectContactStream,
    EndReason,
)
from pipeline.mkv import EbmlHeader, MkvError, MkvEvent, MkvStreamParser, Tag
from pipeline.records import AudioEnd, AudioFrame, ContactWork, RecordError, Track, encode_frame_batches

log = logging.getLogger(__name__)

#: See "When a contact is over" above.
DEFAULT_MAX_IDLE_S = 10.0
#: One DynamoDB write per contact per 5 s while audio flows; a crash replays at most
#: about that much audio (deduplicated downstream).
DEFAULT_CHECKPOINT_INTERVAL_S = 5.0
#: How often the worker reaps finished reads and extends the visibility of the others.
HOUSEKEEPING_INTERVAL_S = 0.25
#: How much longer than a long poll a stopping worker waits for its receivers.
RECEIVE_TIMEOUT_MARGIN_S = 5.0

#: Reasons of contacts that ended without a usable stream (in END records and logs).
REASON_GET_MEDIA_FAILED = "get_media_failed"
REASON_STREAM_NOT_FOUND = "stream_not_found"
REASON_NOT_AUTHORIZED = "not_authorized"
REASON_BAD_RECORD = "bad_record"
#: Reasons of reads handed back to the queue (no END published).
REASON_PUBLISH_FAILED = "publish_failed"
REASON_STOPPED = "stopped"
REASON_CHECKPOINT_UNAVAILABLE = "checkpoint_unavailable"
#: Reads that publish nothing and leave the message to someone else: a duplicate
#: delivery of a finished contact (deleted), a contact another reader took over (left).
REASON_ALREADY_COMPLETED = "already_completed"
REASON_SUPERSEDED = "superseded"

_END_REASONS_BY_ERROR_CODE = {
    "ResourceNotFoundException": REASON_STREAM_NOT_FOUND,
    "NotAuthorizedException": REASON_NOT_AUTHORIZED,
}
#: Fed to the contact stream at a continuation token: the fragment is complete, so the
#: stream settles it (releases frames it still holds) exactly as at the next fragment.
_FRAGMENT_BOUNDARY = EbmlHeader(doc_type="matroska")

Publish = Callable[[bytes, str], None]
Flush = Callable[[], None]


class Producer(Protocol):
    def put(self, data: bytes, partition_key: str) -> None: ...

    def flush(self, timeout_s: float | None = None, partition_key: str | None = None) -> None: ...


@dataclass(frozen=True)
class ReadSettings:
    """How contacts are read.

    Parameters
    ----------
    max_idle_s:
        A contact whose stream brought no new data for this long is over (see the
        module's "When a contact is over"). Effectively at least KVS's ~3 s end of body.
    checkpoint_interval_s:
        While audio flows, at most one checkpoint per contact this often; 0 writes one
        after every fragment.
    retry_initial_s, retry_max_s:
        Backoff before reconnecting after a failure: doubles from ``retry_initial_s`` up
        to ``retry_max_s``, each wait drawn from its upper half (jitter). An empty
        connection is followed by one ``retry_initial_s`` wait, which keeps a reader
        under GetMedia's 5 calls per second per stream.
    max_failed_connects:
        Failures in a row with no data in between (GetMedia refused, connections
        broken) after which the contact is handed back to the queue.
    flush_timeout_s:
        How long a checkpoint waits for the producer to confirm the frames it covers.
    """

    max_idle_s: float = DEFAULT_MAX_IDLE_S
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    max_failed_connects: int = 8
    flush_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_idle_s", "checkpoint_interval_s", "retry_initial_s", "retry_max_s", "max_failed_connects"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.flush_timeout_s <= 0:
            raise ValueError("flush_timeout_s must be positive")

    def backoff_s(self, failures: int) -> float:
        """The wait before the next attempt after ``failures`` failures in a row."""
        ceiling = min(self.retry_max_s, self.retry_initial_s * 2 ** max(failures - 1, 0))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class ContactReadResult:
    """How reading one contact ended.

    ``retryable`` results published no END: the contact should be read again later.
    """

    contact_id: str
    reason: str
    frames_published: int
    end: AudioEnd | None
    retryable: bool = False
    detail: str = ""
    last_fragment_number: str = ""
    continuation_token: str = ""
    connections: int = 0


def start_selector_for(work: ContactWork) -> dict[str, Any]:
    """The GetMedia StartSelector that includes the contact's first fragment."""
    if work.start_timestamp_ms > 0:
        return {
            "StartSelectorType": "PRODUCER_TIMESTAMP",
            "StartTimestamp": datetime.fromtimestamp(work.start_timestamp_ms / 1000, tz=timezone.utc),
        }
    return {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": work.start_fragment_number}


def read_contact(
    work: ContactWork,
    media_source: MediaSource,
    publish: Publish,
    *,
    stop: threading.Event | None = None,
    flush: Flush | None = None,
    checkpoint_store: CheckpointStore | None = None,
    checkpoint_writer: CheckpointWriter | None = None,
    settings: ReadSettings | None = None,
) -> ContactReadResult:
    """Read one contact's audio from KVS and publish it; never raises for bad input.

    ``flush`` must return only when every record this read has published so far is in
    the stream; it is required with a ``checkpoint_store``. With a ``checkpoint_writer``
    the periodic checkpoints are written in its thread, not this one.
    """
    if checkpoint_store is not None and flush is None:
        raise ValueError("checkpoints need a flush that confirms what was published")
    return _ContactRead(
        work,
        publish,
        flush=flush,
        checkpoint_store=checkpoint_store,
        checkpoint_writer=checkpoint_writer,
        settings=settings or ReadSettings(),
        stop=stop or threading.Event(),
    ).run(media_source)


def _is_fragment_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass
class _Progress:
    """What has been published for the contact: by this read, and before it (checkpoint)."""

    frames: dict[Track, int] = field(default_factory=lambda: {track: 0 for track in Track})
    samples: dict[Track, int] = field(default_factory=lambda: {track: 0 for track in Track})
    last_fragment_number: str = ""
    #: Resumes right after ``last_fragment_number`` (empty until one is known).
    continuation_token: str = ""
    last_audio_end_ms: int = 0

    @classmethod
    def from_checkpoint(cls, checkpoint: ContactCheckpoint) -> "_Progress":
        return cls(
            frames={track: checkpoint.frames.get(track, 0) for track in Track},
            samples={track: checkpoint.samples.get(track, 0) for track in Track},
            last_fragment_number=checkpoint.last_fragment_number,
            continuation_token=checkpoint.continuation_token,
            last_audio_end_ms=checkpoint.last_audio_end_ms,
        )

    def covers(self, fragment_number: str) -> bool:
        """Whether a fragment was published already (fragment numbers grow)."""
        return (
            _is_fragment_number(fragment_number)
            and _is_fragment_number(self.last_fragment_number)
            and int(fragment_number) <= int(self.last_fragment_number)
        )

    def add(self, frames: list[AudioFrame]) -> None:
        frame_counts, samples = self.frames, self.samples
        audio_end_ms = self.last_audio_end_ms
        for frame in frames:
            sample_count = frame.sample_count
            frame_counts[frame.track] += 1
            samples[frame.track] += sample_count
            audio_end_ms = max(audio_end_ms, frame.producer_timestamp_ms + sample_count * 1000 // frame.sample_rate)
        self.last_audio_end_ms = audio_end_ms

    def advance_to(self, fragment_number: str) -> None:
        if _is_fragment_number(fragment_number) and not self.covers(fragment_number):
            self.last_fragment_number = fragment_number

    def state(self) -> tuple:
        """Everything a checkpoint records, to tell whether a new one is due."""
        return (
            self.last_fragment_number,
            self.continuation_token,
            tuple(self.frames.values()),
            tuple(self.samples.values()),
        )

    def checkpoint(
        self, contact_id: str, reader_id: str, *, completed: bool = False, end_reason: str = ""
    ) -> ContactCheckpoint:
        return ContactCheckpoint(
            contact_id=contact_id,
            last_fragment_number=self.last_fragment_number,
            continuation_token=self.continuation_token,
            frames=dict(self.frames),
            samples=dict(self.samples),
            last_audio_end_ms=self.last_audio_end_ms,
            updated_at_ms=int(time.time() * 1000),
            reader_id=reader_id,
            completed=completed,
            end_reason=end_reason,
        )

    def end_record(self, contact_id: str, reason: str) -> AudioEnd:
        return AudioEnd.from_totals(
            contact_id, self.last_fragment_number, self.last_audio_end_ms, self.samples, self.frames, reason
        )


@dataclass
class _Connection:
    """How one GetMedia response went."""

    received_data: bool = False
    last_data_at: float = 0.0
    error: MediaSourceError | None = None


class CheckpointWriter:
    """Writes reads' periodic checkpoints in a thread of its own.

    A periodic checkpoint waits for the producer to confirm the frames it covers, then
    for the store's write; a read that waited with it would leave its connection unread
    meanwhile, so a slow checkpoint store would hold the contact's audio back. A read
    hands its checkpoint to this writer instead and reads on. At most one checkpoint per
    read waits here (a newer one replaces it), and the thread takes whatever waits in one
    go: the first of them waits for the producer, and the producer's call that confirms it
    has mostly confirmed the others too. A read that writes a checkpoint itself (when a
    connection or the contact ends) first withdraws its own, so a read's checkpoints are
    written in the order they were taken.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Reads' pending writes, oldest first; a read's newer write replaces its older one.
        self._waiting: dict[object, Callable[[], None]] = {}
        self._writing: set[object] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def submit(self, read: object, write: Callable[[], None]) -> None:
        """Have ``write`` called soon, instead of any write of ``read`` still waiting
        (once the writer is closed: now, in this thread)."""
        with self._changed:
            if not self._closed:
                self._waiting.pop(read, None)
                self._waiting[read] = write
                self._changed.notify_all()
                return
        write()

    def withdraw(self, read: object) -> bool:
        """Drop ``read``'s waiting write, and wait until none of its writes is running.
        Whether a write was dropped."""
        with self._changed:
            dropped = self._waiting.pop(read, None) is not None
            while read in self._writing:
                self._changed.wait()
            return dropped

    def close(self, timeout_s: float | None = None) -> None:
        """Write what waits, then stop the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if not self._waiting:
                    return
                batch = list(self._waiting.items())
                self._waiting.clear()
                self._writing = {read for read, _ in batch}
            for read, write in batch:
                try:
                    write()
                except Exception:
                    # A write reports its own failures to its read; this keeps the thread.
                    log.exception("checkpoint write failed")
                finally:
                    with self._changed:
                        self._writing.discard(read)
                        self._changed.notify_all()


class _ContactRead:
    """One call of ``read_contact``: its connections, what it published, its checkpoints."""

    def __init__(
        self,
        work: ContactWork,
        publish: Publish,
        *,
        flush: Flush | None,
        checkpoint_store: CheckpointStore | None,
        checkpoint_writer: CheckpointWriter | None,
        settings: ReadSettings,
        stop: threading.Event,
    ) -> None:
        self.work = work
        self.contact_id = work.contact_id
        self.publish = publish
        self.flush = flush
        self.checkpoints = checkpoint_store
        self.checkpoint_writer = checkpoint_writer
        #: What a checkpoint write in the background raised, for this read to raise.
        self.checkpoint_failure: Exception | None = None
        self.settings = settings
        self.stop = stop
        #: Names this read in its checkpoints, so two readers of one contact cannot
        #: both advance it.
        self.reader_id = uuid.uuid4().hex
        self.progress = _Progress()
        #: Where the next connection starts: the token of the newest fragment read,
        #: this contact's or one skipped before its start.
        self.resume_token = ""
        self.published = 0
        self.connections = 0
        #: The progress of the newest checkpoint written or handed to the writer.
        self.saved_state: tuple | None = None
        # A random phase: contacts that start together (a worker's first poll, a
        # redelivery wave) would otherwise all checkpoint in the same moment.
        self.saved_at = time.monotonic() - random.uniform(0, settings.checkpoint_interval_s)
        self.stream = self.new_stream()
        self.pending: list[AudioFrame] = []
        self.fragment_number = ""
        self.skipped_fragments = 0
        self.discarded_fragments = 0
        self.unknown_track_frames: dict[str, int] = {}

    def run(self, media_source: MediaSource) -> ContactReadResult:
        try:
            done = self.resume()
            if done is not None:
                return done
            return self.read(media_source)
        except RecordError as exc:
            # Only a contact whose id cannot be written into a record gets here.
            log.error("contact cannot be encoded contact_id=%r: %s", self.contact_id, exc)
            return self.result(REASON_BAD_RECORD, None, detail=str(exc))
        except StaleCheckpointError as exc:
            log.warning(
                "contact taken over by another reader, stopping contact_id=%s frames=%d: %s",
                self.contact_id, self.published, exc,
            )
            return self.result(REASON_SUPERSEDED, None, detail=str(exc))
        except Exception as exc:
            # The publisher failed (e.g. the producer is down): nothing more can be sent now.
            log.exception("contact read failed contact_id=%s", self.contact_id)
            return self.result(REASON_PUBLISH_FAILED, None, retryable=True, detail=str(exc))
        finally:
            self.withdraw_checkpoint()

    def resume(self) -> ContactReadResult | None:
        """Pick up the contact's checkpoint; a result if there is nothing to read."""
        if self.checkpoints is None:
            return None
        try:
            checkpoint = self.checkpoints.get(self.contact_id)
        except CheckpointError as exc:
            # Reading from the start instead would publish everything again.
            return self.give_back(REASON_CHECKPOINT_UNAVAILABLE, str(exc), save=False)
        if checkpoint is None:
            return None
        if checkpoint.completed:
            log.info(
                "contact already completed, dropping the repeated work item contact_id=%s end_reason=%s",
                self.contact_id, checkpoint.end_reason,
            )
            return self.result(REASON_ALREADY_COMPLETED, None)
        self.progress = _Progress.from_checkpoint(checkpoint)
        self.resume_token = checkpoint.continuation_token
        try:
            # This read owns the contact from here; a reader still at this fragment
            # (the one whose message lapsed) can no longer write it.
            self.checkpoints.put(self.progress.checkpoint(self.contact_id, self.reader_id), take_over=True)
        except StaleCheckpointError:
            raise
        except CheckpointError as exc:
            return self.give_back(REASON_CHECKPOINT_UNAVAILABLE, str(exc), save=False)
        self.saved_state = self.progress.state()
        log.info(
            "contact resuming from checkpoint contact_id=%s after_fragment=%s customer_frames=%d agent_frames=%d",
            self.contact_id, checkpoint.last_fragment_number or "-",
            self.progress.frames[Track.CUSTOMER], self.progress.frames[Track.AGENT],
        )
        return None

    # -- connections -------------------------------------------------------------------

    def read(self, media_source: MediaSource) -> ContactReadResult:
        settings = self.settings
        failures = 0
        last_data_at = time.monotonic()
        while True:
            if self.stop.is_set():
                return self.give_back(REASON_STOPPED, "worker is shutting down")
            selector = self.selector()
            log.info(
                "GetMedia connecting contact_id=%s stream=%s selector=%s connection=%d",
                self.contact_id, self.work.stream_arn, selector["StartSelectorType"], self.connections + 1,
            )
            try:
                chunks = media_source.open(self.work.stream_arn, selector)
            except MediaSourceError as exc:
                if not exc.retryable:
                    return self.finish(_END_REASONS_BY_ERROR_CODE.get(exc.code, REASON_GET_MEDIA_FAILED), str(exc))
                failures += 1
                if failures > settings.max_failed_connects:
                    return self.give_back(REASON_GET_MEDIA_FAILED, str(exc))
                self.back_off(failures, exc)
                continue
            self.connections += 1
            connection = self.read_connection(chunks)
            if self.stream.ended:
                return self.finish(self.stream.end_reason, self.stream_detail())
            self.save(force=True)
            if connection.received_data:
                last_data_at = connection.last_data_at
                failures = 0
            if connection.error is not None:
                failures += 1
                if failures > settings.max_failed_connects:
                    return self.give_back(connection.error.code, str(connection.error))
                self.back_off(failures, connection.error)
                continue
            if self.stop.is_set():
                continue
            if self.contact_has_ended():
                return self.finish(EndReason.CONTACT_ENDED)
            idle_s = time.monotonic() - last_data_at
            if idle_s >= settings.max_idle_s:
                log.info("contact stream idle, ending contact_id=%s idle_s=%.1f", self.contact_id, idle_s)
                return self.finish(EndReason.STREAM_ENDED)
            if not connection.received_data:
                self.stop.wait(min(settings.retry_initial_s, settings.max_idle_s - idle_s))

    def contact_has_ended(self) -> bool:
        """Whether Connect has reported the contact over (see "When a contact is over")."""
        if self.checkpoints is None:
            return False
        try:
            ended_at_ms = self.checkpoints.contact_ended_at_ms(self.contact_id)
        except CheckpointError as exc:
            # The idle limit still ends the contact.
            log.warning("cannot tell whether the contact has ended contact_id=%s: %s", self.contact_id, exc)
            return False
        if ended_at_ms:
            log.info("contact disconnected and its stream is quiet, ending contact_id=%s", self.contact_id)
        return ended_at_ms > 0

    def selector(self) -> dict[str, Any]:
        if self.resume_token:
            return {"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": self.resume_token}
        selector = start_selector_for(self.work)
        if self.connections == 0 and selector["StartSelectorType"] == "FRAGMENT_NUMBER":
            log.warning(
                "no start timestamp, reading after the start fragment; its audio may be missing "
                "contact_id=%s fragment=%s", self.contact_id, self.work.start_fragment_number,
            )
        return selector

    def back_off(self, failures: int, error: MediaSourceError) -> None:
        delay_s = self.settings.backoff_s(failures)
        log.warning(
            "GetMedia failed, retrying contact_id=%s code=%s attempt=%d delay_s=%.2f",
            self.contact_id, error.code, failures, delay_s,
        )
        self.stop.wait(delay_s)

    def new_stream(self) -> ConnectContactStream:
        # Once the contact's audio has begun, its last fragment is a start number: a
        # fragment of another contact after it ends the contact instead of being skipped.
        return ConnectContactStream(
            self.contact_id,
            start_fragment_number=self.progress.last_fragment_number or self.work.start_fragment_number,
        )

    def read_connection(self, chunks: Iterator[bytes]) -> _Connection:
        """Read one GetMedia response; whole fragments are published as they complete."""
        stream = self.stream = self.new_stream()
        parser = MkvStreamParser()
        self.pending = []
        self.fragment_number = ""
        connection = _Connection()
        try:
            for chunk in chunks:
                connection.received_data = True
                connection.last_data_at = time.monotonic()
                self.feed(stream, parser.feed(chunk))
                if stream.ended or self.stop.is_set():
                    break
            else:
                connection.error = self.end_of_response(stream, parser)
        except MkvError as exc:
            stream.fail(EndReason.CORRUPT_STREAM, str(exc))
        except MediaSourceError as exc:
            connection.error = exc
            log.warning(
                "GetMedia connection broken contact_id=%s code=%s: %s", self.contact_id, exc.code, exc
            )
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            self.count(stream)
        if stream.ended:
            # The stream released these frames after seeing their fragment's ContactId,
            # so they are this contact's, and nothing of the contact follows them.
            self.publish_frames(self.pending)
        self.pending = []
        return connection

    def end_of_response(self, stream: ConnectContactStream, parser: MkvStreamParser) -> MediaSourceError | None:
        """Settle the last fragment; an error if the body stopped inside one."""
        try:
            self.feed(stream, parser.close())
        except MkvError as exc:
            # A truncated response, not a corrupt stream: the connection broke and the
            # next one reads the unfinished fragment again.
            log.warning("GetMedia response ended inside a fragment contact_id=%s: %s", self.contact_id, exc)
            return MediaSourceError("truncated_response", str(exc), retryable=True)
        if not stream.ended:
            self.pending += stream.close()
            self.settle(stream)
        return None

    def feed(self, stream: ConnectContactStream, events: Iterable[MkvEvent]) -> None:
        for event in events:
            self.pending += stream.feed((event,))
            if isinstance(event, EbmlHeader):
                # The stream has settled the previous fragment.
                self.settle(stream)
            elif isinstance(event, Tag):
                if event.name == TAG_FRAGMENT_NUMBER:
                    self.fragment_number = event.value
                elif event.name == TAG_CONTINUATION_TOKEN:
                    self.pending += stream.feed((_FRAGMENT_BOUNDARY,))
                    self.settle(stream, token=event.value)
            if stream.ended:
                return

    def settle(self, stream: ConnectContactStream, token: str = "") -> None:
        """The fragment being read is complete: publish its frames, note the token."""
        frames, self.pending = self.pending, []
        number, self.fragment_number = self.fragment_number, ""
        self.publish_frames(frames)
        if number and stream.last_fragment_number == number:
            # This contact's fragment, with or without audio.
            self.progress.advance_to(number)
        if token:
            self.resume_token = token
            if number and number == self.progress.last_fragment_number:
                self.progress.continuation_token = token
            # Only at a token: settled by the next fragment's header instead, a due
            # checkpoint (flush + DynamoDB write) would hold that fragment back.
            self.save()

    def publish_frames(self, frames: list[AudioFrame]) -> None:
        # Asked once per fragment, not per frame: a fragment's 32 frames share its number.
        covered: dict[str, bool] = {}
        fresh = []
        for frame in frames:
            number = frame.fragment_number
            if number not in covered:
                covered[number] = self.progress.covers(number)
            if not covered[number]:
                fresh.append(frame)
        if not fresh:
            return
        for batch in encode_frame_batches(fresh):
            self.publish(batch, self.contact_id)
        self.published += len(fresh)
        self.progress.add(fresh)
        self.progress.advance_to(fresh[-1].fragment_number)

    def count(self, stream: ConnectContactStream) -> None:
        self.skipped_fragments += stream.skipped_fragments
        self.discarded_fragments += stream.discarded_fragments
        for name, frames in stream.unknown_track_frames.items():
            self.unknown_track_frames[name] = self.unknown_track_frames.get(name, 0) + frames

    def stream_detail(self) -> str:
        stream = self.stream
        if stream.error is not None:
            return f"GetMedia error {stream.error.error_id} {stream.error.code}"
        return stream.error_detail

    # -- checkpoints -------------------------------------------------------------------

    def save(self, *, force: bool = False, claim: bool = False) -> None:
        """Checkpoint what is published, once KDS has it.

        Due when the progress changed and, unless ``force``, ``checkpoint_interval_s``
        has passed. ``claim`` writes even without progress, to prove this read still owns
        the contact (raises ``StaleCheckpointError`` if not).
        """
        if self.checkpoint_failure is not None:
            raise self.checkpoint_failure
        if self.checkpoints is None or not self.progress.continuation_token:
            return
        periodic = not (force or claim)
        if not periodic:
            self.withdraw_checkpoint()
        state = self.progress.state()
        if state == self.saved_state and not claim:
            return
        if periodic and time.monotonic() - self.saved_at < self.settings.checkpoint_interval_s:
            return
        checkpoint = self.progress.checkpoint(self.contact_id, self.reader_id)
        if periodic and self.checkpoint_writer is not None:
            self.saved_state, self.saved_at = state, time.monotonic()
            self.checkpoint_writer.submit(self, lambda: self.write_in_background(checkpoint))
            return
        self.flush()  # type: ignore[misc]  (read_contact requires it with checkpoints)
        try:
            self.write(checkpoint)
        except StaleCheckpointError:
            raise
        except CheckpointError as exc:
            # The previous checkpoint stays valid; this one is tried again later.
            log.warning("checkpoint not written contact_id=%s: %s", self.contact_id, exc)
            return
        self.saved_state, self.saved_at = state, time.monotonic()

    def write(self, checkpoint: ContactCheckpoint) -> None:
        self.checkpoints.put(checkpoint)  # type: ignore[union-attr]
        log.debug("checkpoint written contact_id=%s fragment=%s", self.contact_id, checkpoint.last_fragment_number)

    def write_in_background(self, checkpoint: ContactCheckpoint) -> None:
        """The writer's side of ``save``: failures are this read's to raise, at its next
        checkpoint; a store that failed is tried again at the next one."""
        try:
            self.flush()  # type: ignore[misc]
            self.write(checkpoint)
        except StaleCheckpointError as exc:
            self.checkpoint_failure = exc
        except CheckpointError as exc:
            log.warning("checkpoint not written contact_id=%s: %s", self.contact_id, exc)
            self.saved_state = None
        except Exception as exc:
            # The producer failed or timed out: the read would fail on its next publish too.
            self.checkpoint_failure = exc

    def withdraw_checkpoint(self) -> None:
        """Make sure no checkpoint of this read is waiting or being written."""
        if self.checkpoint_writer is not None and self.checkpoint_writer.withdraw(self):
            self.saved_state = None

    def save_completed(self, reason: str) -> None:
        if self.checkpoints is None:
            return
        self.flush()  # type: ignore[misc]
        try:
            self.checkpoints.put(
                self.progress.checkpoint(self.contact_id, self.reader_id, completed=True, end_reason=reason)
            )
        except CheckpointError as exc:
            # A repeated delivery of the work item would read the tail again and send a
            # second END, which downstream ignores.
            log.warning("completed checkpoint not written contact_id=%s: %s", self.contact_id, exc)

    # -- outcomes ----------------------------------------------------------------------

    def finish(self, reason: str, detail: str = "") -> ContactReadResult:
        """Publish the END record: this contact is done, for good or with a failure."""
        # A reader that lost the contact must not end it under the new owner.
        self.save(claim=True)
        end = self.progress.end_record(self.contact_id, reason)
        self.publish(end.encode(), self.contact_id)
        self.save_completed(reason)
        normal = reason in (EndReason.CONTACT_CHANGED, EndReason.CONTACT_ENDED, EndReason.STREAM_ENDED)
        log.log(
            logging.INFO if normal else logging.WARNING,
            "contact read ended contact_id=%s reason=%s frames=%d customer_samples=%d agent_samples=%d "
            "last_fragment=%s connections=%d skipped_fragments=%d discarded_fragments=%d unknown_tracks=%s%s",
            self.contact_id, reason, self.published, end.customer_samples, end.agent_samples,
            end.last_fragment_number or "-", self.connections, self.skipped_fragments,
            self.discarded_fragments, self.unknown_track_frames or "-",
            f" detail={detail!r}" if detail else "",
        )
        return self.result(reason, end, detail=detail)

    def give_back(self, reason: str, detail: str, *, save: bool = True) -> ContactReadResult:
        """No END: the contact goes back to the queue, to resume from its checkpoint."""
        if save:
            self.save(force=True)
        log.warning(
            "contact read interrupted, will retry contact_id=%s reason=%s frames=%d last_fragment=%s detail=%r",
            self.contact_id, reason, self.published, self.progress.last_fragment_number or "-", detail,
        )
        return self.result(reason, None, retryable=True, detail=detail)

    def result(
        self, reason: str, end: AudioEnd | None, *, retryable: bool = False, detail: str = ""
    ) -> ContactReadResult:
        return ContactReadResult(
            contact_id=self.contact_id,
            reason=reason,
            frames_published=self.published,
            end=end,
            retryable=retryable,
            detail=detail,
            last_fragment_number=self.progress.last_fragment_number,
            continuation_token=self.progress.continuation_token,
            connections=self.connections,
        )


@dataclass
class _InFlight:
    work: ContactWork
    message_id: str
    #: The newest receipt of the message: only that one deletes it or changes its visibility.
    receipt_handle: str
    visible_until: float
    thread: threading.Thread | None = None
    #: Deleted, handed back or left to another reader: not to be extended any more.
    settled: bool = False


class ConnectorWorker:
    """Long-polls the work queue and reads each contact in a thread of its own.

    A read's thread deletes or hands back its message as soon as it is done; calls that
    change a message's state are serialised, so a visibility extension can never land
    after the message was handed back.

    Parameters
    ----------
    visibility_timeout_s:
        Messages being read are kept invisible this long and extended while reading.
    retry_delay_s:
        A contact handed back (retryable failure) reappears on the queue after this;
        at shutdown it reappears at once.
    shutdown_timeout_s:
        How long ``run`` waits, once stopped, for reads to hand their contacts back.
    checkpoint_store:
        Where contacts' progress is kept; without one a contact handed back or
        redelivered is read again from its start (duplicates are dropped downstream).
    read_settings:
        Idle limit, checkpoint interval and retry policy of the reads.
    receivers:
        Threads long-polling the queue at once. Contacts that start together wait on the
        queue's pick-up: one receiver, its interpreter turns shared with hundreds of
        reading threads, took 60–100 contacts a second off the queue (BENCHMARKS.md, KVS
        connector).
    """

    def __init__(
        self,
        sqs_client: Any,
        queue_url: str,
        media_source: MediaSource,
        producer: Producer,
        max_concurrent_contacts: int = 200,
        poll_wait_s: int = 1,
        *,
        visibility_timeout_s: int = 60,
        retry_delay_s: int = 5,
        shutdown_timeout_s: float = 10.0,
        checkpoint_store: CheckpointStore | None = None,
        read_settings: ReadSettings | None = None,
        receivers: int = 4,
    ) -> None:
        if receivers < 1:
            raise ValueError(f"receivers must be at least 1, not {receivers}")
        self._sqs = sqs_client
        self.queue_url = queue_url
        self._media_source = media_source
        self._producer = producer
        self.max_concurrent_contacts = max_concurrent_contacts
        self.poll_wait_s = poll_wait_s
        self.visibility_timeout_s = visibility_timeout_s
        self.retry_delay_s = retry_delay_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self._checkpoints = checkpoint_store
        self._checkpoint_writer = CheckpointWriter() if checkpoint_store is not None else None
        self.read_settings = read_settings or ReadSettings()
        self.receivers = receivers
        self._lock = threading.Lock()
        #: Places taken by receive calls in flight: messages they may still return.
        self._reserved = 0
        self._message_lock = threading.Lock()
        self._in_flight: dict[str, _InFlight] = {}
        self.contacts_done = 0
        self.contacts_handed_back = 0
        self.contacts_superseded = 0
        #: AudioFrame records published by finished reads (handed-back reads included).
        self.frames_published = 0

    def run(self, stop: threading.Event) -> None:
        log.info(
            "connector worker started queue=%s checkpoints=%s max_idle_s=%g receivers=%d",
            self.queue_url, "on" if self._checkpoints is not None else "off", self.read_settings.max_idle_s,
            self.receivers,
        )
        receivers = [
            threading.Thread(target=self._receive_until, args=(stop,), name=f"receiver-{i}", daemon=True)
            for i in range(self.receivers)
        ]
        for receiver in receivers:
            receiver.start()
        while not stop.is_set():
            self._reap()
            self._extend_visibility()
            stop.wait(HOUSEKEEPING_INTERVAL_S)
        for receiver in receivers:
            # A receiver may be in a long poll; what it returns still gets a reader, which
            # sees the stop and hands its contact back.
            receiver.join(self.poll_wait_s + RECEIVE_TIMEOUT_MARGIN_S)
        self._shut_down()

    def _receive_until(self, stop: threading.Event) -> None:
        while not stop.is_set():
            places = self._reserve_places()
            if not places:
                stop.wait(HOUSEKEEPING_INTERVAL_S)
                continue
            try:
                messages = self._sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=places,
                    WaitTimeSeconds=self.poll_wait_s,
                    VisibilityTimeout=self.visibility_timeout_s,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                ).get("Messages", [])
            except (ClientError, BotoCoreError) as exc:
                self._release_places(places)
                log.warning("receiving from the work queue failed: %s", exc)
                stop.wait(1.0)
                continue
            try:
                for message in messages:
                    self._start(message, stop)
            finally:
                self._release_places(places)

    def _reserve_places(self) -> int:
        """Up to 10 (ReceiveMessage's limit) of the places left for contacts."""
        with self._lock:
            places = min(10, self.max_concurrent_contacts - len(self._in_flight) - self._reserved)
            if places <= 0:
                return 0
            self._reserved += places
            return places

    def _release_places(self, places: int) -> None:
        with self._lock:
            self._reserved -= places

    # -- contacts ----------------------------------------------------------------------

    def _start(self, message: dict[str, Any], stop: threading.Event) -> None:
        receipt = message["ReceiptHandle"]
        try:
            work = ContactWork.decode(message["Body"])
        except RecordError as exc:
            log.error("dropping malformed work item message_id=%s: %s", message.get("MessageId"), exc)
            self._delete(receipt, contact_id="-")
            return
        if stop.is_set():
            # Received by a long poll that outlived the stop: another worker reads it now.
            self._hand_back(receipt, work.contact_id, 0)
            return
        entry = _InFlight(work, message["MessageId"], receipt, time.monotonic() + self.visibility_timeout_s)
        if not self._take(entry):
            return
        log.info(
            "contact received contact_id=%s receive_count=%s",
            work.contact_id, message.get("Attributes", {}).get("ApproximateReceiveCount", "?"),
        )
        thread = threading.Thread(target=self._read, args=(entry, stop), name=f"contact-{work.contact_id}", daemon=True)
        thread.start()
        # Only now may housekeeping see it: it reaps entries whose thread is not alive.
        entry.thread = thread

    def _take(self, entry: _InFlight) -> bool:
        """Records a received message as being read here; False if it is already.

        SQS standard queues deliver a message more than once at times (receivers polling
        at once make it likelier), and a second reader would take the contact over from
        its checkpoint and publish again what the first published since. The reader
        already on it keeps going, with the new receipt."""
        with self._lock:
            reading = self._in_flight.setdefault(entry.message_id, entry)
        if reading is entry:
            return True
        with self._message_lock:
            if not reading.settled:
                reading.receipt_handle = entry.receipt_handle
                reading.visible_until = entry.visible_until
                log.info("work item received again while being read contact_id=%s", entry.work.contact_id)
                return False
        # That read is over: this delivery is read like any other (its checkpoint says
        # whether anything is left).
        with self._lock:
            self._in_flight[entry.message_id] = entry
        return True

    def _read(self, entry: _InFlight, stop: threading.Event) -> None:
        work = entry.work

        def flush() -> None:
            # The contact's own records: a flush of everything would wait for every
            # other contact's too, and stop the producer from batching meanwhile.
            self._producer.flush(self.read_settings.flush_timeout_s, partition_key=work.contact_id)

        try:
            result = read_contact(
                work,
                self._media_source,
                self._producer.put,
                stop=stop,
                flush=flush,
                checkpoint_store=self._checkpoints,
                checkpoint_writer=self._checkpoint_writer,
                settings=self.read_settings,
            )
            if not result.retryable and result.reason != REASON_SUPERSEDED:
                # The message goes only once everything it produced is in the stream.
                flush()
        except Exception as exc:
            log.exception("contact thread failed contact_id=%s", work.contact_id)
            result = ContactReadResult(work.contact_id, REASON_PUBLISH_FAILED, 0, None, retryable=True, detail=str(exc))
        # At shutdown another worker should take the contact over at once: it is live.
        self._settle(entry, result, hand_back_delay_s=0 if stop.is_set() else self.retry_delay_s)

    def _settle(self, entry: _InFlight, result: ContactReadResult | None, hand_back_delay_s: int) -> None:
        """Delete the message, hand it back, or leave it to the reader that took it over."""
        contact_id = entry.work.contact_id
        with self._message_lock:
            if entry.settled:
                return
            entry.settled = True
            if result is None:
                self._hand_back(entry.receipt_handle, contact_id, hand_back_delay_s)
                return
            with self._lock:
                self.frames_published += result.frames_published
            if result.reason == REASON_SUPERSEDED:
                with self._lock:
                    self.contacts_superseded += 1
            elif result.retryable:
                self._hand_back(entry.receipt_handle, contact_id, hand_back_delay_s)
            else:
                self._delete(entry.receipt_handle, contact_id)
                with self._lock:
                    self.contacts_done += 1

    def _reap(self) -> None:
        with self._lock:
            finished = [e for e in self._in_flight.values() if e.thread is not None and not e.thread.is_alive()]
            for entry in finished:
                del self._in_flight[entry.message_id]
        for entry in finished:
            # A thread that died without settling (not an Exception) gives its contact back.
            self._settle(entry, None, self.retry_delay_s)

    def _extend_visibility(self) -> None:
        # Extend when a third of the timeout is left, or sooner if the next chance may
        # come too late (during shutdown a reader may be joined for a while), in batches
        # of 10 (the API's limit).
        now = time.monotonic()
        margin_s = max(self.visibility_timeout_s / 3, self.poll_wait_s + 1)
        with self._lock:
            due = [entry for entry in self._in_flight.values() if entry.visible_until - now < margin_s]
        for start in range(0, len(due), 10):
            with self._message_lock:
                group = [entry for entry in due[start : start + 10] if not entry.settled]
                if group:
                    self._extend_group(group, now)

    def _extend_group(self, group: list[_InFlight], now: float) -> None:
        try:
            response = self._sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {
                        "Id": str(i),
                        "ReceiptHandle": entry.receipt_handle,
                        "VisibilityTimeout": self.visibility_timeout_s,
                    }
                    for i, entry in enumerate(group)
                ],
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("extending message visibility failed: %s", exc)
            return
        failed = {int(f["Id"]) for f in response.get("Failed", [])}
        for i, entry in enumerate(group):
            if i in failed:
                log.warning("visibility not extended contact_id=%s", entry.work.contact_id)
            else:
                entry.visible_until = now + self.visibility_timeout_s

    def _delete(self, receipt: str, contact_id: str) -> None:
        try:
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except (ClientError, BotoCoreError) as exc:
            log.warning("deleting the work item failed contact_id=%s: %s", contact_id, exc)

    def _hand_back(self, receipt: str, contact_id: str, delay_s: int) -> None:
        with self._lock:
            self.contacts_handed_back += 1
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=delay_s
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("handing the work item back failed contact_id=%s: %s", contact_id, exc)

    def _shut_down(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout_s
        while time.monotonic() < deadline:
            self._reap()
            with self._lock:
                alive = [entry.thread for entry in self._in_flight.values() if entry.thread is not None]
            if not alive:
                break
            self._extend_visibility()
            alive[0].join(min(0.1, max(deadline - time.monotonic(), 0)))
        self._reap()
        if self._checkpoint_writer is not None:
            self._checkpoint_writer.close(max(deadline - time.monotonic(), 0))
        with self._lock:
            left = [entry.work.contact_id for entry in self._in_flight.values()]
        log.info(
            "connector worker stopped; %d contacts still being read%s",
            len(left), f" contact_ids={','.join(left)}" if left else "",
        )


# -- CLI ---------------------------------------------------------------------------------


#: ``connector run`` flags and the settings they override.
_FLAGS = {
    "--region": "aws.region",
    "--endpoint-url": "aws.endpoint_url",
    "--queue-url": "connector.queue_url",
    "--frames-stream": "kinesis.audio_frames_stream",
    "--checkpoint-table": "connector.checkpoint_table",
    "--kvs-media-endpoint": "connector.kvs_media_endpoint",
    "--max-idle-s": "connector.max_idle_s",
    "--checkpoint-interval-s": "connector.checkpoint_interval_s",
    "--visibility-timeout-s": "connector.visibility_timeout_s",
    "--max-concurrent-contacts": "connector.max_concurrent_contacts",
    "--receivers": "connector.receivers",
}


def main(argv: list[str] | None = None) -> int:
    """``cresta-pipeline connector run``: read contacts until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="cresta-pipeline connector run",
        description="KVS connector worker: contacts from the SQS work queue, their audio from KVS "
                    "GetMedia to the KDS audio-frames stream. Settings come from --config, then the "
                    "environment, then these flags (the strongest).",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="settings file: Managed Flink property groups JSON, as the job reads")
    add_setting_flags(parser, _FLAGS)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, overrides=flag_overrides(args, _FLAGS))
        settings = ReadSettings(
            max_idle_s=config["connector.max_idle_s"],
            checkpoint_interval_s=config["connector.checkpoint_interval_s"],
        )
    except ValueError as exc:  # ConfigError among them
        parser.error(str(exc))
    if not config["connector.queue_url"]:
        parser.error("connector.queue_url is required: --queue-url, CONNECTOR_QUEUE_URL or the config file")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")

    session = boto3.session.Session(region_name=config["aws.region"])
    endpoint_url = config["aws.endpoint_url"] or None
    # Every contact thread may call SQS, GetDataEndpoint or DynamoDB at once; with
    # botocore's default pool of 10 connections the others open and drop one per call.
    client_config = Config(max_pool_connections=config["connector.max_concurrent_contacts"])

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint_url, config=client_config)

    sqs = client("sqs")
    kinesis = client("kinesis")
    kinesisvideo = client("kinesisvideo")
    checkpoint_store = None
    if config["connector.checkpoint_table"]:
        checkpoint_store = DynamoDbCheckpointStore(client("dynamodb"), config["connector.checkpoint_table"])

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal %s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    producer = KinesisRecordProducer(kinesis, config["kinesis.audio_frames_stream"])
    try:
        worker = ConnectorWorker(
            sqs,
            config["connector.queue_url"],
            KvsMediaSource(
                kinesisvideo, media_endpoint_override=config["connector.kvs_media_endpoint"] or None, session=session
            ),
            producer,
            max_concurrent_contacts=config["connector.max_concurrent_contacts"],
            visibility_timeout_s=config["connector.visibility_timeout_s"],
            checkpoint_store=checkpoint_store,
            read_settings=settings,
            receivers=config["connector.receivers"],
        )
        worker.run(stop)
    finally:
        producer.close()
    return 0
