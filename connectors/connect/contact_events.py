"""EventBridge "Amazon Connect Contact Event"s turned into the pipeline's contact events.

Pure functions over the event (no boto3), like ``pipeline.connect_events``, which turns
DISCONNECTED into ENDED; this module adds the events that change what the audit trail
says about a contact while it runs. Field names follow the contact events data model
(Connect admin guide, *contact-events*): ``detail.eventType``, ``contactId``,
``instanceArn``, ``initiationMethod``, ``previousContactId``, ``agentInfo.agentArn``,
``queueInfo.queueArn``.

- ``DISCONNECTED`` → ENDED.
- ``CONNECTED_TO_AGENT`` → ATTRIBUTES_UPDATED with the agent (the contact-flow Lambda
  runs before any agent is known) and, for a transferred contact, its previous contact.
  A transfer (``initiationMethod`` TRANSFER or QUEUE_TRANSFER) is a new contact with a
  new ContactId: its own flow starts streaming and publishes its STARTED, with
  ``previous_contact_id`` from the flow event; the agent it reaches comes from here.
  ``queueInfo`` holds the queue's ARN only, not the name the audit trail records, so
  the queue name stays the one STARTED carried.
- Every other event type (INITIATED, QUEUED, CONTACT_DATA_UPDATED, COMPLETED, …) → None:
  the data model carries neither the contact's user-defined attributes nor anything
  else the records hold, and new types are ignored, as the guide asks of consumers.

>>> event = {"detail": {
...     "eventType": "CONNECTED_TO_AGENT", "contactId": "c-2",
...     "instanceArn": "arn:aws:connect:us-east-1:123456789012:instance/i-1",
...     "initiationMethod": "TRANSFER", "previousContactId": "c-1",
...     "agentInfo": {"agentArn": "arn:aws:connect:us-east-1:123456789012:instance/i-1/agent/a-7"}}}
>>> record = contact_event_record(event, now_ms=1)
>>> record.type.value, record.agent_id, record.previous_contact_id, record.instance_id
('ATTRIBUTES_UPDATED', 'a-7', 'c-1', 'i-1')
"""

from __future__ import annotations

from typing import Any

from pipeline.connect_events import contact_disconnected
from pipeline.records import MAX_CONTACT_ID_BYTES, ContactEvent, EventType, RecordError

#: The event types this module turns into records; the EventBridge rule asks for these only.
HANDLED_EVENT_TYPES = ("DISCONNECTED", "CONNECTED_TO_AGENT")


def _malformed(message: str) -> RecordError:
    return RecordError("malformed_connect_event", message)


def _contact_id(detail: dict[str, Any]) -> str:
    contact_id = detail.get("contactId")
    if not isinstance(contact_id, str) or not contact_id:
        raise _malformed("detail.contactId must be a non-empty string")
    if len(contact_id.encode()) > MAX_CONTACT_ID_BYTES:
        raise _malformed(f"detail.contactId is longer than {MAX_CONTACT_ID_BYTES} bytes")
    return contact_id


def _last_path_segment(arn: str, collection: str) -> str:
    """The id after ``/<collection>/`` in a Connect ARN; "" when the ARN has none."""
    _, sep, rest = arn.rpartition(f"/{collection}/")
    return rest if sep and rest and "/" not in rest else ""


def contact_event_record(event: dict[str, Any], now_ms: int) -> ContactEvent | None:
    """The record for one EventBridge contact event, or None when it changes nothing."""
    if not isinstance(event, dict):
        raise _malformed("the event is not an object")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise _malformed("event.detail is missing or not an object")
    event_type = detail.get("eventType")
    if event_type == "DISCONNECTED":
        _contact_id(detail)
        return contact_disconnected(event, now_ms)
    if event_type == "CONNECTED_TO_AGENT":
        return _agent_connected(detail, now_ms)
    return None


def _agent_connected(detail: dict[str, Any], now_ms: int) -> ContactEvent:
    contact_id = _contact_id(detail)
    agent_info = detail.get("agentInfo")
    agent_arn = agent_info.get("agentArn") if isinstance(agent_info, dict) else None
    if not isinstance(agent_arn, str) or not _last_path_segment(agent_arn, "agent"):
        raise _malformed("detail.agentInfo.agentArn must be a Connect agent ARN")
    instance_arn = str(detail.get("instanceArn") or "")
    return ContactEvent(
        type=EventType.ATTRIBUTES_UPDATED,
        contact_id=contact_id,
        event_time_ms=now_ms,
        instance_id=instance_arn.rsplit("/", 1)[-1] if instance_arn else "",
        agent_id=_last_path_segment(agent_arn, "agent"),
        initiation_method=str(detail.get("initiationMethod") or ""),
        previous_contact_id=str(detail.get("previousContactId") or ""),
    )
