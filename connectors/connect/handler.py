"""Lambda handlers on the Amazon Connect side.

``contact_flow_handler`` is invoked by the contact flow right after *Start media
streaming*. It must answer well within the Invoke Lambda block's 8 s limit, so it only
hands off: STARTED to KDS ``contact-events`` and a work item to the connector queue.
It returns a flat string map the flow can branch on (``status`` = ``OK`` | ``ERROR``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from connectors.kvs.checkpoints import CheckpointStore, DynamoDbCheckpointStore
from pipeline.connect_events import contact_disconnected, contact_started
from pipeline.records import RecordError

log = logging.getLogger(__name__)

CONTACT_EVENTS_STREAM_ENV = "CONTACT_EVENTS_STREAM"
CONNECTOR_QUEUE_URL_ENV = "CONNECTOR_QUEUE_URL"
CHECKPOINT_TABLE_ENV = "CHECKPOINT_TABLE"

_clients: dict[str, Any] = {}


def _client(name: str) -> Any:
    # Created once per Lambda container; boto3 reads AWS_ENDPOINT_URL for local stacks.
    if name not in _clients:
        _clients[name] = boto3.client(name)
    return _clients[name]


def contact_flow_handler(event: dict[str, Any], context: Any = None, *, kinesis=None, sqs=None) -> dict[str, str]:
    kinesis = kinesis or _client("kinesis")
    sqs = sqs or _client("sqs")
    try:
        started, work = contact_started(event, now_ms=int(time.time() * 1000))
    except RecordError as exc:
        log.warning("rejected contact flow event: %s", exc)
        return {"status": "ERROR", "reason": exc.reason, "message": str(exc)}
    try:
        # The work item first: without it nobody reads the audio, whereas audio without
        # STARTED still flows (flagged attributes_missing) after the enrichment wait.
        sqs.send_message(QueueUrl=os.environ[CONNECTOR_QUEUE_URL_ENV], MessageBody=work.encode())
        kinesis.put_record(
            StreamName=os.environ[CONTACT_EVENTS_STREAM_ENV],
            Data=started.encode(),
            PartitionKey=started.contact_id,
        )
    except (BotoCoreError, ClientError) as exc:
        log.error("contact %s: hand-off failed: %s", started.contact_id, exc)
        code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
        return {"status": "ERROR", "reason": "handoff_failed", "message": code}
    log.info("contact %s handed off (stream %s)", started.contact_id, started.stream_arn)
    return {"status": "OK", "contactId": started.contact_id}


def contact_event_handler(
    event: dict[str, Any], context: Any = None, *, kinesis=None, checkpoints: CheckpointStore | None = None
) -> dict[str, str]:
    """EventBridge Amazon Connect contact events → ENDED on ``contact-events``.

    With ``CHECKPOINT_TABLE`` set, a DISCONNECTED contact is also marked ended in the
    connector's checkpoint table, so the worker reading its audio ends it as soon as its
    stream goes quiet instead of after the idle limit. Failures raise, so that
    EventBridge's asynchronous invocation retries; both writes are idempotent.
    """
    kinesis = kinesis or _client("kinesis")
    try:
        ended = contact_disconnected(event, now_ms=int(time.time() * 1000))
    except RecordError as exc:
        log.warning("rejected contact event: %s", exc)
        return {"status": "ERROR", "reason": exc.reason, "message": str(exc)}
    if ended is None:
        return {"status": "IGNORED"}
    if checkpoints is None and os.environ.get(CHECKPOINT_TABLE_ENV):
        checkpoints = DynamoDbCheckpointStore(_client("dynamodb"), os.environ[CHECKPOINT_TABLE_ENV])
    if checkpoints is not None:
        checkpoints.mark_contact_ended(ended.contact_id, ended.event_time_ms)
    kinesis.put_record(
        StreamName=os.environ[CONTACT_EVENTS_STREAM_ENV],
        Data=ended.encode(),
        PartitionKey=ended.contact_id,
    )
    return {"status": "OK", "contactId": ended.contact_id}
