"""A fragment reaches the reader when its last byte lands, not when the next one comes.

GetMedia bodies are read with urllib3's chunk-by-chunk reader; a fixed-size blocking read
kept each fragment's tail (with its ContactId tag) until the next fragment or the end of
the response arrived — a second late with Connect's fragments.
"""

from __future__ import annotations

import queue
import threading

import httpx
import pytest

from connectors.kvs.media import KvsMediaSource
from emulators.stack import LocalStack, StackSettings
from pipeline.mkv import MkvStreamParser, Tag, write_connect_fragment

#: Far longer than the wait below: the response stays open, as a live call's does.
IDLE_TIMEOUT_S = 30.0


@pytest.fixture
def stack(monkeypatch):
    with LocalStack(StackSettings(kvs_pool_size=1, kvs_idle_timeout_s=IDLE_TIMEOUT_S)) as local:
        for name, value in local.aws_environment().items():
            monkeypatch.setenv(name, value)
        yield local


def test_each_fragment_is_complete_before_the_next_is_written(stack):
    arn = stack.kvs_stream_arns[0]
    source = KvsMediaSource(stack.client("kinesisvideo"), media_endpoint_override=stack.kvs.endpoint_url)
    contact_tags: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        parser = MkvStreamParser()
        for chunk in source.open(arn, {"StartSelectorType": "EARLIEST"}):
            for event in parser.feed(chunk):
                if isinstance(event, Tag) and event.name == "ContactId":
                    contact_tags.put(event.value)
            if stop.is_set():
                return

    with httpx.Client(base_url=stack.kvs.endpoint_url) as http:
        reader = threading.Thread(target=read, daemon=True)
        for index in range(3):
            fragment = write_connect_fragment(
                contact_id=f"contact-{index}",
                instance_id="instance",
                timecode_ms=1_000 * index,
                customer_pcm=bytes(range(256)) * 62,
                agent_pcm=bytes(16_000),
            )
            http.post("/putMedia", content=fragment, headers={"x-amzn-stream-arn": arn}).raise_for_status()
            if index == 0:
                reader.start()
            # Nothing else is written until this fragment's last tag has been read.
            assert contact_tags.get(timeout=10) == f"contact-{index}"
    stop.set()
