"""Lambda handlers on the Amazon Connect side.

``contact_flow_handler`` is invoked by the contact flow right after *Start media
streaming* (``deploy/connect/contact-flow.json``); ``contact_event_handler`` by the
EventBridge rule on Connect's contact events (``deploy/cloudformation/pipeline.yaml``).
Both are packaged with ``pipeline/`` and ``connectors/`` only: they need nothing beyond
the standard library and the boto3 the Lambda Python runtime ships.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from connectors.connect.contact_events import contact_event_record
from connectors.kvs.checkpoints import CheckpointStore, DynamoDbCheckpointStore
from pipeline.connect_events import contact_started
from pipeline.records import MAX_CONTACT_ID_BYTES, ContactWork, EventType, RecordError

log = logging.getLogger(__name__)

CONTACT_EVENTS_STREAM_ENV = "CONTACT_EVENTS_STREAM"
CONNECTOR_QUEUE_URL_ENV = "CONNECTOR_QUEUE_URL"
CHECKPOINT_TABLE_ENV = "CHECKPOINT_TABLE"

#: The Invoke Lambda block waits at most 8 s. A call that hangs gives up after 1 s to
#: connect or 2 s to answer, and is tried twice at most, so one slow AWS call cannot use
#: the flow's whole wait; the function's own timeout (below 8 s in the template) bounds
#: the rest. A normal hand-off takes two short calls.
CLIENT_CONFIG = Config(connect_timeout=1, read_timeout=2, retries={"mode": "standard", "total_max_attempts": 2})

_clients: dict[str, Any] = {}


def _client(name: str) -> Any:
    # Created once per Lambda container; boto3 reads AWS_ENDPOINT_URL for local stacks.
    if name not in _clients:
        _clients[name] = boto3.client(name, config=CLIENT_CONFIG)
    return _clients[name]


def _error(reason: str, message: str) -> dict[str, str]:
    return {"status": "ERROR", "reason": reason, "message": message}


def _check_voice_contact(event: dict[str, Any]) -> None:
    """What ``contact_started`` leaves to the hand-off: the channel and the id's length."""
    details = event.get("Details") if isinstance(event, dict) else None
    contact = details.get("ContactData") if isinstance(details, dict) else None
    if not isinstance(contact, dict):
        return  # contact_started names what is missing
    channel = contact.get("Channel")
    if channel is not None and channel != "VOICE":
        raise RecordError("malformed_connect_event", f"ContactData.Channel is {channel!r}: media streaming is voice only")
    contact_id = contact.get("ContactId")
    if isinstance(contact_id, str) and len(contact_id.encode()) > MAX_CONTACT_ID_BYTES:
        # Also the limit of an SQS FIFO message group and deduplication id.
        raise RecordError("malformed_connect_event", f"ContactData.ContactId is longer than {MAX_CONTACT_ID_BYTES} bytes")


def _send_work_item(sqs: Any, queue_url: str, work: ContactWork) -> None:
    request = {"QueueUrl": queue_url, "MessageBody": work.encode()}
    # FIFO queues' names end in .fifo (an SQS rule); only they take these two ids.
    if queue_url.endswith(".fifo"):
        request["MessageGroupId"] = work.contact_id
        request["MessageDeduplicationId"] = work.contact_id
    sqs.send_message(**request)


def contact_flow_handler(event: dict[str, Any], context: Any = None, *, kinesis=None, sqs=None) -> dict[str, str]:
    """Hand a contact whose audio Connect now streams to the pipeline.

    Validates the Connect event, sends the contact's work item to the connector queue
    (``CONNECTOR_QUEUE_URL``) and puts STARTED on ``contact-events``
    (``CONTACT_EVENTS_STREAM``), then answers the flow with a flat string map it can
    branch on: ``{"status": "OK", "contactId": …}``, or ``{"status": "ERROR", "reason":
    …, "message": …}`` for a bad event (``malformed_connect_event``, nothing sent) or a
    failed hand-off (``handoff_failed``, the AWS error code in ``message``). It never
    raises: the flow goes on to the queue either way, and the call must not wait for the
    pipeline. The work item goes first: without it nobody reads the audio, whereas audio
    without STARTED still flows (flagged ``attributes_missing``) after the enrichment wait.

    Repeated invocations. Connect may invoke the function again for the same contact
    (a retry after a throttle, an error or a timeout). What a repeat does downstream:

    - Work item, on the deployment's FIFO queue: ``MessageDeduplicationId`` = ContactId,
      so SQS accepts a repeat within its 5-minute deduplication interval but never
      delivers it; and ``MessageGroupId`` = ContactId, so SQS delivers no message of a
      contact while another of the same contact is in flight. A repeat past the interval
      therefore waits until the worker reading the contact deletes its message, which it
      does once the contact is completed, and the next worker drops it as
      ``already_completed`` from the checkpoint table. Two workers never read one
      contact at once, and no home-made lock is needed for it.
    - On a standard queue (the local stack's), neither id exists: a repeat is a second
      work item, and two workers may read the contact until the conditional checkpoint
      writes stop the one that lost it (``superseded``). The duplicate frames carry the
      same unique keys and are dropped downstream, but both hold KVS connections, so
      the CloudFormation template creates a FIFO queue.
    - STARTED: a second one with the same attributes; the assembler merges a contact's
      events, so it changes nothing.
    """
    kinesis = kinesis or _client("kinesis")
    sqs = sqs or _client("sqs")
    try:
        _check_voice_contact(event)
        started, work = contact_started(event, now_ms=int(time.time() * 1000))
    except RecordError as exc:
        log.warning("rejected contact flow event: %s", exc)
        return _error(exc.reason, str(exc))
    try:
        _send_work_item(sqs, os.environ[CONNECTOR_QUEUE_URL_ENV], work)
        kinesis.put_record(
            StreamName=os.environ[CONTACT_EVENTS_STREAM_ENV],
            Data=started.encode(),
            PartitionKey=started.contact_id,
        )
    except (BotoCoreError, ClientError) as exc:
        log.error("contact %s: hand-off failed: %s", started.contact_id, exc)
        code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
        return _error("handoff_failed", code)
    log.info("contact %s handed off (stream %s)", started.contact_id, started.stream_arn)
    return {"status": "OK", "contactId": started.contact_id}


def contact_event_handler(
    event: dict[str, Any], context: Any = None, *, kinesis=None, checkpoints: CheckpointStore | None = None
) -> dict[str, str]:
    """EventBridge Amazon Connect contact events → ``contact-events``.

    DISCONNECTED becomes ENDED and CONNECTED_TO_AGENT becomes ATTRIBUTES_UPDATED (see
    ``connectors.connect.contact_events``); other event types are ignored. With
    ``CHECKPOINT_TABLE`` set, a DISCONNECTED contact is also marked ended in the
    connector's checkpoint table first, so the worker reading its audio ends it as soon
    as its stream goes quiet instead of after the idle limit. A malformed event is
    answered with an ERROR result (a retry cannot mend it); AWS failures raise, so that
    EventBridge's asynchronous invocation retries, and every write is idempotent: the
    ended mark keeps its first time, and a repeated event record is merged or ignored
    downstream.
    """
    kinesis = kinesis or _client("kinesis")
    try:
        record = contact_event_record(event, now_ms=int(time.time() * 1000))
    except RecordError as exc:
        log.warning("rejected contact event: %s", exc)
        return _error(exc.reason, str(exc))
    if record is None:
        return {"status": "IGNORED"}
    if record.type is EventType.ENDED:
        if checkpoints is None and os.environ.get(CHECKPOINT_TABLE_ENV):
            checkpoints = DynamoDbCheckpointStore(_client("dynamodb"), os.environ[CHECKPOINT_TABLE_ENV])
        if checkpoints is not None:
            checkpoints.mark_contact_ended(record.contact_id, record.event_time_ms)
    kinesis.put_record(
        StreamName=os.environ[CONTACT_EVENTS_STREAM_ENV],
        Data=record.encode(),
        PartitionKey=record.contact_id,
    )
    return {"status": "OK", "contactId": record.contact_id}
