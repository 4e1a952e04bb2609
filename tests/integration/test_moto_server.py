"""The local stack's moto process: serves AWS APIs over HTTP, starts empty, stops with its parent."""

from __future__ import annotations

import os
import subprocess
import sys

import boto3
import psutil
import pytest

from emulators.moto_server import MotoServerProcess
from emulators.stack import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY


def sqs(endpoint_url: str):
    return boto3.client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


def test_each_server_starts_empty_and_serves_aws_calls_until_stopped():
    first = MotoServerProcess().start()
    try:
        queue_url = sqs(first.endpoint_url).create_queue(QueueName="work")["QueueUrl"]
        sqs(first.endpoint_url).send_message(QueueUrl=queue_url, MessageBody="contact")
        received = sqs(first.endpoint_url).receive_message(QueueUrl=queue_url)["Messages"]
        assert [m["Body"] for m in received] == ["contact"]
        second = MotoServerProcess().start()
        try:
            assert second.endpoint_url != first.endpoint_url
            assert sqs(second.endpoint_url).list_queues().get("QueueUrls", []) == []
        finally:
            second.stop()
    finally:
        pid = first.pid
        first.stop()
    with pytest.raises(ProcessLookupError):
        # Reaped by stop(): the pid no longer names a child of this process.
        os.kill(pid, 0)


def test_the_server_exits_when_the_process_that_started_it_goes():
    # The parent here is a short-lived Python that starts a server, prints its pid and
    # exits without stopping it (as a killed demo would).
    parent = subprocess.run(
        [
            sys.executable,
            "-c",
            "from emulators.moto_server import MotoServerProcess\n"
            "print(MotoServerProcess().start().pid, flush=True)\n"
            "import os; os._exit(0)",
        ],
        # Not its stderr: the server inherits that, and would hold the pipe open.
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=60,
        check=True,
    )
    try:
        orphan = psutil.Process(int(parent.stdout.strip()))
    except psutil.NoSuchProcess:
        return
    try:
        orphan.wait(timeout=30)
    except psutil.TimeoutExpired:
        orphan.kill()
        pytest.fail(f"moto's server {orphan.pid} outlived the process that started it")
