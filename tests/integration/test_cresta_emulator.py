"""The Cresta emulator on loopback, driven by the real token provider and Media Streams client,
and by a raw WebSocket client sending deliberately bad streams."""

import base64
import json
import re
from itertools import zip_longest

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from connectors.cresta import (
    CrestaAuthError,
    CrestaDeliveryError,
    CrestaTokenProvider,
    MediaStreamsConnection,
)
from emulators.cresta import CrestaEmulator
from pipeline.audio import WAVE_FORMAT_MULAW, pcm16_to_mulaw, read_wav
from pipeline.media_streams import MediaStreamsSender

CLIENT_ID = "emulated-client"
CLIENT_SECRET = "emulated-secret"
MEDIA_TOKEN = "emulated-media-token"


@pytest.fixture
def emulator():
    with CrestaEmulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, media_token=MEDIA_TOKEN
    ) as running:
        yield running


@pytest.fixture
def provider(emulator):
    return CrestaTokenProvider(emulator.auth_url, CLIENT_ID, CLIENT_SECRET)


def speech(samples: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(-20000, 20000, samples).astype("<i2").tobytes()


def padded_mulaw(pcm: bytes) -> bytes:
    mulaw = pcm16_to_mulaw(pcm)
    return mulaw + b"\xff" * (-len(mulaw) % 160)


# --- token endpoint ---------------------------------------------------------------------------


def test_the_token_provider_gets_a_bearer_token(emulator, provider):
    token = provider.token()
    assert token and provider.token() == token
    assert emulator.token_requests == 1


def test_wrong_client_secret_is_refused_without_retries(emulator):
    provider = CrestaTokenProvider(emulator.auth_url, CLIENT_ID, "not-the-secret")
    with pytest.raises(CrestaAuthError, match="HTTP 401") as raised:
        provider.token()
    assert raised.value.status_code == 401


def token_url(emulator) -> str:
    return emulator.auth_url + "/v1/oauth/regionalToken"


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [
        ({"json": {"grant_type": "client_credentials"}}, 200),
        ({"json": {"grant_type": "client_credentials"}, "auth": None}, 401),
        ({"json": {"grant_type": "client_credentials"}, "auth": (CLIENT_ID, "wrong")}, 401),
        ({"json": {"grant_type": "client_credentials"}, "auth": ("someone", CLIENT_SECRET)}, 401),
        ({"json": {"grant_type": "password"}}, 400),
        ({"json": ["client_credentials"]}, 400),
        ({"content": b"grant_type=client_credentials"}, 400),
        ({"content": b"{", "headers": {"Content-Type": "application/json"}}, 400),
    ],
)
def test_the_token_endpoint_is_strict(emulator, request_kwargs, status):
    kwargs = {"auth": (CLIENT_ID, CLIENT_SECRET), **request_kwargs}
    response = httpx.post(token_url(emulator), **kwargs)
    assert response.status_code == status
    if status == 200:
        body = response.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
        assert isinstance(body["access_token"], str)


def test_the_token_endpoint_answers_only_post_on_its_path(emulator):
    assert httpx.get(token_url(emulator)).status_code == 405
    wrong_path = httpx.post(emulator.auth_url + "/oauth/token", auth=(CLIENT_ID, CLIENT_SECRET))
    assert wrong_path.status_code == 404


# --- Media Streams upgrade --------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer not-issued", "Basic abc"])
def test_the_upgrade_needs_an_issued_bearer_token(emulator, authorization):
    headers = {"Authorization": authorization} if authorization else None
    with pytest.raises(InvalidStatus) as raised:
        connect(emulator.ws_url, additional_headers=headers)
    assert raised.value.response.status_code == 401


def test_an_expired_token_is_refused():
    now = [0.0]
    with CrestaEmulator(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        media_token=MEDIA_TOKEN,
        token_ttl_s=60,
        clock=lambda: now[0],
    ) as short_lived:
        token = CrestaTokenProvider(short_lived.auth_url, CLIENT_ID, CLIENT_SECRET).token()
        headers = {"Authorization": f"Bearer {token}"}
        with connect(short_lived.ws_url, additional_headers=headers):
            pass
        now[0] = 60.0
        with pytest.raises(InvalidStatus) as raised:
            connect(short_lived.ws_url, additional_headers=headers)
        assert raised.value.response.status_code == 401


def test_a_refused_upgrade_is_a_delivery_error_with_its_status(emulator):
    connection = MediaStreamsConnection(emulator.ws_url, MEDIA_TOKEN, lambda: "not-issued")
    with pytest.raises(CrestaDeliveryError, match="refused: HTTP 401") as raised:
        connection.open("contact-1")
    assert raised.value.status_code == 401
    assert not connection.is_open


def test_an_unreachable_endpoint_is_a_delivery_error_that_hides_url_credentials(emulator):
    url = emulator.ws_url.replace("ws://", "ws://user:password@") + "stream?key=hidden"
    emulator.stop()
    connection = MediaStreamsConnection(url, MEDIA_TOKEN, lambda: "any")
    with pytest.raises(CrestaDeliveryError, match="failed") as raised:
        connection.open("contact-1")
    for credential in ("password", "hidden", MEDIA_TOKEN):
        assert credential not in str(raised.value) and credential not in repr(connection)
    assert "/stream" in str(raised.value)


def test_an_invalid_url_is_a_delivery_error_that_hides_its_credentials():
    connection = MediaStreamsConnection("http://user:password@host/?key=hidden", "t", lambda: "a")
    with pytest.raises(CrestaDeliveryError, match="InvalidURI") as raised:
        connection.open("contact-1")
    assert "password" not in str(raised.value) and "hidden" not in str(raised.value)


def test_a_token_failure_is_a_delivery_error(emulator):
    bad_provider = CrestaTokenProvider(emulator.auth_url, CLIENT_ID, "wrong")
    connection = MediaStreamsConnection(emulator.ws_url, MEDIA_TOKEN, bad_provider.token)
    with pytest.raises(CrestaDeliveryError, match="no access token"):
        connection.open("contact-1")


def test_sending_on_a_closed_connection_is_a_delivery_error(emulator, provider):
    connection = MediaStreamsConnection(emulator.ws_url, MEDIA_TOKEN, provider.token)
    with pytest.raises(CrestaDeliveryError, match="not open"):
        connection.send_chunk("customer", speech(160, 0))
    connection.close()


# --- the real client, end to end -------------------------------------------------------------


def test_the_client_delivers_a_call_exactly_and_conformantly(emulator, provider, tmp_path):
    customer, agent = speech(8000 * 3 + 37, seed=1), speech(8000 * 2 + 5, seed=2)
    connection = MediaStreamsConnection(
        emulator.ws_url,
        MEDIA_TOKEN,
        provider.token,
        account_sid="instance-1",
        epoch_ms=lambda: 1700000000123,
    )
    connection.open("contact-1", {"queue": "billing", "Token": "spoofed"}, agent_id="agent-7")
    stream_sid = connection.stream_sid
    assert re.fullmatch(r"MZ[0-9a-f]{32}", stream_sid)
    # 100 ms chunks on one track and 70 ms on the other, so frames straddle chunks.
    customer_chunks = [customer[i : i + 1600] for i in range(0, len(customer), 1600)]
    agent_chunks = [agent[i : i + 1120] for i in range(0, len(agent), 1120)]
    for customer_chunk, agent_chunk in zip_longest(customer_chunks, agent_chunks, fillvalue=b""):
        connection.send_chunk("customer", customer_chunk)
        connection.send_chunk("agent", agent_chunk)
    connection.close()
    assert not connection.is_open
    emulator.wait_connections_closed(1)

    record = emulator.calls()["contact-1"]
    assert record.violations == [] and emulator.violations() == []
    assert record.stopped
    assert record.custom_parameters == {
        "queue": "billing",
        "CallId": "contact-1-1700000000123",
        "AgentId": "agent-7",
        "Token": MEDIA_TOKEN,
        "ParticipantMode": "agent",
    }
    assert record.tracks["inbound"] == padded_mulaw(customer)
    assert record.tracks["outbound"] == padded_mulaw(agent)
    for track in ("inbound", "outbound"):
        times = record.media_receive_times[track]
        assert len(times) == len(record.tracks[track]) // 160
        assert times == sorted(times)
    assert record.stream_sids == [stream_sid]

    written = emulator.write_wavs(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "contact-1/agent.wav",
        "contact-1/customer.wav",
    ]
    assert read_wav(tmp_path / "contact-1" / "customer.wav") == (
        WAVE_FORMAT_MULAW, 8000, 1, 8, record.tracks["inbound"]
    )
    assert read_wav(tmp_path / "contact-1" / "agent.wav").data == record.tracks["outbound"]


def test_a_reconnect_appends_to_the_same_call(emulator, provider):
    first, second = speech(1600, seed=3), speech(800, seed=4)
    for part in (first, second):
        connection = MediaStreamsConnection(emulator.ws_url, MEDIA_TOKEN, provider.token)
        connection.open("contact-2")
        connection.send_chunk("customer", part)
        connection.close()
    emulator.wait_connections_closed(2)
    record = emulator.calls()["contact-2"]
    assert record.tracks["inbound"] == pcm16_to_mulaw(first) + pcm16_to_mulaw(second)
    assert record.tracks["outbound"] == b""
    assert len(record.stream_sids) == 2 and record.stopped and record.violations == []


def test_the_emulator_closing_breaks_the_stream(emulator, provider):
    connection = MediaStreamsConnection(emulator.ws_url, MEDIA_TOKEN, provider.token)
    connection.open("contact-4")
    emulator.stop()
    with pytest.raises(CrestaDeliveryError, match="broke"):
        for _ in range(50):
            connection.send_chunk("customer", speech(160, seed=7))
    assert not connection.is_open


def test_wavs_of_a_hostile_call_sid_stay_inside_the_output_directory(emulator, provider, tmp_path):
    connection = MediaStreamsConnection(emulator.ws_url, MEDIA_TOKEN, provider.token)
    connection.open("../../escape")
    connection.close()
    emulator.wait_connections_closed(1)
    out = tmp_path / "out"
    for path in emulator.write_wavs(out):
        assert out in path.resolve().parents


# --- conformance: a raw client sending bad streams ------------------------------------------


def good_messages() -> list[str]:
    sender = MediaStreamsSender("MZ" + "cd" * 16, "instance-1", "raw-call", {"Token": MEDIA_TOKEN})
    return (
        sender.start_messages()
        + sender.media_messages("customer", speech(320, seed=8))
        + sender.media_messages("agent", speech(160, seed=9))
        + sender.stop_messages()
    )


GOOD = good_messages()


def changed(index: int, change) -> list[str]:
    """The good stream with message ``index`` (connected=0, start=1, media 2-4, stop=5) changed."""
    messages = list(GOOD)
    message = json.loads(messages[index])
    change(message)
    messages[index] = json.dumps(message)
    return messages


def send_raw(emulator, provider, frames: list[str | bytes]) -> None:
    headers = {"Authorization": f"Bearer {provider.token()}"}
    with connect(emulator.ws_url, additional_headers=headers) as ws:
        for frame in frames:
            ws.send(frame)
    emulator.wait_connections_closed(1)


def test_the_good_raw_stream_has_no_violations(emulator, provider):
    send_raw(emulator, provider, GOOD)
    assert emulator.violations() == []
    assert emulator.calls()["raw-call"].stopped


BAD_STREAMS = {
    "order": (GOOD[1:], "'start' received while awaiting connected"),
    "missing-field": (
        changed(1, lambda m: m["start"].pop("accountSid")),
        "start.accountSid is missing",
    ),
    "typed-wrong": (changed(2, lambda m: m["media"].update(chunk=1)), "media.chunk is int 1"),
    "base64": (changed(2, lambda m: m["media"].update(payload="%%%")), "not valid base64"),
    "frame-size": (
        changed(2, lambda m: m["media"].update(payload=base64.b64encode(bytes(161)).decode())),
        "161 bytes, expected 160",
    ),
    "chunk": (changed(3, lambda m: m["media"].update(chunk="1")), "follows chunk 1"),
    "sequence": (changed(3, lambda m: m.update(sequenceNumber="2")), "sequenceNumber 2 follows 2"),
    "timestamp": (changed(3, lambda m: m["media"].update(timestamp="0")), "does not increase"),
    "media-format": (
        changed(1, lambda m: m["start"]["mediaFormat"].update(encoding="audio/x-alaw")),
        "mediaFormat is",
    ),
    "token": (
        changed(1, lambda m: m["start"]["customParameters"].update(Token="other")),
        "Token does not match",
    ),
    "after-stop": (GOOD + [GOOD[2]], "message after stop"),
    "binary": (GOOD[:2] + [b"\x00\x01"], "binary frame"),
}


@pytest.mark.parametrize(("frames", "expected"), BAD_STREAMS.values(), ids=list(BAD_STREAMS))
def test_the_emulator_reports_each_kind_of_violation(emulator, provider, frames, expected):
    send_raw(emulator, provider, frames)
    violations = emulator.violations()
    assert any(expected in violation for violation in violations), violations


def test_a_stream_cut_without_stop_is_recorded_as_not_stopped(emulator, provider):
    send_raw(emulator, provider, GOOD[:4])
    record = emulator.calls()["raw-call"]
    assert not record.stopped and record.violations == []
    assert len(record.tracks["inbound"]) == 320


def test_violations_before_any_start_are_kept_per_connection(emulator, provider):
    send_raw(emulator, provider, [GOOD[0], GOOD[2]])
    assert emulator.calls() == {}
    assert emulator.violations() == [
        "connection 1: message 2: 'media' received while awaiting start",
        "connection 1: message 2: sequenceNumber 2 follows 0 (expected 1)",
    ]
