"""The KVS connector worker: contacts from SQS in, AudioFrame records on KDS out.

``read_contact`` reads one contact: GetMedia (one connection, both tracks) → streaming
MKV parser → ``ConnectContactStream`` → ``publish`` every frame (partition key =
ContactId), then the END record with the totals. ``ConnectorWorker`` takes contacts
from the work queue and runs ``read_contact`` for each in its own thread.

Where reading starts. The StartSelector documentation says ``FRAGMENT_NUMBER`` starts
"with the chunk after" ``AfterFragmentNumber``, and readers that pass Connect's
StartFragmentNumber there report missing starts (see ``emulators/kvs/server.py`` for the
sources). So when the work item has Connect's StartTimestamp the worker asks for
``PRODUCER_TIMESTAMP`` — "the chunk containing a fragment with the specified
timestamp" — which includes the first fragment; any earlier fragment that comes with it
is dropped by ``ConnectContactStream`` (below the StartFragmentNumber, or another
contact's). Without a timestamp it falls back to ``FRAGMENT_NUMBER`` and logs that the
first fragment may be missing.

Failure policy. A stream that cannot be read correctly (corrupt MKV, an error reported
inside the stream, a stream that is not there) ends the contact with an END record
whose reason says why; the message is deleted. A failure that may pass (throttling, a
dropped connection, shutdown) publishes no END and hands the message back to the queue,
so the contact is read again from its start; duplicates are dropped downstream by the
frames' unique key.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from connectors.kinesis.producer import KinesisRecordProducer
from connectors.kvs.media import KvsMediaSource, MediaSource, MediaSourceError
from pipeline.connect_stream import ConnectContactStream, EndReason
from pipeline.mkv import MkvError, MkvStreamParser
from pipeline.records import AudioEnd, AudioFrame, ContactWork, RecordError

log = logging.getLogger(__name__)

ENV_ENDPOINT_URL = "AWS_ENDPOINT_URL"
ENV_REGION = "AWS_REGION"
ENV_DEFAULT_REGION = "AWS_DEFAULT_REGION"
ENV_QUEUE_URL = "CONNECTOR_QUEUE_URL"
ENV_FRAMES_STREAM = "AUDIO_FRAMES_STREAM"
ENV_KVS_MEDIA_ENDPOINT = "KVS_MEDIA_ENDPOINT"
DEFAULT_FRAMES_STREAM = "audio-frames"
DEFAULT_REGION = "us-east-1"

#: Reasons of contacts that ended without a usable stream (in END records and logs).
REASON_GET_MEDIA_FAILED = "get_media_failed"
REASON_BAD_RECORD = "bad_record"
#: Reasons of reads handed back to the queue (no END published).
REASON_PUBLISH_FAILED = "publish_failed"
REASON_STOPPED = "stopped"

Publish = Callable[[bytes, str], None]


class Producer(Protocol):
    def put(self, data: bytes, partition_key: str) -> None: ...

    def flush(self, timeout_s: float | None = None) -> None: ...


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
) -> ContactReadResult:
    """Read one contact's audio from KVS and publish it; never raises for bad input."""
    return _ContactRead(work, publish).run(media_source, stop)


class _ContactRead:
    """One call of ``read_contact``: the contact's stream state and what was published."""

    def __init__(self, work: ContactWork, publish: Publish) -> None:
        self.work = work
        self.contact_id = work.contact_id
        self.publish = publish
        self.stream = ConnectContactStream(work.contact_id, start_fragment_number=work.start_fragment_number)
        self.published = 0

    def run(self, media_source: MediaSource, stop: threading.Event | None) -> ContactReadResult:
        selector = start_selector_for(self.work)
        if selector["StartSelectorType"] == "FRAGMENT_NUMBER":
            log.warning(
                "no start timestamp, reading after the start fragment; its audio may be missing "
                "contact_id=%s fragment=%s", self.contact_id, self.work.start_fragment_number,
            )
        log.info(
            "contact read starting contact_id=%s stream=%s selector=%s",
            self.contact_id, self.work.stream_arn, selector["StartSelectorType"],
        )
        try:
            try:
                chunks = media_source.open(self.work.stream_arn, selector)
            except MediaSourceError as exc:
                if exc.retryable:
                    return self.give_back(REASON_GET_MEDIA_FAILED, str(exc))
                return self.finish(REASON_GET_MEDIA_FAILED, str(exc))
            return self.pump(chunks, stop)
        except RecordError as exc:
            # Only a contact whose id cannot be written into a record gets here.
            log.error("contact cannot be encoded contact_id=%r: %s", self.contact_id, exc)
            return self.result(REASON_BAD_RECORD, None, detail=str(exc))
        except Exception as exc:
            # The publisher failed (e.g. the producer is down): nothing more can be sent now.
            log.exception("contact read failed contact_id=%s", self.contact_id)
            return self.result(REASON_PUBLISH_FAILED, None, retryable=True, detail=str(exc))

    def pump(self, chunks: Iterator[bytes], stop: threading.Event | None) -> ContactReadResult:
        stream = self.stream
        parser = MkvStreamParser()
        try:
            for chunk in chunks:
                self.emit(stream.feed(parser.feed(chunk)))
                if stream.ended:
                    break
                if stop is not None and stop.is_set():
                    return self.give_back(REASON_STOPPED, "worker is shutting down")
            else:
                self.emit(stream.feed(parser.close()))
                self.emit(stream.close())
        except MkvError as exc:
            stream.fail(EndReason.CORRUPT_STREAM, str(exc))
        except MediaSourceError as exc:
            return self.give_back(exc.code, str(exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if not stream.ended:
            return self.finish(EndReason.STREAM_ENDED)
        detail = stream.error_detail
        if stream.error is not None:
            detail = f"GetMedia error {stream.error.error_id} {stream.error.code}"
        return self.finish(stream.end_reason, detail)

    def emit(self, frames: list[AudioFrame]) -> None:
        for frame in frames:
            self.publish(frame.encode(), self.contact_id)
            self.published += 1

    def finish(self, reason: str, detail: str = "") -> ContactReadResult:
        """Publish the END record: this contact is done, for good or with a failure."""
        stream = self.stream
        end = stream.end(reason)
        self.publish(end.encode(), self.contact_id)
        normal = reason in (EndReason.CONTACT_CHANGED, EndReason.STREAM_ENDED)
        log.log(
            logging.INFO if normal else logging.WARNING,
            "contact read ended contact_id=%s reason=%s frames=%d customer_samples=%d agent_samples=%d "
            "last_fragment=%s skipped_fragments=%d discarded_fragments=%d unknown_tracks=%s%s",
            self.contact_id, reason, self.published, end.customer_samples, end.agent_samples,
            end.last_fragment_number or "-", stream.skipped_fragments, stream.discarded_fragments,
            stream.unknown_track_frames or "-", f" detail={detail!r}" if detail else "",
        )
        return self.result(reason, end, detail=detail)

    def give_back(self, reason: str, detail: str) -> ContactReadResult:
        """No END: the contact goes back to the queue to be read again."""
        log.warning(
            "contact read interrupted, will retry contact_id=%s reason=%s frames=%d detail=%r",
            self.contact_id, reason, self.published, detail,
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
            last_fragment_number=self.stream.last_fragment_number,
            continuation_token=self.stream.continuation_token,
        )


@dataclass
class _InFlight:
    work: ContactWork
    receipt_handle: str
    thread: threading.Thread
    visible_until: float


class ConnectorWorker:
    """Long-polls the work queue and reads each contact in a thread of its own.

    Parameters
    ----------
    visibility_timeout_s:
        Messages being read are kept invisible this long and extended while reading.
    retry_delay_s:
        A contact handed back (retryable failure) reappears on the queue after this.
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
    ) -> None:
        self._sqs = sqs_client
        self.queue_url = queue_url
        self._media_source = media_source
        self._producer = producer
        self.max_concurrent_contacts = max_concurrent_contacts
        self.poll_wait_s = poll_wait_s
        self.visibility_timeout_s = visibility_timeout_s
        self.retry_delay_s = retry_delay_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self._lock = threading.Lock()
        self._in_flight: dict[str, _InFlight] = {}
        self.contacts_done = 0
        self.contacts_handed_back = 0
        #: AudioFrame records published by finished reads (handed-back reads included).
        self.frames_published = 0

    def run(self, stop: threading.Event) -> None:
        log.info("connector worker started queue=%s", self.queue_url)
        while not stop.is_set():
            self._reap()
            self._extend_visibility()
            capacity = self.max_concurrent_contacts - self._in_flight_count()
            if capacity <= 0:
                stop.wait(0.1)
                continue
            try:
                messages = self._sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=min(10, capacity),
                    WaitTimeSeconds=self.poll_wait_s,
                    VisibilityTimeout=self.visibility_timeout_s,
                ).get("Messages", [])
            except (ClientError, BotoCoreError) as exc:
                log.warning("receiving from the work queue failed: %s", exc)
                stop.wait(1.0)
                continue
            for message in messages:
                self._start(message, stop)
        self._shut_down()

    # -- contacts ----------------------------------------------------------------------

    def _start(self, message: dict[str, Any], stop: threading.Event) -> None:
        receipt = message["ReceiptHandle"]
        try:
            work = ContactWork.decode(message["Body"])
        except RecordError as exc:
            log.error("dropping malformed work item message_id=%s: %s", message.get("MessageId"), exc)
            self._delete(receipt, contact_id="-")
            return
        thread = threading.Thread(
            target=self._read, args=(work, receipt, stop), name=f"contact-{work.contact_id}", daemon=True
        )
        with self._lock:
            self._in_flight[receipt] = _InFlight(
                work, receipt, thread, time.monotonic() + self.visibility_timeout_s
            )
        thread.start()

    def _read(self, work: ContactWork, receipt: str, stop: threading.Event) -> None:
        try:
            result = read_contact(work, self._media_source, self._producer.put, stop=stop)
            with self._lock:
                self.frames_published += result.frames_published
            if result.retryable:
                self._hand_back(receipt, work.contact_id)
                return
            # The message goes only once everything it produced is in the stream.
            self._producer.flush()
            self._delete(receipt, work.contact_id)
            with self._lock:
                self.contacts_done += 1
        except Exception:
            log.exception("contact thread failed contact_id=%s", work.contact_id)
            self._hand_back(receipt, work.contact_id)

    def _reap(self) -> None:
        with self._lock:
            for receipt, entry in list(self._in_flight.items()):
                if not entry.thread.is_alive():
                    del self._in_flight[receipt]

    def _in_flight_count(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def _extend_visibility(self) -> None:
        # Extend when a third of the timeout is left, in batches of 10 (the API's limit).
        now = time.monotonic()
        with self._lock:
            due = [
                entry
                for entry in self._in_flight.values()
                if entry.visible_until - now < self.visibility_timeout_s / 3
            ]
        for start in range(0, len(due), 10):
            group = due[start : start + 10]
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
                continue
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

    def _hand_back(self, receipt: str, contact_id: str) -> None:
        with self._lock:
            self.contacts_handed_back += 1
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=self.retry_delay_s
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("handing the work item back failed contact_id=%s: %s", contact_id, exc)

    def _shut_down(self) -> None:
        deadline = time.monotonic() + self.shutdown_timeout_s
        with self._lock:
            threads = [entry.thread for entry in self._in_flight.values()]
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        self._reap()
        log.info("connector worker stopped; %d contacts still being read", self._in_flight_count())


# -- CLI ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``cresta-pipeline connector run``: read contacts until SIGTERM/SIGINT."""
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="cresta-pipeline connector run", description="KVS connector worker: contacts from SQS to KDS"
    )
    parser.add_argument("--endpoint-url", default=env.get(ENV_ENDPOINT_URL),
                        help=f"AWS endpoint for local runs (env {ENV_ENDPOINT_URL})")
    parser.add_argument("--region",
                        default=env.get(ENV_REGION) or env.get(ENV_DEFAULT_REGION) or DEFAULT_REGION,
                        help=f"AWS region (env {ENV_REGION}, {ENV_DEFAULT_REGION})")
    parser.add_argument("--queue-url", default=env.get(ENV_QUEUE_URL),
                        help=f"SQS work queue URL (env {ENV_QUEUE_URL})")
    parser.add_argument("--frames-stream", default=env.get(ENV_FRAMES_STREAM) or DEFAULT_FRAMES_STREAM,
                        help=f"KDS stream for AudioFrame records (env {ENV_FRAMES_STREAM})")
    parser.add_argument("--kvs-media-endpoint", default=env.get(ENV_KVS_MEDIA_ENDPOINT),
                        help="GetMedia endpoint replacing GetDataEndpoint's answer "
                             f"(env {ENV_KVS_MEDIA_ENDPOINT})")
    parser.add_argument("--max-concurrent-contacts", type=int, default=200)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.queue_url:
        parser.error(f"--queue-url (or {ENV_QUEUE_URL}) is required")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")

    session = boto3.session.Session(region_name=args.region)
    sqs = session.client("sqs", endpoint_url=args.endpoint_url)
    kinesis = session.client("kinesis", endpoint_url=args.endpoint_url)
    kinesisvideo = session.client("kinesisvideo", endpoint_url=args.endpoint_url)

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal %s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    producer = KinesisRecordProducer(kinesis, args.frames_stream)
    try:
        worker = ConnectorWorker(
            sqs,
            args.queue_url,
            KvsMediaSource(kinesisvideo, media_endpoint_override=args.kvs_media_endpoint, session=session),
            producer,
            max_concurrent_contacts=args.max_concurrent_contacts,
        )
        worker.run(stop)
    finally:
        producer.close()
    return 0
