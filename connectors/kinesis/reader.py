"""Reading a whole Kinesis stream back, for the demo's report, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def read_all_records(kinesis_client: Any, stream_name: str) -> Iterator[dict[str, Any]]:
    """Every record on the stream now, shard by shard, oldest first."""
    for shard in kinesis_client.list_shards(StreamName=stream_name)["Shards"]:
        iterator = kinesis_client.get_shard_iterator(
            StreamName=stream_name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = kinesis_client.get_records(ShardIterator=iterator, Limit=10_000)
            yield from response["Records"]
            if not response["Records"] or not response.get("MillisBehindLatest"):
                break
            iterator = response.get("NextShardIterator")
