"""KinesisRecordProducer: the exact PutRecords calls against a stubbed client, and per-key
order under random partial failures and throttling against a hand-written fake."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.kinesis.producer import KinesisRecordProducer, ProducerError

STREAM = "audio-frames"
THROTTLED = "ProvisionedThroughputExceededException"


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
            {"ErrorCode": THROTTLED, "ErrorMessage": "slow down"}
            if is_failed
            else {"SequenceNumber": str(i), "ShardId": "shardId-000000000000"}
            for i, is_failed in enumerate(failed)
        ],
    }


def expect(stub: Stubber, response: dict, *sent: tuple[bytes, str]) -> None:
    stub.add_response("put_records", response, {"StreamName": STREAM, "Records": records(*sent)})


def producer_for(client, **kwargs) -> KinesisRecordProducer:
    # A long linger keeps every put of a test waiting until flush() sends it.
    options = {"linger_s": 60.0, "retry_backoff_s": 0.001, **kwargs}
    return KinesisRecordProducer(client, STREAM, **options)


def put_all(producer: KinesisRecordProducer, *sent: tuple[bytes, str]) -> None:
    for data, key in sent:
        producer.put(data, key)


a0, a1, a2 = (b"a0", "contact-a"), (b"a1", "contact-a"), (b"a2", "contact-a")
b0, b1 = (b"b0", "contact-b"), (b"b1", "contact-b")


def test_keys_share_a_call_but_a_keys_next_record_waits_for_the_previous_one(client):
    with Stubber(client) as stub:
        expect(stub, ok(2), a0, b0)
        expect(stub, ok(2), a1, b1)
        expect(stub, ok(1), a2)
        producer = producer_for(client)
        put_all(producer, a0, b0, a1, a2, b1)
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()
    assert (producer.records_sent, producer.calls) == (5, 3)


def test_a_failed_record_goes_again_before_its_keys_next_record(client):
    with Stubber(client) as stub:
        # a0 fails while b0 is written; nothing of contact-a was sent behind a0.
        expect(stub, result(True, False), a0, b0)
        expect(stub, ok(2), a0, b1)
        expect(stub, ok(1), a1)
        producer = producer_for(client)
        put_all(producer, a0, b0, a1, b1)
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()
    assert (producer.records_sent, producer.records_retried) == (4, 1)


def test_a_throttled_call_is_sent_again_whole_before_anything_newer(client):
    with Stubber(client) as stub:
        stub.add_client_error(
            "put_records", THROTTLED, expected_params={"StreamName": STREAM, "Records": records(a0, b0)}
        )
        expect(stub, ok(2), a0, b0)
        expect(stub, ok(1), a1)
        producer = producer_for(client)
        put_all(producer, a0, b0, a1)
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()
    assert (producer.records_sent, producer.records_retried) == (3, 2)


def test_flushing_one_key_waits_for_that_keys_records_only(client):
    with Stubber(client) as stub:
        # a0 fails and waits out a long backoff; contact-b's flush does not wait for it.
        expect(stub, result(True, False), a0, b0)
        expect(stub, ok(1), a0)
        producer = producer_for(client, linger_s=0.2, retry_backoff_s=1.0)
        put_all(producer, a0, b0)
        producer.flush(timeout_s=5, partition_key="contact-b")
        assert producer.buffered == 1
        producer.flush(timeout_s=5, partition_key="contact-a")
        assert producer.buffered == 0
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()


def test_calls_respect_max_batch_records_oldest_keys_first(client):
    sent = [(b"x%d" % i, f"contact-{i}") for i in range(5)]
    with Stubber(client) as stub:
        expect(stub, ok(2), *sent[:2])
        expect(stub, ok(2), *sent[2:4])
        expect(stub, ok(1), sent[4])
        producer = producer_for(client, max_batch_records=2)
        put_all(producer, *sent)
        producer.close(timeout_s=5)
        stub.assert_no_pending_responses()


def test_put_blocks_while_the_buffer_is_full(client):
    with Stubber(client) as stub:
        expect(stub, ok(1), a0)
        expect(stub, ok(1), a1)
        expect(stub, ok(1), a2)
        producer = producer_for(client, max_buffered_records=2)
        put_all(producer, a0, a1)
        third = threading.Thread(target=producer.put, args=a2)
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
        producer.put(*a0)
        with pytest.raises(ProducerError, match="ResourceNotFoundException"):
            producer.flush(timeout_s=5)
        with pytest.raises(ProducerError):
            producer.put(*a1)
        producer.close(timeout_s=5)


def test_oversized_record_is_rejected(client):
    producer = producer_for(client)
    with pytest.raises(ValueError, match="exceeds"):
        producer.put(b"\0" * (1024 * 1024), "contact-a")
    producer.close(timeout_s=5)


# -- a fake PutRecords with injected faults ------------------------------------------------


class FlakyKinesis:
    """PutRecords that throttles whole calls and fails single records at random.

    ``log`` is the stream: every record the fake reported as written, in the order it
    wrote them. Calls may overlap (the producer's senders run in threads); the fake
    also records any call that holds a key which another running call holds too.
    """

    def __init__(self, seed: int, throttle_rate: float, failure_rate: float) -> None:
        self._random = random.Random(seed)
        self.throttle_rate = throttle_rate
        self.failure_rate = failure_rate
        self._lock = threading.Lock()
        self._keys_in_calls: defaultdict[str, int] = defaultdict(int)
        self.log: list[tuple[str, bytes]] = []
        self.overlapping_keys: set[str] = set()

    def put_records(self, *, StreamName: str, Records: list[dict]) -> dict:
        keys = [record["PartitionKey"] for record in Records]
        with self._lock:
            for key in keys:
                self._keys_in_calls[key] += 1
                if self._keys_in_calls[key] > 1:
                    self.overlapping_keys.add(key)
            throttled = self._random.random() < self.throttle_rate
            delay_s = self._random.random() / 1000
        # Let another sender's call run meanwhile.
        time.sleep(delay_s)
        with self._lock:
            for key in keys:
                self._keys_in_calls[key] -= 1
            if throttled:
                raise ClientError({"Error": {"Code": THROTTLED, "Message": "Rate exceeded"}}, "PutRecords")
            results = []
            for record in Records:
                if self._random.random() < self.failure_rate:
                    results.append({"ErrorCode": "InternalFailure", "ErrorMessage": "Internal Service Failure"})
                else:
                    self.log.append((record["PartitionKey"], record["Data"]))
                    results.append({"SequenceNumber": str(len(self.log)), "ShardId": "shardId-000000000000"})
            failed = sum("ErrorCode" in r for r in results)
            return {"Records": results, **({"FailedRecordCount": failed} if failed else {})}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys_of_records=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=80),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    throttle_rate=st.sampled_from([0.0, 0.2, 0.5]),
    failure_rate=st.sampled_from([0.0, 0.1, 0.4, 0.8]),
    max_batch_records=st.integers(min_value=1, max_value=8),
    max_calls_in_flight=st.integers(min_value=1, max_value=4),
    max_buffered_records=st.integers(min_value=1, max_value=20),
)
def test_every_record_lands_once_and_in_order_per_key_whatever_fails(
    keys_of_records: list[int],
    seed: int,
    throttle_rate: float,
    failure_rate: float,
    max_batch_records: int,
    max_calls_in_flight: int,
    max_buffered_records: int,
) -> None:
    kinesis = FlakyKinesis(seed, throttle_rate, failure_rate)
    producer = KinesisRecordProducer(
        kinesis,
        STREAM,
        max_batch_records=max_batch_records,
        linger_s=0.0,
        max_buffered_records=max_buffered_records,
        retry_backoff_s=0.0,
        max_retry_backoff_s=0.0,
        max_calls_in_flight=max_calls_in_flight,
    )
    sent: defaultdict[str, list[bytes]] = defaultdict(list)
    for index, key_number in enumerate(keys_of_records):
        key = f"contact-{key_number}"
        data = b"%d" % index
        producer.put(data, key)
        sent[key].append(data)
    producer.close(timeout_s=30)

    landed: defaultdict[str, list[bytes]] = defaultdict(list)
    for key, data in kinesis.log:
        landed[key].append(data)
    assert landed == sent
    assert not kinesis.overlapping_keys
    assert producer.records_sent == len(keys_of_records)
