"""The KVS media emulator over real HTTP: PutMedia with httpx, GetMedia with boto3."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
from datetime import datetime, timezone

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from emulators.kvs import KvsMediaEmulator
from pipeline.mkv import Frame, MkvStreamParser, Tag, write_connect_fragment

STREAM_ARN = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-pool-1/1700000000000"
CONTACT = "contact-a"
T0 = 1_726_677_688_724
IDLE_S = 0.2


@pytest.fixture
def emulator():
    with KvsMediaEmulator(idle_timeout_s=IDLE_S, seed=1) as running:
        yield running


def media_client(endpoint_url: str):
    return boto3.client(
        "kinesis-video-media",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture
def media(emulator):
    return media_client(emulator.endpoint_url)


def pcm(seed: int, seconds: float = 0.25) -> bytes:
    return random.Random(seed).randbytes(int(8000 * seconds) * 2)


def connect_fragment(index: int, contact_id: str = CONTACT) -> bytes:
    return write_connect_fragment(
        contact_id=contact_id,
        instance_id="instance-1",
        timecode_ms=T0 + index * 250,
        customer_pcm=pcm(2 * index),
        agent_pcm=pcm(2 * index + 1),
    )


def put_media(emulator: KvsMediaEmulator, body: bytes, stream: str = STREAM_ARN) -> httpx.Response:
    return httpx.post(f"{emulator.endpoint_url}/putMedia", content=body, headers={"x-amzn-stream-arn": stream})


def put_fragments(emulator: KvsMediaEmulator, *indexes: int) -> list[str]:
    response = put_media(emulator, b"".join(connect_fragment(i) for i in indexes))
    response.raise_for_status()
    return [json.loads(line)["FragmentNumber"] for line in response.text.splitlines()]


def read_all(payload) -> list:
    parser = MkvStreamParser()
    events = []
    for chunk in payload.iter_chunks(1024):
        events += parser.feed(chunk)
    return events + parser.close()


def fragment_numbers(events: list) -> list[str]:
    return [e.value for e in events if isinstance(e, Tag) and e.name == "AWS_KINESISVIDEO_FRAGMENT_NUMBER"]


def test_put_media_acknowledges_each_fragment_with_growing_numbers(emulator):
    response = put_media(emulator, connect_fragment(0) + connect_fragment(1))
    assert response.status_code == 200
    acks = [json.loads(line) for line in response.text.splitlines()]
    assert [ack["EventType"] for ack in acks] == ["PERSISTED", "PERSISTED"]
    assert [ack["FragmentTimecode"] for ack in acks] == [T0, T0 + 250]
    numbers = [int(ack["FragmentNumber"]) for ack in acks]
    assert numbers[0] < numbers[1]
    assert all(47 <= len(ack["FragmentNumber"]) <= 48 for ack in acks)


def test_put_media_rejects_malformed_mkv(emulator):
    truncated = connect_fragment(0)[:-7]
    response = put_media(emulator, truncated)
    assert response.status_code == 400
    assert "malformed MKV" in response.json()["message"]
    assert emulator.fragments(STREAM_ARN) == []


def test_get_media_returns_fragments_with_the_kvs_tags_then_ends_when_idle(emulator, media):
    numbers = put_fragments(emulator, 0, 1)
    response = media.get_media(StreamARN=STREAM_ARN, StartSelector={"StartSelectorType": "EARLIEST"})
    assert response["ContentType"] == "video/webm"
    events = read_all(response["Payload"])

    assert fragment_numbers(events) == numbers
    tags = [(e.name, e.value) for e in events if isinstance(e, Tag)]
    first = tags[: tags.index(("ContactId", CONTACT))]
    assert first[1][0] == "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
    assert first[2] == ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", "1726677688.724")
    assert ("AWS_KINESISVIDEO_CONTINUATION_TOKEN", numbers[0]) in tags
    assert ("MimeType", "audio/L16;rate=8000;channels=1;") in tags
    customer = b"".join(e.payload for e in events if isinstance(e, Frame) and e.track_number == 1)
    assert customer == pcm(0) + pcm(2)


def test_fragment_number_selector_starts_after_that_fragment(emulator, media):
    numbers = put_fragments(emulator, 0, 1, 2)
    response = media.get_media(
        StreamARN=STREAM_ARN,
        StartSelector={"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": numbers[0]},
    )
    assert fragment_numbers(read_all(response["Payload"])) == numbers[1:]


def test_producer_timestamp_selector_includes_the_fragment_holding_it(emulator, media):
    numbers = put_fragments(emulator, 0, 1, 2)
    for start_ms in (T0 + 250, T0 + 300):
        response = media.get_media(
            StreamName="connect-pool-1",
            StartSelector={
                "StartSelectorType": "PRODUCER_TIMESTAMP",
                "StartTimestamp": datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc),
            },
        )
        assert fragment_numbers(read_all(response["Payload"])) == numbers[1:]


def test_continuation_token_resumes_after_the_last_fragment_read(emulator, media):
    numbers = put_fragments(emulator, 0, 1)
    first = read_all(
        media.get_media(StreamARN=STREAM_ARN, StartSelector={"StartSelectorType": "EARLIEST"})["Payload"]
    )
    tokens = [e.value for e in first if isinstance(e, Tag) and e.name == "AWS_KINESISVIDEO_CONTINUATION_TOKEN"]
    token = tokens[-1]
    more = put_fragments(emulator, 2)
    resumed = media.get_media(
        StreamARN=STREAM_ARN,
        StartSelector={"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": token},
    )
    assert token == numbers[-1]
    assert fragment_numbers(read_all(resumed["Payload"])) == more


def test_live_reader_receives_fragments_put_after_it_connected():
    # The idle timeout must outlast the writer's start-up on a loaded machine.
    with KvsMediaEmulator(idle_timeout_s=1.0) as emulator:
        emulator.create_stream(STREAM_ARN)
        response = media_client(emulator.endpoint_url).get_media(StreamARN=STREAM_ARN, StartSelector={"StartSelectorType": "NOW"})
        writer = threading.Timer(0.05, put_fragments, args=(emulator, 0, 1))
        writer.start()
        events = read_all(response["Payload"])
        writer.join()
    assert len(fragment_numbers(events)) == 2


def test_unknown_fragment_number_is_reported_inside_the_stream(emulator, media):
    put_fragments(emulator, 0)
    response = media.get_media(
        StreamARN=STREAM_ARN,
        StartSelector={"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "12345"},
    )
    tags = {e.name: e.value for e in read_all(response["Payload"]) if isinstance(e, Tag)}
    assert tags["AWS_KINESISVIDEO_ERROR_ID"] == "4000"


def test_unknown_stream_is_resource_not_found(emulator, media):
    with pytest.raises(ClientError) as caught:
        media.get_media(StreamName="no-such-stream", StartSelector={"StartSelectorType": "EARLIEST"})
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_selector_without_its_argument_is_invalid(emulator, media):
    put_fragments(emulator, 0)
    with pytest.raises(ClientError) as caught:
        media.get_media(StreamARN=STREAM_ARN, StartSelector={"StartSelectorType": "FRAGMENT_NUMBER"})
    assert caught.value.response["Error"]["Code"] == "InvalidArgumentException"


def test_a_fourth_concurrent_connection_is_refused(emulator, media):
    put_fragments(emulator, 0)
    open_bodies = [
        media.get_media(StreamARN=STREAM_ARN, StartSelector={"StartSelectorType": "NOW"})["Payload"]
        for _ in range(3)
    ]
    with pytest.raises(ClientError) as caught:
        media.get_media(StreamARN=STREAM_ARN, StartSelector={"StartSelectorType": "NOW"})
    assert caught.value.response["Error"]["Code"] == "ConnectionLimitExceededException"
    for body in open_bodies:
        read_all(body)
    media.get_media(StreamARN=STREAM_ARN, StartSelector={"StartSelectorType": "NOW"})["Payload"].close()


def test_unsigned_get_media_is_rejected(emulator):
    put_fragments(emulator, 0)
    response = httpx.post(
        f"{emulator.endpoint_url}/getMedia",
        json={"StreamARN": STREAM_ARN, "StartSelector": {"StartSelectorType": "EARLIEST"}},
    )
    assert response.status_code == 401
    assert response.headers["x-amzn-ErrorType"].startswith("NotAuthorizedException")


def http_chunks_of_get_media(emulator: KvsMediaEmulator) -> list[bytes]:
    """The HTTP chunks of a GetMedia body from the start of the stream, as sent."""
    request = json.dumps({"StreamARN": STREAM_ARN, "StartSelector": {"StartSelectorType": "EARLIEST"}}).encode()
    host, port = emulator.endpoint_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(
            b"POST /getMedia HTTP/1.1\r\nHost: kvs\r\nContent-Type: application/json\r\n"
            b"X-Amz-Date: 20240101T000000Z\r\n"
            b"Authorization: AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/kinesisvideo/aws4_request, "
            b"SignedHeaders=host;x-amz-date, Signature=00\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(request), request)
        )
        raw = b""
        while data := connection.recv(65536):
            raw += data
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head
    chunks = []
    while True:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(body[:size])
        body = body[size + 2 :]


def test_body_is_sent_in_http_chunks_of_varied_sizes(emulator):
    put_fragments(emulator, 0, 1, 2, 3)
    sizes = [len(chunk) for chunk in http_chunks_of_get_media(emulator)]
    assert min(sizes) < 17 and max(sizes) > 1024
    assert len(set(sizes)) > len(sizes) // 2


def test_without_random_chunks_each_fragment_is_sent_whole_in_chunks_of_at_most_16_kib():
    with KvsMediaEmulator(idle_timeout_s=IDLE_S, random_chunks=False) as emulator:
        # 2 s fragments: 64 KB of audio, more than one chunk's worth.
        fragments = [
            write_connect_fragment(
                contact_id=CONTACT, instance_id="instance-1", timecode_ms=T0 + index * 2000,
                customer_pcm=pcm(2 * index, seconds=2), agent_pcm=pcm(2 * index + 1, seconds=2),
            )
            for index in range(2)
        ]
        put_media(emulator, b"".join(fragments)).raise_for_status()
        chunks = http_chunks_of_get_media(emulator)

    ebml_magic = b"\x1a\x45\xdf\xa3"
    assert chunks[0].startswith(ebml_magic)
    assert sum(chunk.startswith(ebml_magic) for chunk in chunks) == 2
    for chunk, following in zip(chunks, chunks[1:] + [ebml_magic]):
        # Only a fragment's last chunk is short, and the next fragment starts a chunk.
        assert len(chunk) == 16384 or following.startswith(ebml_magic)
    parser = MkvStreamParser()
    frames = [e for chunk in chunks for e in parser.feed(chunk) if isinstance(e, Frame)]
    assert b"".join(f.payload for f in frames if f.track_number == 1) == pcm(0, seconds=2) + pcm(2, seconds=2)


def test_put_media_requests_can_share_one_connection(emulator):
    host, port = emulator.endpoint_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)

    def post(body: bytes) -> http.client.HTTPResponse:
        connection.request("POST", "/putMedia", body=body, headers={"x-amzn-stream-arn": STREAM_ARN})
        response = connection.getresponse()
        response.read()
        return response

    try:
        first = post(connect_fragment(0))
        sock = connection.sock
        statuses = [first.status] + [post(connect_fragment(index)).status for index in (1, 2)]
        assert connection.sock is sock is not None
        # After an error the request's body may be left unread: the connection closes.
        refused = post(b"not mkv")
    finally:
        connection.close()
    assert statuses == [200, 200, 200]
    assert len(emulator.fragments(STREAM_ARN)) == 3
    assert refused.status == 400 and refused.getheader("Connection") == "close"


def test_unknown_size_clusters_carry_the_same_frames():
    frames = []
    for unknown_size in (False, True):
        with KvsMediaEmulator(idle_timeout_s=IDLE_S, seed=3, unknown_size_clusters=unknown_size) as emulator:
            put_fragments(emulator, 0, 1)
            response = media_client(emulator.endpoint_url).get_media(StreamARN=STREAM_ARN, StartSelector={"StartSelectorType": "EARLIEST"})
            events = read_all(response["Payload"])
            frames.append([e for e in events if isinstance(e, Frame)])
    assert frames[0] == frames[1] and len(frames[0]) == 16
