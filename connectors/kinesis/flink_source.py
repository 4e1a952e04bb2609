"""Kinesis Data Streams sources for the PyFlink job.

Flink 1.20's Kinesis connector (4.x) offers the polling ``FlinkKinesisConsumer``; the
Python wrapper ships with the apache-flink wheel. Records are handed over as raw bytes
through ``RawBytesDeserializationSchema`` (in the project's shaded jar) because the
audio-frames stream is binary.
"""

from __future__ import annotations

import os

from pyflink.common.serialization import DeserializationSchema
from pyflink.datastream.connectors.kinesis import FlinkKinesisConsumer
from pyflink.java_gateway import get_gateway

from pipeline.config import PipelineConfig

RAW_BYTES_SCHEMA_CLASS = "ai.cresta.connect.flink.RawBytesDeserializationSchema"


def consumer_properties(config: PipelineConfig) -> dict[str, str]:
    """Connector properties; a local endpoint switches to static test credentials."""
    props = {
        "aws.region": config["aws.region"],
        "flink.stream.initpos": config["kinesis.initial_position"],
        "flink.shard.getrecords.intervalmillis": str(config["kinesis.poll_interval_ms"]),
    }
    if config["aws.endpoint_url"]:
        props.update(
            {
                "aws.endpoint": config["aws.endpoint_url"],
                "aws.credentials.provider": "BASIC",
                "aws.credentials.provider.basic.accesskeyid": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
                "aws.credentials.provider.basic.secretkey": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
            }
        )
    else:
        props["aws.credentials.provider"] = "AUTO"
    return props


def raw_bytes_consumer(stream_name: str, config: PipelineConfig) -> FlinkKinesisConsumer:
    schema = DeserializationSchema(get_gateway().jvm.ai.cresta.connect.flink.RawBytesDeserializationSchema())
    return FlinkKinesisConsumer(stream_name, schema, consumer_properties(config))
