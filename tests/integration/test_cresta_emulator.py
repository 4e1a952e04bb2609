"""The Cresta emulator on loopback, driven by the real token provider and stream adapters,
and by a raw WebSocket client sending deliberately bad streams or meeting injected faults."""

import asyncio
import base64
import doctest
import json
import re
import threading
from itertools import zip_longest

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from connectors.cresta import (
    CrestaAuthError,
    CrestaDeliveryError,
    CrestaTokenProvider,
    StaticCredentials,
    StreamContact,
    WebSocketStreamAdapter,
)
from connectors.cresta.adapters import UniqueMillis
import emulators.cresta.server
from emulators.cresta import CrestaEmulator, parse_outage
from pipeline.audio import WAVE_FORMAT_MULAW, WAVE_FORMAT_PCM, pcm16_to_mulaw, read_wav
from pipeline.l16_stream import L16Sender
from pipeline.media_streams import MediaStreamsSender
from pipeline.records import Track

CLIENT_ID = "emulated-client"
CLIENT_SECRET = "emulated-secret"
MEDIA_TOKEN = "emulated-media-token"


@pytest.fixture
def emulator():
    with CrestaEmulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, media_token=MEDIA_TOKEN
    ) as running:
        yield running


def provider_for(emulator, client_secret: str = CLIENT_SECRET) -> CrestaTokenProvider:
    return CrestaTokenProvider(emulator.auth_url, StaticCredentials(CLIENT_ID, client_secret))


@pytest.fixture
def provider(emulator):
    return provider_for(emulator)


class FixedTokens:
    """Tokens the emulator never issued; counts renewals."""

    def __init__(self) -> None:
        self.renewals = 0

    def token(self) -> str:
        return "not-issued"

    def renew(self, rejected_token: str) -> str:
        self.renewals += 1
        return "renewed-but-still-not-issued"


def adapter(url: str, tokens, **kwargs) -> WebSocketStreamAdapter:
    return WebSocketStreamAdapter(url, MEDIA_TOKEN, tokens, **kwargs)


def run(coroutine):
    return asyncio.run(coroutine)


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


def test_wrong_client_secret_is_refused(emulator):
    with pytest.raises(CrestaAuthError, match="HTTP 401") as raised:
        provider_for(emulator, "not-the-secret").token()
    assert raised.value.status_code == 401
    assert emulator.token_requests == 0


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
        token = provider_for(short_lived).token()
        headers = {"Authorization": f"Bearer {token}"}
        with connect(short_lived.ws_url, additional_headers=headers):
            pass
        now[0] = 60.0
        with pytest.raises(InvalidStatus) as raised:
            connect(short_lived.ws_url, additional_headers=headers)
        assert raised.value.response.status_code == 401


def test_a_refused_upgrade_renews_the_token_once_then_is_a_delivery_error(emulator):
    tokens = FixedTokens()
    stream = adapter(emulator.ws_url, tokens)
    with pytest.raises(CrestaDeliveryError, match="refused: HTTP 401") as raised:
        run(stream.open_contact(StreamContact("contact-1")))
    assert raised.value.status_code == 401
    assert tokens.renewals == 1
    assert not stream.is_open


def test_an_unreachable_endpoint_is_a_delivery_error_that_hides_url_credentials(emulator, provider):
    url = emulator.ws_url.replace("ws://", "ws://user:password@") + "stream?key=hidden"
    emulator.stop()
    stream = adapter(url, provider)
    with pytest.raises(CrestaDeliveryError, match="failed") as raised:
        run(stream.open_contact(StreamContact("contact-1")))
    for credential in ("password", "hidden", MEDIA_TOKEN):
        assert credential not in str(raised.value) and credential not in repr(stream)
    assert "/stream" in str(raised.value)


def test_an_invalid_url_is_a_delivery_error_that_hides_its_credentials(provider):
    stream = adapter("http://user:password@host/?key=hidden", provider)
    with pytest.raises(CrestaDeliveryError, match="InvalidURI") as raised:
        run(stream.open_contact(StreamContact("contact-1")))
    assert "password" not in str(raised.value) and "hidden" not in str(raised.value)


def test_a_token_failure_is_a_delivery_error(emulator):
    stream = adapter(emulator.ws_url, provider_for(emulator, "wrong"))
    with pytest.raises(CrestaDeliveryError, match="no access token"):
        run(stream.open_contact(StreamContact("contact-1")))


def test_sending_on_a_closed_stream_is_a_delivery_error(emulator, provider):
    stream = adapter(emulator.ws_url, provider)
    with pytest.raises(CrestaDeliveryError, match="not open"):
        run(stream.send_chunk(Track.CUSTOMER, speech(160, 0)))
    run(stream.close_contact())


# --- the real adapters, end to end ----------------------------------------------------------


async def send_call(stream, contact: StreamContact, customer: bytes, agent: bytes) -> None:
    """Both tracks in 100 ms chunks on one and 70 ms on the other, so frames straddle chunks."""
    await stream.open_contact(contact)
    customer_chunks = [customer[i : i + 1600] for i in range(0, len(customer), 1600)]
    agent_chunks = [agent[i : i + 1120] for i in range(0, len(agent), 1120)]
    for customer_chunk, agent_chunk in zip_longest(customer_chunks, agent_chunks, fillvalue=b""):
        await stream.send_chunk(Track.CUSTOMER, customer_chunk)
        await stream.send_chunk(Track.AGENT, agent_chunk)
    await stream.close_contact()


CONTACT = StreamContact("contact-1", "instance-1", "agent-7", {"queue": "billing", "Token": "spoofed"})


def test_media_streams_delivers_a_call_exactly_and_conformantly(emulator, provider, tmp_path):
    customer, agent = speech(8000 * 3 + 37, seed=1), speech(8000 * 2 + 5, seed=2)
    stream = adapter(emulator.ws_url, provider, epoch_ms=lambda: 1700000000123)
    run(send_call(stream, CONTACT, customer, agent))
    assert not stream.is_open
    assert re.fullmatch(r"MZ[0-9a-f]{32}", stream.stream_sid)
    emulator.wait_connections_closed(1)

    record = emulator.calls()["contact-1"]
    assert record.violations == [] and emulator.violations() == []
    assert record.stopped and record.encoding == "audio/x-mulaw"
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
    assert record.stream_sids == [stream.stream_sid]
    assert record.call_ids == ["contact-1-1700000000123"]

    written = emulator.write_wavs(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "contact-1/agent.wav",
        "contact-1/customer.wav",
    ]
    assert read_wav(tmp_path / "contact-1" / "customer.wav") == (
        WAVE_FORMAT_MULAW, 8000, 1, 8, record.tracks["inbound"]
    )
    assert read_wav(tmp_path / "contact-1" / "agent.wav").data == record.tracks["outbound"]


def test_l16_delivers_a_call_exactly_on_its_own_path(emulator, provider, tmp_path):
    customer, agent = speech(8000 * 2 + 3, seed=5), speech(8000 + 1, seed=6)
    stream = adapter(emulator.l16_url, provider, new_sender=L16Sender)
    run(send_call(stream, CONTACT, customer, agent))
    emulator.wait_connections_closed(1)
    record = emulator.calls()["contact-1"]
    assert emulator.violations() == []
    assert record.stopped and record.encoding == "audio/L16"
    assert record.tracks["inbound"] == customer and record.tracks["outbound"] == agent
    assert record.custom_parameters["ParticipantMode"] == "agent"
    emulator.write_wavs(tmp_path)
    assert read_wav(tmp_path / "contact-1" / "customer.wav") == (WAVE_FORMAT_PCM, 8000, 1, 16, customer)


def test_a_reconnect_appends_to_the_same_call_under_a_new_call_id(emulator, provider):
    first, second = speech(1600, seed=3), speech(800, seed=4)
    # Both streams in the same millisecond: the CallIds must still differ.
    epoch_ms = UniqueMillis(clock_ns=lambda: 1700000000123_000_000)
    for part in (first, second):
        stream = adapter(emulator.ws_url, provider, epoch_ms=epoch_ms)

        async def one_stream():
            await stream.open_contact(StreamContact("contact-2"))
            await stream.send_chunk(Track.CUSTOMER, part)
            await stream.close_contact()

        run(one_stream())
    emulator.wait_connections_closed(2)
    record = emulator.calls()["contact-2"]
    assert record.tracks["inbound"] == pcm16_to_mulaw(first) + pcm16_to_mulaw(second)
    assert record.tracks["outbound"] == b""
    assert record.call_ids == ["contact-2-1700000000123", "contact-2-1700000000124"]
    assert len(record.stream_sids) == 2 and record.stopped and record.violations == []


def test_the_emulator_closing_breaks_the_stream(emulator, provider):
    stream = adapter(emulator.ws_url, provider)

    async def send_until_broken():
        await stream.open_contact(StreamContact("contact-4"))
        # In a thread, so this loop can answer the server's closing handshake meanwhile.
        await asyncio.to_thread(emulator.stop)
        for _ in range(50):
            await stream.send_chunk(Track.CUSTOMER, speech(160, seed=7))

    with pytest.raises(CrestaDeliveryError, match="broke"):
        run(send_until_broken())
    assert not stream.is_open


def test_wavs_of_a_hostile_call_sid_stay_inside_the_output_directory(emulator, provider, tmp_path):
    stream = adapter(emulator.ws_url, provider)

    async def empty_call():
        await stream.open_contact(StreamContact("../../escape"))
        await stream.close_contact()

    run(empty_call())
    emulator.wait_connections_closed(1)
    out = tmp_path / "out"
    for path in emulator.write_wavs(out):
        assert out in path.resolve().parents


# --- conformance: a raw client sending bad streams ------------------------------------------


def good_messages() -> list[str]:
    sender = MediaStreamsSender(
        "MZ" + "cd" * 16, "instance-1", "raw-call", {"Token": MEDIA_TOKEN, "CallId": "raw-call-1"}
    )
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


def send_raw(emulator, provider, frames: list[str | bytes], url: str | None = None, closed: int = 1) -> None:
    with connect(url or emulator.ws_url, additional_headers=bearer(provider)) as ws:
        for frame in frames:
            ws.send(frame)
    emulator.wait_connections_closed(closed)


def bearer(provider) -> dict[str, str]:
    return {"Authorization": f"Bearer {provider.token()}"}


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
    "no-call-id": (
        changed(1, lambda m: m["start"]["customParameters"].pop("CallId")),
        "customParameters.CallId is missing",
    ),
    "no-payload": (changed(2, lambda m: m["media"].pop("payload")), "media.payload is missing"),
    "stream-sid": (changed(2, lambda m: m.update(streamSid="MZ" + "ef" * 16)), "differs from the started stream"),
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


def test_a_call_id_seen_before_is_a_violation(emulator, provider):
    send_raw(emulator, provider, GOOD)
    send_raw(emulator, provider, GOOD, closed=2)
    assert any("duplicate CallId" in v for v in emulator.violations()), emulator.violations()


def l16_messages() -> list[str | bytes]:
    sender = L16Sender("L16-raw", "instance-1", "raw-l16", {"Token": MEDIA_TOKEN, "CallId": "raw-l16-1"})
    return sender.start_messages() + sender.media_messages("customer", speech(320, seed=8)) + sender.stop_messages()


def test_the_l16_path_checks_l16_and_records_pcm(emulator, provider):
    messages = l16_messages()
    send_raw(emulator, provider, messages, url=emulator.l16_url)
    send_raw(emulator, provider, messages[:1] + [GOOD[2]], url=emulator.l16_url, closed=2)
    record = emulator.calls()["raw-l16"]
    assert record.tracks["inbound"] == speech(320, seed=8) and record.encoding == "audio/L16"
    assert any("unknown text event 'media'" in v for v in emulator.violations())


def test_media_streams_messages_on_the_l16_path_are_violations(emulator, provider):
    send_raw(emulator, provider, GOOD, url=emulator.l16_url)
    assert any("unknown text event 'connected'" in v for v in emulator.violations())


def test_an_unknown_stream_path_is_404(emulator, provider):
    with pytest.raises(InvalidStatus) as raised:
        connect(emulator.ws_url + "other", additional_headers=bearer(provider))
    assert raised.value.response.status_code == 404


# --- credentials rotation on Cresta's side ----------------------------------------------------


def test_after_a_rotation_only_the_new_secret_gets_tokens(emulator):
    emulator.set_client_credentials(CLIENT_ID, "rotated-secret")
    with pytest.raises(CrestaAuthError, match="HTTP 401"):
        provider_for(emulator).token()
    assert provider_for(emulator, "rotated-secret").token()


def test_revoked_tokens_no_longer_open_streams(emulator, provider):
    headers = bearer(provider)
    emulator.revoke_tokens()
    with pytest.raises(InvalidStatus) as raised:
        connect(emulator.ws_url, additional_headers=headers)
    assert raised.value.response.status_code == 401


# --- injected faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 401])
def test_token_requests_can_be_failed(emulator, status):
    emulator.faults.fail_token_requests(status, count=2)
    responses = [httpx.post(token_url(emulator), auth=(CLIENT_ID, CLIENT_SECRET), json={"grant_type": "client_credentials"}) for _ in range(3)]
    assert [r.status_code for r in responses] == [status, status, 200]


class CountingCredentials(StaticCredentials):
    def __init__(self) -> None:
        super().__init__(CLIENT_ID, CLIENT_SECRET)
        self.loads = 0

    def load(self):
        self.loads += 1
        return super().load()


def test_an_injected_401_makes_the_provider_read_the_credentials_again_once(emulator):
    emulator.faults.fail_token_requests(401)
    credentials = CountingCredentials()
    token = CrestaTokenProvider(emulator.auth_url, credentials).token()
    assert credentials.loads == 2
    with connect(emulator.ws_url, additional_headers={"Authorization": f"Bearer {token}"}):
        pass

    emulator.faults.fail_token_requests(401, count=2)
    credentials = CountingCredentials()
    with pytest.raises(CrestaAuthError, match="HTTP 401") as raised:
        CrestaTokenProvider(emulator.auth_url, credentials).token()
    assert raised.value.status_code == 401 and credentials.loads == 2


#: Cresta's rule: cached until expires_in − 5 min, or for half of it when that is shorter.
@pytest.mark.parametrize(("token_ttl_s", "cached_for"), [(3600, 3300), (240, 120)])
def test_cached_tokens_are_renewed_before_the_emulator_expires_them(token_ttl_s, cached_for, caplog):
    now = [0.0]
    with CrestaEmulator(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        media_token=MEDIA_TOKEN,
        token_ttl_s=token_ttl_s,
        clock=lambda: now[0],
    ) as expiring:
        provider = CrestaTokenProvider(
            expiring.auth_url, StaticCredentials(CLIENT_ID, CLIENT_SECRET), clock=lambda: now[0]
        )
        # A stream every half cache lifetime, over three token lifetimes: each refresh
        # comes due between two streams, and every token issued expires on the way.
        opens = [step * cached_for / 2 for step in range(int(6 * token_ttl_s / cached_for) + 1)]
        for number, at in enumerate(opens):
            now[0] = at
            stream = adapter(expiring.ws_url, provider)

            async def open_and_close():
                await stream.open_contact(StreamContact(f"contact-{number}"))
                await stream.close_contact()

            run(open_and_close())
        expiring.wait_connections_closed(len(opens))
        assert expiring.token_requests == int(opens[-1] // cached_for) + 1
        assert expiring.violations() == []
    assert "HTTP 401" not in caplog.text


def test_the_token_provider_retries_an_injected_503(emulator):
    emulator.faults.fail_token_requests(503, count=2)
    provider = CrestaTokenProvider(
        emulator.auth_url, StaticCredentials(CLIENT_ID, CLIENT_SECRET), retry_base_delay_s=0.001
    )
    assert provider.token()


def test_connections_can_be_refused_and_accepted_again(emulator, provider):
    emulator.faults.refuse_connections(503)
    with pytest.raises(InvalidStatus) as raised:
        connect(emulator.ws_url, additional_headers=bearer(provider))
    assert raised.value.response.status_code == 503
    emulator.faults.accept_connections()
    send_raw(emulator, provider, GOOD)
    assert emulator.calls()["raw-call"].stopped


def test_a_connection_is_cut_after_n_messages(emulator, provider):
    emulator.faults.drop_after(3)
    with connect(emulator.ws_url, additional_headers=bearer(provider)) as ws:
        for frame in GOOD[:3]:
            ws.send(frame)
        with pytest.raises(ConnectionClosed):
            for frame in GOOD[3:] * 100:
                ws.send(frame)
            ws.recv(timeout=10)
    emulator.wait_connections_closed(1)
    record = emulator.calls()["raw-call"]
    assert len(record.tracks["inbound"]) == 160 and not record.stopped


def test_a_stalled_emulator_reads_nothing_until_it_resumes(emulator, provider):
    emulator.faults.stall()
    with connect(emulator.ws_url, additional_headers=bearer(provider)) as ws:
        for frame in GOOD:
            ws.send(frame)
        assert emulator.calls() == {}
        emulator.faults.resume()
    emulator.wait_connections_closed(1)
    assert emulator.calls()["raw-call"].stopped


def test_stopping_a_stalled_emulator_ends_its_connections():
    emulator = CrestaEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, media_token=MEDIA_TOKEN)
    emulator.start()
    emulator.faults.stall()
    provider = provider_for(emulator)
    with connect(emulator.ws_url, additional_headers=bearer(provider)) as ws:
        ws.send(GOOD[0])
        stopping = threading.Thread(target=emulator.stop, daemon=True)
        stopping.start()
        # A guard against hanging the suite, not a speed claim: stop() used to wait forever.
        stopping.join(timeout=60)
        assert not stopping.is_alive(), "stop() waits for the stalled connection"


def test_slow_reads_still_read_everything_in_order(emulator, provider):
    emulator.faults.slow_reads(0.001)
    send_raw(emulator, provider, GOOD)
    record = emulator.calls()["raw-call"]
    assert record.stopped and record.violations == [] and len(record.tracks["inbound"]) == 320


def test_an_outage_closes_open_streams_and_refuses_new_ones_until_it_ends():
    now = [0.0]
    with CrestaEmulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, media_token=MEDIA_TOKEN, clock=lambda: now[0]
    ) as emulator:
        provider = provider_for(emulator)
        emulator.faults.outage(start_s=5, duration_s=10)
        with connect(emulator.ws_url, additional_headers=bearer(provider)) as ws:
            ws.send(GOOD[0])
            now[0] = 5.0
            with pytest.raises(ConnectionClosed) as raised:
                ws.recv(timeout=10)
        assert raised.value.rcvd.code == 1001
        emulator.wait_connections_closed(1)
        with pytest.raises(InvalidStatus) as refused:
            connect(emulator.ws_url, additional_headers=bearer(provider))
        assert refused.value.response.status_code == 503
        now[0] = 15.0
        send_raw(emulator, provider, GOOD, closed=2)
        assert emulator.calls()["raw-call"].stopped


def test_clearing_the_faults_restores_normal_service(emulator):
    faults = emulator.faults
    faults.refuse_connections(503)
    faults.drop_after(1)
    faults.stall()
    faults.slow_reads(1.0)
    faults.fail_token_requests(503, count=10)
    faults.outage(start_s=0, duration_s=600)
    faults.clear()
    send_raw(emulator, provider_for(emulator), GOOD)
    assert emulator.calls()["raw-call"].stopped and emulator.violations() == []


@pytest.mark.parametrize(("text", "window"), [("0:5", (0.0, 5.0)), ("12.5:0.5", (12.5, 0.5))])
def test_the_outage_flag_parses(text, window):
    assert parse_outage(text) == window


@pytest.mark.parametrize("text", ["", "5", "a:b", "-1:5", "5:0", "5:-2"])
def test_a_bad_outage_flag_is_refused(text):
    with pytest.raises(ValueError, match="START:DURATION"):
        parse_outage(text)


def test_docstring_examples_run():
    assert doctest.testmod(emulators.cresta.server).failed == 0
