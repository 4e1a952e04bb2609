"""KinesisRecordProducer against a stubbed kinesis client: the exact PutRecords calls."""

from __future__ import annotations

import threading

import boto3
import pytest
from botocore.stub import Stubber

from connectors.kinesis.producer import KinesisRecordProducer, ProducerError

STREAM = "audio-frames"


@pytest.fixture
def client():
    return boto3.client(
        "kinesis", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def records(*pairs: tuple[bytes, str]) -> list[dict]:
    return [{"Data": data, "PartitionKey": key} for data, key in pairs]


def ok(count: int) -> dict:
    # The service model gives FailedRecordCount a minimum of 1, so a clean call omits it.
    return {
        "Records": [{"SequenceNumber": str(i), "ShardId": "shardId-000000000000"} for i in range(count)],
    }


def result(*failed: bool) -> dict:
    return {
        "FailedRecordCount": sum(failed),
        "Records": [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"}
            if is_failed
            else {"SequenceNumber": str(i), "ShardId": "shardId-000000000000"}
            for i, is_failed in enumerate(failed)
        ],
    }


def producer_for(client, **kwargs) -> KinesisRecordProducer:
    # A long linger keeps every put of a test in one batch until flush() sends it.
    options = {"linger_s": 60.0, "retry_backoff_s": 0.001, **kwargs}
    return KinesisRecordProducer(client, STREAM, **options)


def test_records_go_out_in_one_put_records_call(client):
    sent = [(b"frame-a0", "contact-a"), (b"frame-b0", "contact-b"), (b"frame-a1", "contact-a")]
    with Stubber(client) as stub:
        stub.add_response("put_records", ok(3), {"StreamName": STREAM, "Records": records(*sent)})
        producer = producer_for(client)
        for data, key in sent:
            producer.put(data, key)
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()
    assert producer.records_sent == 3


def test_partial_failure_resends_the_keys_tail_in_order_before_newer_records(client):
    a0, b0, a1, b1, a2, a3 = (
        (b"a0", "contact-a"), (b"b0", "contact-b"), (b"a1", "contact-a"),
        (b"b1", "contact-b"), (b"a2", "contact-a"), (b"a3", "contact-a"),
    )
    with Stubber(client) as stub:
        # a1 fails; a2 got in anyway, so a1 *and* a2 go again, ahead of the newer a3.
        stub.add_response(
            "put_records",
            result(False, False, True, False, False),
            {"StreamName": STREAM, "Records": records(a0, b0, a1, b1, a2)},
        )
        stub.add_response("put_records", ok(3), {"StreamName": STREAM, "Records": records(a1, a2, a3)})
        producer = producer_for(client, max_batch_records=5)
        for data, key in (a0, b0, a1, b1, a2, a3):
            producer.put(data, key)
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()
    assert producer.records_retried == 2


def test_batches_respect_max_batch_records(client):
    sent = [(b"x%d" % i, "contact-a") for i in range(5)]
    with Stubber(client) as stub:
        stub.add_response("put_records", ok(2), {"StreamName": STREAM, "Records": records(*sent[:2])})
        stub.add_response("put_records", ok(2), {"StreamName": STREAM, "Records": records(*sent[2:4])})
        stub.add_response("put_records", ok(1), {"StreamName": STREAM, "Records": records(*sent[4:])})
        producer = producer_for(client, max_batch_records=2)
        for data, key in sent:
            producer.put(data, key)
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()


def test_throttled_call_is_retried_whole(client):
    sent = [(b"a0", "contact-a")]
    with Stubber(client) as stub:
        stub.add_client_error(
            "put_records",
            "ProvisionedThroughputExceededException",
            expected_params={"StreamName": STREAM, "Records": records(*sent)},
        )
        stub.add_response("put_records", ok(1), {"StreamName": STREAM, "Records": records(*sent)})
        producer = producer_for(client)
        producer.put(*sent[0])
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()


def test_put_blocks_while_the_buffer_is_full(client):
    with Stubber(client) as stub:
        first_two = records((b"1", "k"), (b"2", "k"))
        stub.add_response("put_records", ok(2), {"StreamName": STREAM, "Records": first_two})
        stub.add_response("put_records", ok(1), {"StreamName": STREAM, "Records": records((b"3", "k"))})
        producer = producer_for(client, max_buffered_records=2)
        producer.put(b"1", "k")
        producer.put(b"2", "k")
        third = threading.Thread(target=producer.put, args=(b"3", "k"))
        third.start()
        third.join(0.2)
        assert third.is_alive(), "put must wait for room in the buffer"
        producer.flush(timeout_s=5)
        third.join(5)
        assert not third.is_alive()
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()


def test_a_missing_stream_fails_the_producer(client):
    with Stubber(client) as stub:
        stub.add_client_error("put_records", "ResourceNotFoundException", http_status_code=400)
        producer = producer_for(client)
        producer.put(b"a0", "contact-a")
        with pytest.raises(ProducerError, match="ResourceNotFoundException"):
            producer.flush(timeout_s=5)
        with pytest.raises(ProducerError):
            producer.put(b"a1", "contact-a")
        producer.close(timeout_s=5)


def test_oversized_record_is_rejected(client):
    producer = producer_for(client)
    with pytest.raises(ValueError, match="exceeds"):
        producer.put(b"\0" * (1024 * 1024), "contact-a")
    producer.close(timeout_s=5)
