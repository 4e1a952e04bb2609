"""Kinesis Data Streams at the edges: the connector's producer (``producer``) and the
Flink source/sink builders. Nothing is re-exported here so that importing the Flink
builders does not pull in boto3."""
