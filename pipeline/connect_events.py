"""Amazon Connect's Lambda events turned into the pipeline's records.

Field names follow the Connect admin guide (*connect-lambda-functions*,
*media-streaming-attributes*) and the EventBridge contact-event schema. Validation lives
here, away from boto3, so a malformed event is rejected the same way everywhere.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.records import ContactEvent, ContactWork, EventType, RecordError

_FRAGMENT_NUMBER = re.compile(r"[0-9]{1,48}")
_STREAM_ARN = re.compile(r"arn:aws[a-z-]*:kinesisvideo:[a-z0-9-]+:[0-9]{12}:stream/[^\s]+/[0-9]+")


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise RecordError("malformed_connect_event", f"{where}.{key} is missing")
    return mapping[key]


def _instance_id(instance_arn: str) -> str:
    return instance_arn.rsplit("/", 1)[-1] if instance_arn else ""


def contact_started(event: dict[str, Any], now_ms: int) -> tuple[ContactEvent, ContactWork]:
    """The contact-flow Lambda event (after Start media streaming) → STARTED + work item."""
    details = _require(event, "Details", "event")
    contact = _require(details, "ContactData", "Details")
    contact_id = _require(contact, "ContactId", "ContactData")
    if not isinstance(contact_id, str) or not contact_id:
        raise RecordError("malformed_connect_event", "ContactData.ContactId is empty")
    audio = _require(
        _require(_require(contact, "MediaStreams", "ContactData"), "Customer", "MediaStreams"),
        "Audio",
        "MediaStreams.Customer",
    )
    stream_arn = _require(audio, "StreamARN", "Audio")
    if not isinstance(stream_arn, str) or not _STREAM_ARN.fullmatch(stream_arn):
        raise RecordError("malformed_connect_event", f"Audio.StreamARN {stream_arn!r} is not a KVS stream ARN")
    start_fragment = str(_require(audio, "StartFragmentNumber", "Audio"))
    if not _FRAGMENT_NUMBER.fullmatch(start_fragment):
        raise RecordError("malformed_connect_event", "Audio.StartFragmentNumber is not a fragment number")
    try:
        start_ms = int(audio.get("StartTimestamp") or 0)
    except (TypeError, ValueError):
        raise RecordError("malformed_connect_event", "Audio.StartTimestamp is not epoch ms") from None
    attributes = contact.get("Attributes") or {}
    if not isinstance(attributes, dict):
        raise RecordError("malformed_connect_event", "ContactData.Attributes is not a map")
    attributes = {str(k): str(v) for k, v in attributes.items()}
    queue = contact.get("Queue") or {}
    parameters = details.get("Parameters") or {}
    if not isinstance(parameters, dict):
        raise RecordError("malformed_connect_event", "Details.Parameters is not a map")
    instance_id = _instance_id(str(contact.get("InstanceARN") or ""))
    started = ContactEvent(
        type=EventType.STARTED,
        contact_id=contact_id,
        event_time_ms=now_ms,
        instance_id=instance_id,
        stream_arn=stream_arn,
        start_fragment_number=start_fragment,
        start_timestamp_ms=start_ms,
        attributes=attributes,
        agent_id=str(parameters.get("AgentId") or attributes.get("AgentId") or ""),
        queue_name=str(queue.get("Name") or "") if isinstance(queue, dict) else "",
        initiation_method=str(contact.get("InitiationMethod") or ""),
        previous_contact_id=str(contact.get("PreviousContactId") or ""),
    )
    started.encode()  # enforces the attribute size limit before anything is published
    work = ContactWork(
        contact_id=contact_id,
        stream_arn=stream_arn,
        start_fragment_number=start_fragment,
        instance_id=instance_id,
        start_timestamp_ms=start_ms,
    )
    return started, work


def contact_disconnected(event: dict[str, Any], now_ms: int) -> ContactEvent | None:
    """An EventBridge "Amazon Connect Contact Event"; DISCONNECTED → ENDED, others → None."""
    detail = _require(event, "detail", "event")
    if not isinstance(detail, dict):
        raise RecordError("malformed_connect_event", "event.detail is not an object")
    if detail.get("eventType") != "DISCONNECTED":
        return None
    contact_id = _require(detail, "contactId", "detail")
    if not isinstance(contact_id, str) or not contact_id:
        raise RecordError("malformed_connect_event", "detail.contactId must be a non-empty string")
    return ContactEvent(
        type=EventType.ENDED,
        contact_id=contact_id,
        event_time_ms=now_ms,
        instance_id=_instance_id(str(detail.get("instanceArn") or "")),
    )
