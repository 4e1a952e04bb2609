"""Connect-side Lambda handlers against stubbed boto3 clients: the exact AWS requests.

Contact events are built as the Connect admin guide's contact events data model shows
them (*contact-events*: ``detail.eventType``, ``contactId``, ``agentInfo.agentArn``, …).

The expected records are written out field by field from the Connect event (not produced
by the code under test) and serialised the way DESIGN §4's JSON records are on the wire:
compact separators, sorted keys.
"""

from __future__ import annotations

import json
import types

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from connectors.connect import handler as handler_module
from connectors.connect.handler import contact_event_handler, contact_flow_handler
from connectors.kvs.checkpoints import CheckpointError, DynamoDbCheckpointStore
from pipeline.records import ContactEvent, ContactWork

STREAM = "contact-events-test"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/connector-work-test"
FIFO_QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/connector-work-test.fifo"
NOW_S = 1726677690.5  # exactly representable: now_ms is 1726677690500
NOW_MS = 1726677690500

CONTACT = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
INSTANCE = "d5b716a2-2f4b-4c3e-9a0f-1b2c3d4e5f60"
INSTANCE_ARN = f"arn:aws:connect:us-east-1:123456789012:instance/{INSTANCE}"
AGENT = "7c1e5b2a-0000-4000-8000-00000000a9e7"
AGENT_ARN = f"{INSTANCE_ARN}/agent/{AGENT}"
STREAM_ARN = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-live-contact-pool-3/1726600000000"
FRAGMENT = "91343852333181432392682062622220590765191907586"


def wire(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def flow_event() -> dict:
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "Attributes": {"CustomerTier": "gold"},
                "Channel": "VOICE",
                "ContactId": CONTACT,
                "InitialContactId": CONTACT,
                "InitiationMethod": "INBOUND",
                "InstanceARN": INSTANCE_ARN,
                "MediaStreams": {
                    "Customer": {
                        "Audio": {
                            "StartFragmentNumber": FRAGMENT,
                            "StartTimestamp": "1726677688724",
                            "StopTimestamp": None,
                            "StreamARN": STREAM_ARN,
                        }
                    }
                },
                "PreviousContactId": "",
                "Queue": {"ARN": f"{INSTANCE_ARN}/queue/q-1", "Name": "BasicQueue"},
            },
            "Parameters": {},
        },
    }


EXPECTED_STARTED = {
    "schema": "contact-event/1",
    "type": "STARTED",
    "contact_id": CONTACT,
    "instance_id": INSTANCE,
    "event_time_ms": NOW_MS,
    "stream_arn": STREAM_ARN,
    "start_fragment_number": FRAGMENT,
    "start_timestamp_ms": 1726677688724,
    "attributes": {"CustomerTier": "gold"},
    "agent_id": "",
    "queue_name": "BasicQueue",
    "initiation_method": "INBOUND",
    "previous_contact_id": "",
}

EXPECTED_WORK = {
    "schema": "contact-work/1",
    "contact_id": CONTACT,
    "stream_arn": STREAM_ARN,
    "start_fragment_number": FRAGMENT,
    "instance_id": INSTANCE,
    "start_timestamp_ms": 1726677688724,
}


def contact_event(event_type: str, **detail) -> dict:
    return {
        "version": "0",
        "id": "5e9b8c4a-0000-4000-8000-0000000000ee",
        "detail-type": "Amazon Connect Contact Event",
        "source": "aws.connect",
        "account": "123456789012",
        "time": "2024-09-18T16:45:00Z",
        "region": "us-east-1",
        "resources": [INSTANCE_ARN],
        "detail": {
            "eventType": event_type,
            "contactId": CONTACT,
            "channel": "VOICE",
            "instanceArn": INSTANCE_ARN,
            "initiationMethod": "INBOUND",
            **detail,
        },
    }


def make_client(name: str):
    return boto3.client(
        name, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    monkeypatch.setenv("CONTACT_EVENTS_STREAM", STREAM)
    # Handlers given no checkpoint store mark nothing ended.
    monkeypatch.delenv("CHECKPOINT_TABLE", raising=False)
    monkeypatch.setenv("CONNECTOR_QUEUE_URL", QUEUE_URL)
    monkeypatch.setattr(handler_module, "time", types.SimpleNamespace(time=lambda: NOW_S))
    # Never fall back to module-level clients built from the machine's configuration.
    monkeypatch.setattr(handler_module, "_clients", {"kinesis": object(), "sqs": object()})


@pytest.fixture
def kinesis():
    client = make_client("kinesis")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


@pytest.fixture
def sqs():
    client = make_client("sqs")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


PUT_RECORD_OK = {"ShardId": "shardId-000000000000", "SequenceNumber": "49590338271490256608559692538361571095921575989136588898"}
SEND_MESSAGE_OK = {"MessageId": "3f1c2b9e-0000-4000-8000-000000000001", "MD5OfMessageBody": "0" * 32}


def test_expected_records_are_what_the_codecs_read():
    # Guards the hand-written expectations above against drifting from the contract.
    started = ContactEvent.decode(wire(EXPECTED_STARTED))
    assert (started.contact_id, started.stream_arn, started.event_time_ms) == (CONTACT, STREAM_ARN, NOW_MS)
    assert ContactWork.decode(wire(EXPECTED_WORK)).start_fragment_number == FRAGMENT


def test_flow_handler_puts_started_and_sends_the_work_item(kinesis, sqs):
    kinesis_client, kinesis_stub = kinesis
    sqs_client, sqs_stub = sqs
    kinesis_stub.add_response(
        "put_record",
        PUT_RECORD_OK,
        {"StreamName": STREAM, "Data": wire(EXPECTED_STARTED).encode(), "PartitionKey": CONTACT},
    )
    sqs_stub.add_response(
        "send_message",
        SEND_MESSAGE_OK,
        {"QueueUrl": QUEUE_URL, "MessageBody": wire(EXPECTED_WORK)},
    )
    result = contact_flow_handler(flow_event(), None, kinesis=kinesis_client, sqs=sqs_client)
    assert result == {"status": "OK", "contactId": CONTACT}
    # Connect's Invoke Lambda block needs a flat map of strings.
    assert all(isinstance(v, str) for v in result.values())


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"Details": {}},
        {"Details": {"ContactData": {"ContactId": CONTACT, "MediaStreams": {"Customer": {"Audio": None}}}}},
    ],
    ids=["empty", "no-contact-data", "media-streaming-not-started"],
)
def test_flow_handler_rejects_a_bad_event_without_any_aws_call(kinesis, sqs, event):
    kinesis_client, _ = kinesis
    sqs_client, _ = sqs
    # No responses queued: any AWS call would raise from the stubber.
    result = contact_flow_handler(event, None, kinesis=kinesis_client, sqs=sqs_client)
    assert result["status"] == "ERROR"
    assert result["reason"] == "malformed_connect_event"
    assert all(isinstance(v, str) for v in result.values())


def test_flow_handler_rejects_an_invalid_fragment_number_without_any_aws_call(kinesis, sqs):
    event = flow_event()
    event["Details"]["ContactData"]["MediaStreams"]["Customer"]["Audio"]["StartFragmentNumber"] = "latest"
    result = contact_flow_handler(event, None, kinesis=kinesis[0], sqs=sqs[0])
    assert result["status"] == "ERROR"
    assert "StartFragmentNumber" in result["message"]


def test_flow_handler_publishes_nothing_when_the_work_item_cannot_be_queued(kinesis, sqs):
    sqs_client, sqs_stub = sqs
    sqs_stub.add_client_error(
        "send_message",
        service_error_code="AWS.SimpleQueueService.NonExistentQueue",
        expected_params={"QueueUrl": QUEUE_URL, "MessageBody": wire(EXPECTED_WORK)},
    )
    # The Kinesis stub has nothing queued: a put_record here would fail the test.
    result = contact_flow_handler(flow_event(), None, kinesis=kinesis[0], sqs=sqs_client)
    assert result == {
        "status": "ERROR", "reason": "handoff_failed", "message": "AWS.SimpleQueueService.NonExistentQueue",
    }


def test_flow_handler_reports_a_failed_started_publish_to_the_flow(kinesis, sqs):
    kinesis_client, kinesis_stub = kinesis
    sqs_client, sqs_stub = sqs
    sqs_stub.add_response(
        "send_message",
        SEND_MESSAGE_OK,
        expected_params={"QueueUrl": QUEUE_URL, "MessageBody": wire(EXPECTED_WORK)},
    )
    kinesis_stub.add_client_error(
        "put_record",
        service_error_code="ProvisionedThroughputExceededException",
        expected_params={"StreamName": STREAM, "Data": wire(EXPECTED_STARTED).encode(), "PartitionKey": CONTACT},
    )
    result = contact_flow_handler(flow_event(), None, kinesis=kinesis_client, sqs=sqs_client)
    assert result == {
        "status": "ERROR", "reason": "handoff_failed", "message": "ProvisionedThroughputExceededException",
    }


def test_event_handler_puts_ended_for_disconnected(kinesis):
    kinesis_client, kinesis_stub = kinesis
    expected_ended = {
        "schema": "contact-event/1",
        "type": "ENDED",
        "contact_id": CONTACT,
        "instance_id": INSTANCE,
        "event_time_ms": NOW_MS,
        "stream_arn": "",
        "start_fragment_number": "",
        "start_timestamp_ms": 0,
        "attributes": {},
        "agent_id": "",
        "queue_name": "",
        "initiation_method": "",
        "previous_contact_id": "",
    }
    kinesis_stub.add_response(
        "put_record",
        PUT_RECORD_OK,
        {"StreamName": STREAM, "Data": wire(expected_ended).encode(), "PartitionKey": CONTACT},
    )
    assert contact_event_handler(contact_event("DISCONNECTED"), None, kinesis=kinesis_client) == {
        "status": "OK",
        "contactId": CONTACT,
    }


@pytest.mark.parametrize("event_type", ["INITIATED", "QUEUED", "CONTACT_DATA_UPDATED", "COMPLETED", "A_NEW_TYPE"])
def test_event_handler_ignores_other_event_types_without_any_aws_call(kinesis, event_type):
    assert contact_event_handler(contact_event(event_type), None, kinesis=kinesis[0]) == {"status": "IGNORED"}


def test_event_handler_rejects_an_event_without_detail(kinesis):
    event = contact_event("DISCONNECTED")
    del event["detail"]
    result = contact_event_handler(event, None, kinesis=kinesis[0])
    assert result["status"] == "ERROR" and result["reason"] == "malformed_connect_event"
    assert "detail" in result["message"]


def test_event_handler_marks_a_disconnected_contact_ended_for_the_connector_first(kinesis):
    kinesis_client, kinesis_stub = kinesis
    dynamodb = make_client("dynamodb")
    kinesis_stub.add_response("put_record", PUT_RECORD_OK)
    with Stubber(dynamodb) as dynamodb_stub:
        dynamodb_stub.add_response(
            "update_item",
            {},
            {
                "TableName": "checkpoints-test",
                "Key": {"contact_id": {"S": CONTACT}},
                "UpdateExpression": (
                    "SET #ended = if_not_exists(#ended, :ended), #expires = if_not_exists(#expires, :expires)"
                ),
                "ExpressionAttributeNames": {"#ended": "contact_ended_at_ms", "#expires": "expires_at"},
                "ExpressionAttributeValues": {
                    ":ended": {"N": str(NOW_MS)},
                    ":expires": {"N": str(NOW_MS // 1000 + 3600)},
                },
            },
        )
        store = DynamoDbCheckpointStore(dynamodb, "checkpoints-test", ttl_s=3600)
        result = contact_event_handler(contact_event("DISCONNECTED"), None, kinesis=kinesis_client, checkpoints=store)
        dynamodb_stub.assert_no_pending_responses()
    assert result == {"status": "OK", "contactId": CONTACT}
    kinesis_stub.assert_no_pending_responses()


def test_event_handler_raises_for_a_retry_when_the_mark_fails_and_sends_no_ended(kinesis):
    kinesis_client, _ = kinesis
    dynamodb = make_client("dynamodb")
    with Stubber(dynamodb) as dynamodb_stub:
        dynamodb_stub.add_client_error("update_item", service_error_code="InternalServerError", http_status_code=500)
        with pytest.raises(CheckpointError):
            contact_event_handler(
                contact_event("DISCONNECTED"), None, kinesis=kinesis_client,
                checkpoints=DynamoDbCheckpointStore(dynamodb, "checkpoints-test"),
            )


# --- repeated invocations and the FIFO work queue ---------------------------------------


def test_flow_handler_gives_a_fifo_work_item_the_contact_as_group_and_deduplication_id(kinesis, sqs, monkeypatch):
    monkeypatch.setenv("CONNECTOR_QUEUE_URL", FIFO_QUEUE_URL)
    kinesis_client, kinesis_stub = kinesis
    sqs_client, sqs_stub = sqs
    expected_send = {
        "QueueUrl": FIFO_QUEUE_URL,
        "MessageBody": wire(EXPECTED_WORK),
        "MessageGroupId": CONTACT,
        "MessageDeduplicationId": CONTACT,
    }
    # Connect invokes twice (a retry): both requests are identical, so SQS's deduplication
    # keeps one message, and the group keeps any later repeat behind the first reader.
    for _ in range(2):
        sqs_stub.add_response("send_message", SEND_MESSAGE_OK, expected_send)
        kinesis_stub.add_response(
            "put_record",
            PUT_RECORD_OK,
            {"StreamName": STREAM, "Data": wire(EXPECTED_STARTED).encode(), "PartitionKey": CONTACT},
        )
    results = [contact_flow_handler(flow_event(), None, kinesis=kinesis_client, sqs=sqs_client) for _ in range(2)]
    assert results == [{"status": "OK", "contactId": CONTACT}] * 2


@pytest.mark.parametrize("channel", ["CHAT", "TASK"])
def test_flow_handler_rejects_a_contact_that_is_not_a_voice_call(kinesis, sqs, channel):
    event = flow_event()
    event["Details"]["ContactData"]["Channel"] = channel
    result = contact_flow_handler(event, None, kinesis=kinesis[0], sqs=sqs[0])
    assert result["status"] == "ERROR" and result["reason"] == "malformed_connect_event"
    assert "voice only" in result["message"]


def test_flow_handler_rejects_a_contact_id_too_long_for_a_work_item(kinesis, sqs):
    event = flow_event()
    event["Details"]["ContactData"]["ContactId"] = "c" * 129
    result = contact_flow_handler(event, None, kinesis=kinesis[0], sqs=sqs[0])
    assert result["status"] == "ERROR" and "ContactId" in result["message"]


def test_flow_handler_answers_a_non_object_event_with_an_error(kinesis, sqs):
    result = contact_flow_handler(["not", "an", "event"], None, kinesis=kinesis[0], sqs=sqs[0])
    assert result["status"] == "ERROR" and result["reason"] == "malformed_connect_event"


# --- contact events other than DISCONNECTED -------------------------------------------


def expected_attributes_updated(**fields) -> dict:
    return {
        "schema": "contact-event/1",
        "type": "ATTRIBUTES_UPDATED",
        "contact_id": CONTACT,
        "instance_id": INSTANCE,
        "event_time_ms": NOW_MS,
        "stream_arn": "",
        "start_fragment_number": "",
        "start_timestamp_ms": 0,
        "attributes": {},
        "agent_id": AGENT,
        "queue_name": "",
        "initiation_method": "INBOUND",
        "previous_contact_id": "",
        **fields,
    }


def test_event_handler_puts_the_agent_of_a_contact_connected_to_an_agent(kinesis):
    kinesis_client, kinesis_stub = kinesis
    kinesis_stub.add_response(
        "put_record",
        PUT_RECORD_OK,
        {"StreamName": STREAM, "Data": wire(expected_attributes_updated()).encode(), "PartitionKey": CONTACT},
    )
    event = contact_event(
        "CONNECTED_TO_AGENT",
        agentInfo={"agentArn": AGENT_ARN, "connectedToAgentTimestamp": "2024-09-18T16:44:10.000Z"},
        queueInfo={"queueArn": f"{INSTANCE_ARN}/queue/q-1", "queueType": "STANDARD"},
    )
    # No checkpoint store call either: only DISCONNECTED marks a contact ended.
    dynamodb = make_client("dynamodb")
    with Stubber(dynamodb):
        result = contact_event_handler(
            event, None, kinesis=kinesis_client, checkpoints=DynamoDbCheckpointStore(dynamodb, "checkpoints-test")
        )
    assert result == {"status": "OK", "contactId": CONTACT}


def test_event_handler_links_a_transferred_contact_to_its_previous_contact(kinesis):
    kinesis_client, kinesis_stub = kinesis
    previous = "0a1b2c3d-0000-4000-8000-00000000000a"
    expected = expected_attributes_updated(initiation_method="TRANSFER", previous_contact_id=previous)
    kinesis_stub.add_response(
        "put_record",
        PUT_RECORD_OK,
        {"StreamName": STREAM, "Data": wire(expected).encode(), "PartitionKey": CONTACT},
    )
    event = contact_event(
        "CONNECTED_TO_AGENT",
        initiationMethod="TRANSFER",
        initialContactId=previous,
        previousContactId=previous,
        agentInfo={"agentArn": AGENT_ARN},
    )
    assert contact_event_handler(event, None, kinesis=kinesis_client) == {"status": "OK", "contactId": CONTACT}


@pytest.mark.parametrize(
    "agent_info",
    [None, {}, {"agentArn": ""}, {"agentArn": INSTANCE_ARN}, "not-an-object"],
    ids=["missing", "empty", "empty-arn", "not-an-agent-arn", "not-an-object"],
)
def test_event_handler_rejects_an_agent_event_without_an_agent_and_sends_nothing(kinesis, agent_info):
    event = contact_event("CONNECTED_TO_AGENT")
    if agent_info is not None:
        event["detail"]["agentInfo"] = agent_info
    result = contact_event_handler(event, None, kinesis=kinesis[0])
    assert result["status"] == "ERROR" and "agentInfo.agentArn" in result["message"]


def test_event_handler_raises_for_a_retry_when_the_put_fails(kinesis):
    kinesis_client, kinesis_stub = kinesis
    kinesis_stub.add_client_error("put_record", service_error_code="InternalFailure", http_status_code=500)
    with pytest.raises(ClientError):
        contact_event_handler(
            contact_event("CONNECTED_TO_AGENT", agentInfo={"agentArn": AGENT_ARN}), None, kinesis=kinesis_client
        )
