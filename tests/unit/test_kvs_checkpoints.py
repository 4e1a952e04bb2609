"""DynamoDbCheckpointStore against a stubbed boto3 client: the exact DynamoDB requests.

The expected items and conditions are written out here attribute by attribute, so a
change to the table layout or to the ordering rule shows up as a failing request.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from connectors.kvs.checkpoints import (
    CheckpointError,
    ContactCheckpoint,
    DynamoDbCheckpointStore,
    StaleCheckpointError,
    create_table,
)
from pipeline.records import Track

TABLE = "connector-checkpoints-test"
CONTACT = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
FRAGMENT = "91343852333181432392682062622220590765191907586"
TOKEN = "91343852333181432392682062622220590765191907586"
UPDATED_AT_MS = 1_726_677_690_500
TTL_S = 3600
PADDED_FRAGMENT = "0" * (128 - len(FRAGMENT)) + FRAGMENT

PROGRESS_CONDITION = (
    "attribute_not_exists(#position) OR (#completed = :false AND "
    "(#position < :position OR (#position = :position AND #reader_id = :reader_id)))"
)
AT_OR_AFTER_CONDITION = "attribute_not_exists(#position) OR (#completed = :false AND #position <= :position)"


@pytest.fixture
def client():
    return boto3.client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def checkpoint(**changes) -> ContactCheckpoint:
    fields = dict(
        contact_id=CONTACT,
        last_fragment_number=FRAGMENT,
        continuation_token=TOKEN,
        frames={Track.CUSTOMER: 34, Track.AGENT: 33},
        samples={Track.CUSTOMER: 17408, Track.AGENT: 16896},
        last_audio_end_ms=1_726_677_689_724,
        updated_at_ms=UPDATED_AT_MS,
        reader_id="reader-1",
    )
    fields.update(changes)
    return ContactCheckpoint(**fields)


def item(completed: bool = False, end_reason: str = "") -> dict:
    return {
        "contact_id": {"S": CONTACT},
        "position": {"S": PADDED_FRAGMENT},
        "last_fragment_number": {"S": FRAGMENT},
        "continuation_token": {"S": TOKEN},
        "frames": {"M": {"customer": {"N": "34"}, "agent": {"N": "33"}}},
        "samples": {"M": {"customer": {"N": "17408"}, "agent": {"N": "16896"}}},
        "last_audio_end_ms": {"N": "1726677689724"},
        "reader_id": {"S": "reader-1"},
        "completed": {"BOOL": completed},
        "end_reason": {"S": end_reason},
        "updated_at_ms": {"N": "1726677690500"},
        "expires_at": {"N": str(1_726_677_690 + TTL_S)},
    }


#: Every attribute of a checkpoint but the key, in the order the store writes them.
CHECKPOINT_ATTRIBUTES = [
    "position", "last_fragment_number", "continuation_token", "frames", "samples", "last_audio_end_ms",
    "reader_id", "completed", "end_reason", "updated_at_ms", "expires_at",
]


def expected_update(condition: str, **item_changes) -> dict:
    """The UpdateItem of a checkpoint: SET of its own attributes only, under ``condition``."""
    values = {f":{name}": value for name, value in item(**item_changes).items() if name != "contact_id"}
    return {
        "TableName": TABLE,
        "Key": {"contact_id": {"S": CONTACT}},
        "UpdateExpression": "SET " + ", ".join(f"#{name} = :{name}" for name in CHECKPOINT_ATTRIBUTES),
        "ConditionExpression": condition,
        "ExpressionAttributeNames": {f"#{name}": name for name in CHECKPOINT_ATTRIBUTES},
        "ExpressionAttributeValues": {**values, ":false": {"BOOL": False}},
    }


def test_get_reads_consistently_and_decodes_every_field(client):
    with Stubber(client) as stub:
        stub.add_response(
            "get_item",
            {"Item": item()},
            {"TableName": TABLE, "Key": {"contact_id": {"S": CONTACT}}, "ConsistentRead": True},
        )
        assert DynamoDbCheckpointStore(client, TABLE, ttl_s=TTL_S).get(CONTACT) == checkpoint()
        stub.assert_no_pending_responses()


def test_get_of_an_unknown_contact_is_none(client):
    with Stubber(client) as stub:
        stub.add_response(
            "get_item", {}, {"TableName": TABLE, "Key": {"contact_id": {"S": CONTACT}}, "ConsistentRead": True}
        )
        assert DynamoDbCheckpointStore(client, TABLE).get(CONTACT) is None


def test_get_of_a_malformed_item_raises_a_checkpoint_error(client):
    broken = item()
    del broken["frames"]
    with Stubber(client) as stub:
        stub.add_response("get_item", {"Item": broken})
        with pytest.raises(CheckpointError, match="malformed"):
            DynamoDbCheckpointStore(client, TABLE).get(CONTACT)


def test_put_of_progress_may_only_move_forward_or_repeat_for_the_same_reader(client):
    with Stubber(client) as stub:
        stub.add_response("update_item", {}, expected_update(PROGRESS_CONDITION))
        DynamoDbCheckpointStore(client, TABLE, ttl_s=TTL_S).put(checkpoint())
        stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("changes", "take_over"),
    [({"completed": True, "end_reason": "contact_changed"}, False), ({}, True)],
    ids=["completion", "take-over"],
)
def test_completion_and_take_over_are_allowed_to_any_reader_at_or_after_the_position(client, changes, take_over):
    with Stubber(client) as stub:
        stub.add_response("update_item", {}, expected_update(AT_OR_AFTER_CONDITION, **changes))
        DynamoDbCheckpointStore(client, TABLE, ttl_s=TTL_S).put(checkpoint(**changes), take_over=take_over)
        stub.assert_no_pending_responses()


def test_get_of_an_item_with_only_the_ended_mark_is_no_checkpoint(client):
    with Stubber(client) as stub:
        stub.add_response(
            "get_item", {"Item": {"contact_id": {"S": CONTACT}, "contact_ended_at_ms": {"N": "1726677699000"}}}
        )
        assert DynamoDbCheckpointStore(client, TABLE).get(CONTACT) is None


def test_mark_contact_ended_keeps_the_first_mark_and_any_longer_ttl(client):
    with Stubber(client) as stub:
        stub.add_response(
            "update_item",
            {},
            {
                "TableName": TABLE,
                "Key": {"contact_id": {"S": CONTACT}},
                "UpdateExpression": (
                    "SET #ended = if_not_exists(#ended, :ended), #expires = if_not_exists(#expires, :expires)"
                ),
                "ExpressionAttributeNames": {"#ended": "contact_ended_at_ms", "#expires": "expires_at"},
                "ExpressionAttributeValues": {
                    ":ended": {"N": "1726677699000"},
                    ":expires": {"N": str(1_726_677_699 + TTL_S)},
                },
            },
        )
        DynamoDbCheckpointStore(client, TABLE, ttl_s=TTL_S).mark_contact_ended(CONTACT, 1_726_677_699_000)
        stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("item_found", "ended_at_ms"),
    [({}, 0), ({"Item": {}}, 0), ({"Item": {"contact_ended_at_ms": {"N": "1726677699000"}}}, 1_726_677_699_000)],
    ids=["no-item", "not-ended", "ended"],
)
def test_contact_ended_at_ms_reads_only_the_mark_consistently(client, item_found, ended_at_ms):
    with Stubber(client) as stub:
        stub.add_response(
            "get_item",
            item_found,
            {
                "TableName": TABLE,
                "Key": {"contact_id": {"S": CONTACT}},
                "ConsistentRead": True,
                "ProjectionExpression": "#ended",
                "ExpressionAttributeNames": {"#ended": "contact_ended_at_ms"},
            },
        )
        assert DynamoDbCheckpointStore(client, TABLE).contact_ended_at_ms(CONTACT) == ended_at_ms


def test_ended_mark_errors_are_checkpoint_errors(client):
    with Stubber(client) as stub:
        stub.add_client_error("get_item", service_error_code="InternalServerError", http_status_code=500)
        stub.add_client_error("update_item", service_error_code="InternalServerError", http_status_code=500)
        store = DynamoDbCheckpointStore(client, TABLE)
        with pytest.raises(CheckpointError):
            store.contact_ended_at_ms(CONTACT)
        with pytest.raises(CheckpointError):
            store.mark_contact_ended(CONTACT, 1)


def test_a_refused_condition_means_the_checkpoint_is_stale(client):
    with Stubber(client) as stub:
        stub.add_client_error("update_item", service_error_code="ConditionalCheckFailedException", http_status_code=400)
        with pytest.raises(StaleCheckpointError):
            DynamoDbCheckpointStore(client, TABLE).put(checkpoint())


def test_other_write_errors_are_checkpoint_errors_but_not_stale(client):
    with Stubber(client) as stub:
        stub.add_client_error(
            "update_item", service_error_code="ProvisionedThroughputExceededException", http_status_code=400
        )
        with pytest.raises(CheckpointError) as raised:
            DynamoDbCheckpointStore(client, TABLE).put(checkpoint())
        assert not isinstance(raised.value, StaleCheckpointError)


def test_position_sorts_fragment_numbers_of_different_lengths_in_numeric_order():
    numbers = ["9", "10", "917", FRAGMENT, "1" + FRAGMENT]
    positions = [checkpoint(last_fragment_number=n).position for n in numbers]
    assert positions == sorted(positions)
    assert {len(p) for p in positions} == {128}
    assert checkpoint(last_fragment_number="").position == "0" * 128


def test_a_fragment_number_that_is_not_decimal_is_refused():
    with pytest.raises(ValueError):
        checkpoint(last_fragment_number="12a")


def test_create_table_is_on_demand_keyed_by_contact_with_ttl(client):
    with Stubber(client) as stub:
        stub.add_response(
            "create_table",
            {},
            {
                "TableName": TABLE,
                "AttributeDefinitions": [{"AttributeName": "contact_id", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "contact_id", "KeyType": "HASH"}],
                "BillingMode": "PAY_PER_REQUEST",
            },
        )
        stub.add_response("describe_table", {"Table": {"TableStatus": "ACTIVE"}}, {"TableName": TABLE})
        stub.add_response(
            "update_time_to_live",
            {},
            {
                "TableName": TABLE,
                "TimeToLiveSpecification": {"Enabled": True, "AttributeName": "expires_at"},
            },
        )
        create_table(client, TABLE)
        stub.assert_no_pending_responses()
