"""The local AWS + partner stack: moto's server, the KVS media emulator, the Cresta emulator.

moto runs in a process of its own (``emulators.moto_server``); the emulators run in
this one.

Everything listens on loopback only. The same resource names are used as in production
(DESIGN §2), so code under test cannot tell the stack from AWS except by endpoint. The
connector's work queue has a dead-letter queue (RedrivePolicy), the connector's
checkpoint table and the audit bucket exist, as the deployment has them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
import pyarrow.fs as pafs

from connectors.kvs.checkpoints import create_table as create_checkpoint_table
from emulators.cresta.server import CrestaEmulator
from emulators.kvs.server import KvsMediaEmulator
from emulators.moto_server import MotoServerProcess

log = logging.getLogger(__name__)

REGION = "us-east-1"
#: moto accepts any credentials; these make boto3 sign requests as it would against AWS.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"


@dataclass
class StackSettings:
    audio_frames_stream: str = "audio-frames"
    audio_frames_shards: int = 2
    contact_events_stream: str = "contact-events"
    connector_queue: str = "connector-contacts"
    kvs_stream_prefix: str = "connect-live-media"
    kvs_pool_size: int = 4
    kvs_idle_timeout_s: float = 3.0
    kvs_session_limit_s: float = 2700.0
    kvs_max_connections_per_stream: int = 3
    #: Work items that failed this many deliveries move to ``dead_letter_queue``
    #: (SQS RedrivePolicy); an empty name means no dead-letter queue.
    dead_letter_queue: str = "connector-contacts-dlq"
    max_receive_count: int = 3
    #: DynamoDB table of the connector's contact checkpoints; empty: none.
    checkpoint_table: str = "connector-checkpoints"
    #: S3 bucket for an audit trail on s3:// (moto's S3, path-style); empty: none.
    audit_bucket: str = "audit-trail"
    cresta_client_id: str = "demo-client"
    cresta_client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    cresta_media_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))


class LocalStack:
    """Starts and stops the local stack; ``with LocalStack() as stack: …``."""

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        self.moto: MotoServerProcess | None = None
        self.kvs: KvsMediaEmulator | None = None
        self.cresta: CrestaEmulator | None = None
        self.endpoint_url = ""
        self.queue_url = ""
        self.dead_letter_queue_url = ""
        self.kvs_stream_arns: list[str] = []

    def __enter__(self) -> "LocalStack":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            # A half-started stack would leave its servers running.
            self.stop()
            raise

    def _start(self) -> None:
        s = self.settings
        self.moto = MotoServerProcess().start()
        self.endpoint_url = self.moto.endpoint_url
        kinesis = self.client("kinesis")
        kinesis.create_stream(StreamName=s.audio_frames_stream, ShardCount=s.audio_frames_shards)
        kinesis.create_stream(StreamName=s.contact_events_stream, ShardCount=1)
        self.queue_url = self._create_work_queue()
        if s.checkpoint_table:
            create_checkpoint_table(self.client("dynamodb"), s.checkpoint_table)
        if s.audit_bucket:
            self.client("s3").create_bucket(Bucket=s.audit_bucket)
        kvs = self.client("kinesisvideo")
        self.kvs_stream_arns = [
            kvs.create_stream(StreamName=f"{s.kvs_stream_prefix}-{i}", MediaType="audio/L16")["StreamARN"]
            for i in range(s.kvs_pool_size)
        ]
        self.kvs = KvsMediaEmulator(
            idle_timeout_s=s.kvs_idle_timeout_s,
            session_limit_s=s.kvs_session_limit_s,
            max_connections_per_stream=s.kvs_max_connections_per_stream,
        )
        self.kvs.start()
        self.cresta = CrestaEmulator(
            client_id=s.cresta_client_id,
            client_secret=s.cresta_client_secret,
            media_token=s.cresta_media_token,
        )
        self.cresta.start()
        log.info("local stack up: aws %s, kvs media %s", self.endpoint_url, self.kvs.endpoint_url)

    def _create_work_queue(self) -> str:
        s = self.settings
        sqs = self.client("sqs")
        attributes: dict[str, str] = {}
        if s.dead_letter_queue:
            self.dead_letter_queue_url = sqs.create_queue(QueueName=s.dead_letter_queue)["QueueUrl"]
            dead_letter_arn = sqs.get_queue_attributes(
                QueueUrl=self.dead_letter_queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": str(s.max_receive_count)}
            )
        return sqs.create_queue(QueueName=s.connector_queue, Attributes=attributes)["QueueUrl"]

    def stop(self) -> None:
        for part in (self.cresta, self.kvs, self.moto):
            if part is not None:
                part.stop()
        self.cresta = self.kvs = self.moto = None

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def s3_filesystem(self) -> pafs.S3FileSystem:
        """moto's S3 for pyarrow: paths are ``bucket/key``."""
        endpoint = urlsplit(self.endpoint_url)
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY_ID,
            secret_key=SECRET_ACCESS_KEY,
            region=REGION,
            endpoint_override=endpoint.netloc,
            scheme=endpoint.scheme,
        )

    def aws_environment(self) -> dict[str, str]:
        """Environment for processes (and Lambda handlers) that talk to this stack."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "CONTACT_EVENTS_STREAM": self.settings.contact_events_stream,
            "CONNECTOR_QUEUE_URL": self.queue_url,
            **({"CHECKPOINT_TABLE": self.settings.checkpoint_table} if self.settings.checkpoint_table else {}),
        }

    def cresta_environment(self) -> dict[str, str]:
        """Cresta credentials as the job reads them from the environment in local runs."""
        assert self.cresta is not None
        return {
            "CRESTA_CLIENT_ID": self.settings.cresta_client_id,
            "CRESTA_CLIENT_SECRET": self.settings.cresta_client_secret,
            "CRESTA_PIPELINE_CRESTA_AUTH_URL": self.cresta.auth_url,
            "CRESTA_PIPELINE_CRESTA_WS_URL": self.cresta.ws_url,
            "CRESTA_PIPELINE_CRESTA_MEDIA_TOKEN": self.settings.cresta_media_token,
        }

    def process_environment(self) -> dict[str, str]:
        """This process's environment plus the stack's: for the job and worker processes."""
        return {**os.environ, **self.aws_environment(), **self.cresta_environment()}

    def apply_environment(self) -> None:
        os.environ.update(self.aws_environment())
