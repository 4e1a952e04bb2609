"""Connect's Lambda events → STARTED/ENDED ContactEvents and the connector's ContactWork.

The contact-flow event is built as the Connect admin guide documents it
(*connect-lambda-functions*, *media-streaming-attributes*): Details.ContactData with
MediaStreams.Customer.Audio.{StreamARN, StartFragmentNumber, StartTimestamp}, Attributes,
Queue, InstanceARN, and the Invoke block's Details.Parameters.
"""

from __future__ import annotations

import copy

import pytest

from pipeline.connect_events import contact_disconnected, contact_started
from pipeline.records import MAX_ATTRIBUTES_BYTES, ContactEvent, ContactWork, EventType, RecordError

NOW = 1726677690500
CONTACT = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
INSTANCE = "d5b716a2-2f4b-4c3e-9a0f-1b2c3d4e5f60"
INSTANCE_ARN = f"arn:aws:connect:us-east-1:123456789012:instance/{INSTANCE}"
STREAM_ARN = (
    "arn:aws:kinesisvideo:us-east-1:123456789012:stream/"
    "connect-live-contact-8c1a5f3e-6b2d-4f0a-9e7c-3d2b1a0f9e8d/1726600000000"
)
FRAGMENT = "91343852333181432392682062622220590765191907586"
START_MS = "1726677688724"


def flow_event() -> dict:
    """A contact-flow Lambda event right after the Start media streaming block."""
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "Attributes": {"CustomerTier": "gold", "Language": "en-US"},
                "Channel": "VOICE",
                "ContactId": CONTACT,
                "CustomerEndpoint": {"Address": "+12065550100", "Type": "TELEPHONE_NUMBER"},
                "Description": None,
                "InitialContactId": CONTACT,
                "InitiationMethod": "INBOUND",
                "InstanceARN": INSTANCE_ARN,
                "LanguageCode": "en-US",
                "MediaStreams": {
                    "Customer": {
                        "Audio": {
                            "StartFragmentNumber": FRAGMENT,
                            "StartTimestamp": START_MS,
                            "StopFragmentNumber": None,
                            "StopTimestamp": None,
                            "StreamARN": STREAM_ARN,
                        }
                    }
                },
                "Name": None,
                "PreviousContactId": "0a1b2c3d-0000-4000-8000-00000000000a",
                "Queue": {
                    "ARN": f"{INSTANCE_ARN}/queue/4f1e2d3c-0000-4000-8000-000000000001",
                    "Name": "BasicQueue",
                    "OutboundCallerId": {"Address": "+12065550199", "Type": "TELEPHONE_NUMBER"},
                },
                "References": {},
                "SystemEndpoint": {"Address": "+12065550123", "Type": "TELEPHONE_NUMBER"},
            },
            "Parameters": {"AgentId": "agent-42", "Purpose": "cresta"},
        },
    }


def eventbridge_event(event_type: str = "DISCONNECTED") -> dict:
    """An "Amazon Connect Contact Event" as EventBridge delivers it."""
    return {
        "version": "0",
        "id": "5e9b8c4a-0000-4000-8000-0000000000ee",
        "detail-type": "Amazon Connect Contact Event",
        "source": "aws.connect",
        "account": "123456789012",
        "time": "2024-09-18T16:45:00Z",
        "region": "us-east-1",
        "resources": [INSTANCE_ARN, f"{INSTANCE_ARN}/contact/{CONTACT}"],
        "detail": {
            "eventType": event_type,
            "contactId": CONTACT,
            "channel": "VOICE",
            "instanceArn": INSTANCE_ARN,
            "initiationMethod": "INBOUND",
            "initiationTimestamp": "2024-09-18T16:41:28.724Z",
            "disconnectTimestamp": "2024-09-18T16:45:00.000Z",
        },
    }


def changed(path: str, value=..., event: dict | None = None) -> dict:
    """A copy of the flow event with the value at a dotted path replaced (or deleted when
    no value is given)."""
    event = copy.deepcopy(event or flow_event())
    *parents, last = path.split(".")
    node = event
    for name in parents:
        node = node[name]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return event


def refused(event: dict) -> RecordError:
    with pytest.raises(RecordError) as info:
        contact_started(event, NOW)
    assert info.value.reason == "malformed_connect_event"
    return info.value


# -- STARTED -------------------------------------------------------------------------------


def test_started_event_fields():
    started, _ = contact_started(flow_event(), NOW)
    assert started == ContactEvent(
        type=EventType.STARTED,
        contact_id=CONTACT,
        event_time_ms=NOW,
        instance_id=INSTANCE,
        stream_arn=STREAM_ARN,
        start_fragment_number=FRAGMENT,
        start_timestamp_ms=1726677688724,
        attributes={"CustomerTier": "gold", "Language": "en-US"},
        agent_id="agent-42",
        queue_name="BasicQueue",
        initiation_method="INBOUND",
        previous_contact_id="0a1b2c3d-0000-4000-8000-00000000000a",
    )


def test_work_item_fields():
    _, work = contact_started(flow_event(), NOW)
    assert work == ContactWork(
        contact_id=CONTACT,
        stream_arn=STREAM_ARN,
        start_fragment_number=FRAGMENT,
        instance_id=INSTANCE,
        start_timestamp_ms=1726677688724,
    )


def test_started_survives_its_own_codec():
    started, work = contact_started(flow_event(), NOW)
    assert ContactEvent.decode(started.encode()) == started
    assert ContactWork.decode(work.encode()) == work


def test_optional_fields_may_be_absent_or_null():
    event = flow_event()
    contact = event["Details"]["ContactData"]
    contact["Attributes"] = {}
    contact["Queue"] = None  # a contact not (yet) in a queue
    contact["PreviousContactId"] = ""
    del contact["InitiationMethod"]
    del contact["InstanceARN"]
    event["Details"]["Parameters"] = {}
    started, work = contact_started(event, NOW)
    assert (started.attributes, started.queue_name, started.agent_id) == ({}, "", "")
    assert (started.previous_contact_id, started.initiation_method, started.instance_id) == ("", "", "")
    assert work.instance_id == ""
    assert (started.stream_arn, started.start_fragment_number) == (STREAM_ARN, FRAGMENT)


def test_agent_id_falls_back_to_the_attribute():
    event = changed("Details.Parameters", {})
    event["Details"]["ContactData"]["Attributes"]["AgentId"] = "agent-7"
    started, _ = contact_started(event, NOW)
    assert started.agent_id == "agent-7"


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:kinesisvideo:eu-west-2:111111111111:stream/instance-alias-contact-1/9999999999999",
        "arn:aws-us-gov:kinesisvideo:us-gov-west-1:111111111111:stream/pool-7/1",
        "arn:aws-cn:kinesisvideo:cn-north-1:111111111111:stream/a/2",
    ],
)
def test_stream_arns_of_every_partition_are_accepted(arn):
    started, work = contact_started(changed("Details.ContactData.MediaStreams.Customer.Audio.StreamARN", arn), NOW)
    assert started.stream_arn == work.stream_arn == arn


@pytest.mark.parametrize("fragment", ["0", "1" * 48])
def test_fragment_number_lengths_are_accepted(fragment):
    event = changed("Details.ContactData.MediaStreams.Customer.Audio.StartFragmentNumber", fragment)
    assert contact_started(event, NOW)[1].start_fragment_number == fragment


# -- missing and invalid fields --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("Details", "Details"),
        ("Details.ContactData", "ContactData"),
        ("Details.ContactData.ContactId", "ContactId"),
        ("Details.ContactData.MediaStreams", "MediaStreams"),
        ("Details.ContactData.MediaStreams.Customer", "Customer"),
        ("Details.ContactData.MediaStreams.Customer.Audio", "Audio"),
        ("Details.ContactData.MediaStreams.Customer.Audio.StreamARN", "StreamARN"),
        ("Details.ContactData.MediaStreams.Customer.Audio.StartFragmentNumber", "StartFragmentNumber"),
    ],
)
def test_missing_field_names_the_field(path, field):
    assert field in str(refused(changed(path)))


def test_media_streaming_never_started_names_the_stream_arn():
    # The admin guide's event carries Audio = null until Start media streaming ran.
    error = refused(changed("Details.ContactData.MediaStreams.Customer.Audio", None))
    assert "StreamARN" in str(error)


@pytest.mark.parametrize("value", ["", None, 42, ["x"]])
def test_invalid_contact_id_names_the_field(value):
    assert "ContactId" in str(refused(changed("Details.ContactData.ContactId", value)))


@pytest.mark.parametrize(
    "value",
    [
        "",
        None,
        "not-an-arn",
        "arn:aws:s3:::connect-recordings/contact",
        "arn:aws:kinesis:us-east-1:123456789012:stream/contact-events",
        "arn:aws:kinesisvideo:us-east-1:123456789012:stream/no-creation-time",
        "arn:aws:kinesisvideo:us-east-1:12345:stream/pool/1",
        STREAM_ARN + "\n",
        " " + STREAM_ARN,
    ],
    ids=["empty", "null", "word", "s3", "kinesis-data-stream", "no-suffix", "short-account", "newline", "space"],
)
def test_invalid_stream_arn_names_the_field(value):
    assert "StreamARN" in str(refused(changed("Details.ContactData.MediaStreams.Customer.Audio.StreamARN", value)))


@pytest.mark.parametrize(
    "value",
    ["", None, "abc", "12a", "1" * 49, "-1", "1.5", FRAGMENT + "\n", " " + FRAGMENT],
    ids=["empty", "null", "word", "mixed", "49-digits", "negative", "decimal", "newline", "space"],
)
def test_invalid_fragment_number_names_the_field(value):
    path = "Details.ContactData.MediaStreams.Customer.Audio.StartFragmentNumber"
    assert "StartFragmentNumber" in str(refused(changed(path, value)))


@pytest.mark.parametrize("value", ["yesterday", "1726677688.724s", ["1"], {"ms": 1}])
def test_invalid_start_timestamp_names_the_field(value):
    path = "Details.ContactData.MediaStreams.Customer.Audio.StartTimestamp"
    assert "StartTimestamp" in str(refused(changed(path, value)))


@pytest.mark.parametrize("value", ["CustomerTier=gold", ["CustomerTier"], 7])
def test_attributes_that_are_not_a_map_name_the_field(value):
    assert "Attributes" in str(refused(changed("Details.ContactData.Attributes", value)))


def test_oversized_attributes_are_refused_before_anything_is_published():
    event = changed("Details.ContactData.Attributes", {"Transcript": "x" * MAX_ATTRIBUTES_BYTES})
    with pytest.raises(RecordError) as info:
        contact_started(event, NOW)
    assert info.value.reason == "oversized_attributes"
    assert "attributes" in str(info.value)


# -- EventBridge contact events -----------------------------------------------------------------


def test_disconnected_becomes_ended():
    assert contact_disconnected(eventbridge_event("DISCONNECTED"), NOW) == ContactEvent(
        type=EventType.ENDED,
        contact_id=CONTACT,
        event_time_ms=NOW,
        instance_id=INSTANCE,
    )


@pytest.mark.parametrize(
    "event_type",
    ["INITIATED", "CONNECTED_TO_SYSTEM", "QUEUED", "CONNECTED_TO_AGENT", "CONTACT_DATA_UPDATED", "disconnected"],
)
def test_other_contact_events_are_ignored(event_type):
    assert contact_disconnected(eventbridge_event(event_type), NOW) is None


def test_contact_event_without_detail_names_the_field():
    event = eventbridge_event()
    del event["detail"]
    with pytest.raises(RecordError, match="detail") as info:
        contact_disconnected(event, NOW)
    assert info.value.reason == "malformed_connect_event"


def test_disconnected_without_contact_id_names_the_field():
    event = eventbridge_event()
    del event["detail"]["contactId"]
    with pytest.raises(RecordError, match="contactId") as info:
        contact_disconnected(event, NOW)
    assert info.value.reason == "malformed_connect_event"


@pytest.mark.parametrize("value", ["", None, 42])
def test_disconnected_with_an_invalid_contact_id_names_the_field(value):
    # str(None) == "None": an ENDED for a contact called "None" must not be published.
    event = eventbridge_event()
    event["detail"]["contactId"] = value
    with pytest.raises(RecordError, match="contactId") as info:
        contact_disconnected(event, NOW)
    assert info.value.reason == "malformed_connect_event"
