"""The delivery service over real sockets: adapters, token provider and Secrets Manager
(moto's server) against the Cresta emulator, healthy and with faults injected.

Chunks are tagged by their audio: chunk ``n`` is 100 ms of the one sample value whose
μ-law code is ``0xFE - n``, so every 20 ms frame Cresta received names its chunk, and
order and loss can be read off the received bytes."""

import json
import logging
import threading

import boto3
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from connectors.cresta import (
    CrestaDeliveryService,
    CrestaTokenProvider,
    SecretsManagerCredentials,
    StaticCredentials,
    WebSocketOptions,
    adapter_factory,
)
from connectors.cresta.auth import DEFAULT_MAX_RETRIES
from connectors.cresta.settings import CrestaSettings, create_delivery_service
from emulators.cresta import CrestaEmulator
from pipeline.assembler import AudioChunk, ContactInfo
from pipeline.audio import mulaw_to_pcm16, pcm16_to_mulaw
from pipeline.audit import DeliveryStatus
from pipeline.config import load_config
from pipeline.delivery_policy import BreakerState, PolicySettings
from pipeline.records import Track

SENT, DROPPED = DeliveryStatus.SENT, DeliveryStatus.DROPPED
CLIENT_ID = "emulated-client"
CLIENT_SECRET = "emulated-secret"
MEDIA_TOKEN = "emulated-media-token"
SAFETY_S = 30.0
FAST_TIMERS = {"backoff_base_ms": 5, "backoff_max_ms": 50, "breaker_cooldown_ms": 20, "backoff_jitter": 0.5}


def chunk(contact_id: str, seq: int, track: Track = Track.CUSTOMER) -> AudioChunk:
    pcm = mulaw_to_pcm16(bytes([0xFE - seq])) * 800
    info = ContactInfo("instance-1", "agent-1", "queue-1", {"queue": "billing"})
    return AudioChunk(contact_id, track, seq, 1_000 + 100 * seq, 8000, pcm, False, info, False, 1_000)


def seqs_received(audio: bytes) -> list[int]:
    """The chunk of every 20 ms μ-law frame received, in order of arrival."""
    return [0xFE - audio[offset] for offset in range(0, len(audio), 160)]


def collapse(seqs: list[int]) -> list[int]:
    return [s for i, s in enumerate(seqs) if i == 0 or seqs[i - 1] != s]


@pytest.fixture
def emulator():
    with CrestaEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, media_token=MEDIA_TOKEN) as running:
        yield running


@pytest.fixture
def make_service():
    services = []

    def make(url, tokens, settings=PolicySettings(), protocol="media_streams", options=WebSocketOptions()):
        service = CrestaDeliveryService(adapter_factory(protocol, url, MEDIA_TOKEN, tokens, options), settings)
        services.append(service)
        return service

    yield make
    for service in services:
        service.close(timeout_s=SAFETY_S)


def provider_for(emulator) -> CrestaTokenProvider:
    return CrestaTokenProvider(emulator.auth_url, StaticCredentials(CLIENT_ID, CLIENT_SECRET))


def drain_all(service) -> list:
    delivered = service.drain(SAFETY_S)
    assert service.outstanding == 0, "a chunk never got its receipt"
    return delivered


def statuses(delivered) -> list[tuple[int, DeliveryStatus]]:
    return [(d.chunk.seq, d.receipt.status) for d in delivered]


def stopped(emulator, contact_id: str) -> bool:
    record = emulator.calls().get(contact_id)
    return record is not None and record.stopped


def wait_for(condition, what: str) -> None:
    pause = threading.Event()
    for _ in range(int(SAFETY_S / 0.005)):
        if condition():
            return
        pause.wait(0.005)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.parametrize(("protocol", "url_of"), [("media_streams", "ws_url"), ("l16", "l16_url")])
def test_both_protocols_carry_contacts_exactly_and_conformantly(emulator, make_service, protocol, url_of):
    service = make_service(getattr(emulator, url_of), provider_for(emulator), protocol=protocol)
    contacts = ["contact-a", "contact-b"]
    for seq in range(20):
        for contact in contacts:
            service.submit(chunk(contact, seq, Track.CUSTOMER))
            service.submit(chunk(contact, seq + 30, Track.AGENT))
    for contact in contacts:
        service.close_contact(contact)
    delivered = drain_all(service)
    assert {status for _, status in statuses(delivered)} == {SENT}
    emulator.wait_connections_closed(2)
    assert emulator.violations() == []
    for contact in contacts:
        record = emulator.calls()[contact]
        assert record.stopped and len(record.call_ids) == 1
        assert record.tracks["inbound"] == b"".join(_wire(chunk(contact, s), protocol) for s in range(20))
        assert record.tracks["outbound"] == b"".join(
            _wire(chunk(contact, s + 30, Track.AGENT), protocol) for s in range(20)
        )


def _wire(sent: AudioChunk, protocol: str) -> bytes:
    return bytes([0xFE - sent.seq]) * 800 if protocol == "media_streams" else sent.pcm


def test_an_outage_is_ridden_out_buffered_audio_follows_and_order_holds():
    now = [0.0]
    with CrestaEmulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, media_token=MEDIA_TOKEN, clock=lambda: now[0]
    ) as emulator:
        service = CrestaDeliveryService(
            adapter_factory("media_streams", emulator.ws_url, MEDIA_TOKEN, provider_for(emulator)),
            # The outage bound from the first chunk on, however fast the failure is reported.
            PolicySettings(buffer_ms=1000, burst_ms=1000, breaker_threshold=2, **FAST_TIMERS),
        )
        try:
            for seq in range(5):
                service.submit(chunk("c", seq))
            assert statuses(drain_all(service)) == [(seq, SENT) for seq in range(5)]

            emulator.faults.outage(start_s=0, duration_s=60)
            emulator.wait_connections_closed(1)
            for seq in range(5, 20):
                service.submit(chunk("c", seq))
            wait_for(lambda: service.breaker_state is not BreakerState.CLOSED, "the breaker opens")
            during = service.poll_receipts()
            # 1 s of buffer holds chunks 5-14; nothing is SENT while Cresta is away.
            assert statuses(during) == [(seq, DROPPED) for seq in range(15, 20)]

            now[0] = 60.0
            after = drain_all(service)
            assert statuses(after) == [(seq, SENT) for seq in range(5, 15)]
            assert after[0].receipt.attempts == 2  # its first send met the closed stream
            for seq in range(20, 25):
                service.submit(chunk("c", seq))
            service.close_contact("c")
            assert statuses(drain_all(service)) == [(seq, SENT) for seq in range(20, 25)]
        finally:
            service.close(timeout_s=SAFETY_S)
        emulator.wait_connections_closed(2)
        record = emulator.calls()["c"]
        assert collapse(seqs_received(record.tracks["inbound"])) == list(range(15)) + list(range(20, 25))
        assert len(set(record.call_ids)) == 2 and record.stopped
        assert emulator.violations() == []


def test_streams_cut_every_few_messages_reconnect_with_new_call_ids_in_order(emulator, make_service):
    emulator.faults.drop_after(12)  # connected, start, then two chunks of five frames
    service = make_service(emulator.ws_url, provider_for(emulator), PolicySettings(**FAST_TIMERS))
    seq = 0
    while emulator.connections_opened < 4:
        service.submit(chunk("c", seq))
        assert statuses(drain_all(service)) == [(seq, SENT)]
        seq += 1
        assert seq < 100, "the cut streams were never reopened"
    service.close()
    wait_for(lambda: emulator.connections_closed == emulator.connections_opened, "every stream ends")
    record = emulator.calls()["c"]
    received = seqs_received(record.tracks["inbound"])
    # Sends into a socket the emulator has cut, before its reset arrives, are lost
    # (Media Streams has no acknowledgement): chunks may be missing, never out of order.
    assert received == sorted(received) and received[:10] == [0] * 5 + [1] * 5
    # The emulator counts a connection a moment after the client has it, so the loop
    # may send once more and open a fifth: each stream has its own CallId all the same.
    assert len(record.call_ids) == emulator.connections_opened >= 4
    assert len(set(record.call_ids)) == len(record.call_ids)
    assert emulator.violations() == []


def test_a_stalled_cresta_is_detected_and_delivery_resumes_in_order(emulator, make_service):
    options = WebSocketOptions(ping_interval_s=0.05, ping_timeout_s=0.1, send_timeout_s=0.5, close_timeout_s=0.5)
    service = make_service(emulator.ws_url, provider_for(emulator), PolicySettings(**FAST_TIMERS), options=options)
    service.submit(chunk("c", 0))
    assert statuses(drain_all(service)) == [(0, SENT)]
    wait_for(lambda: "c" in emulator.calls() and emulator.calls()["c"].tracks["inbound"], "chunk 0 is read")
    emulator.faults.stall()
    seq = 1
    # Audio keeps coming during the stall, as it would from a live call; the
    # keepalive notices the stall and the service opens a new stream.
    while emulator.connections_opened < 2:
        service.submit(chunk("c", seq))
        seq += 1
        assert seq < 120, "the stall was never noticed"
        threading.Event().wait(0.01)
    emulator.faults.resume()
    drain_all(service)
    tail = list(range(seq, seq + 5))
    for later in tail:
        service.submit(chunk("c", later))
    service.close_contact("c")
    assert statuses(drain_all(service)) == [(later, SENT) for later in tail]
    wait_for(lambda: stopped(emulator, "c"), "the last stream stops")
    received = seqs_received(emulator.calls()["c"].tracks["inbound"])
    assert received == sorted(received) and collapse(received)[-5:] == tail
    assert emulator.violations() == []


def test_a_slow_reader_costs_dropped_audio_not_memory_or_a_blocked_caller(emulator, make_service):
    emulator.faults.slow_reads(0.002)
    service = make_service(
        emulator.ws_url,
        provider_for(emulator),
        PolicySettings(buffer_ms=500, burst_ms=1000, **FAST_TIMERS),
        options=WebSocketOptions(write_limit=4096),
    )
    for seq in range(100):
        service.submit(chunk("c", seq))
        assert service.buffered_ms("c") <= 1000
    service.close_contact("c")
    delivered = drain_all(service)
    assert sorted(d.chunk.seq for d in delivered) == list(range(100))
    sent = [d.chunk.seq for d in delivered if d.receipt.status is SENT]
    wait_for(lambda: stopped(emulator, "c"), "the stream stops")
    assert collapse(seqs_received(emulator.calls()["c"].tracks["inbound"])) == sent
    assert emulator.violations() == []


def noise_chunk(contact_id: str, seq: int) -> AudioChunk:
    """One second of noise: too many chunks for ``chunk``'s tags, and barely compressible."""
    pcm = np.random.default_rng(seq).integers(-20000, 20000, 8000).astype("<i2").tobytes()
    return AudioChunk(contact_id, Track.CUSTOMER, seq, 1_000 * seq, 8000, pcm, False, ContactInfo(), False, 1_000)


#: How long a send may take before it counts as held up: far more than loopback needs
#: for one chunk, so only a full socket (a reader that stopped) holds a send this long.
HELD_UP_S = 2.0
#: Audio a stalled reader would have taken before anything pushed back, were nothing to:
#: about 50 MB on the wire, where loopback's buffers hold a few MB.
UNBOUNDED_CHUNKS = 3000


def test_a_stalled_reader_pushes_back_and_only_the_buffer_is_held(emulator, make_service):
    # No keepalive or send timeout: the stream stays up, so only backpressure acts.
    options = WebSocketOptions(ping_interval_s=600, ping_timeout_s=600, send_timeout_s=600)
    service = make_service(emulator.ws_url, provider_for(emulator), PolicySettings(buffer_ms=5000, **FAST_TIMERS),
                           options=options)
    service.submit(noise_chunk("c", 0))
    assert statuses(drain_all(service)) == [(0, SENT)]
    emulator.faults.stall()
    # The socket takes chunks while its buffers fill, then a send waits.
    seq = 1
    while True:
        service.submit(noise_chunk("c", seq))
        service.drain(HELD_UP_S)
        if service.outstanding:
            break
        seq += 1
        assert seq < UNBOUNDED_CHUNKS, "a stalled reader took every chunk: nothing pushes back"
    held_up = seq
    # Behind the waiting send, the buffer takes 4 s more; the rest is DROPPED at once.
    later = range(held_up + 1, held_up + 21)
    for seq in later:
        service.submit(noise_chunk("c", seq))
        assert service.buffered_ms("c") <= 5000
    assert statuses(service.poll_receipts()) == [(seq, DROPPED) for seq in later[4:]]

    emulator.faults.resume()
    assert statuses(drain_all(service)) == [(seq, SENT) for seq in range(held_up, held_up + 5)]
    # Cresta took audio again, so the contact stops dropping.
    service.submit(noise_chunk("c", later[-1] + 1))
    service.close_contact("c")
    assert statuses(drain_all(service)) == [(later[-1] + 1, SENT)]
    wait_for(lambda: stopped(emulator, "c"), "the stream stops")
    sent = [*range(held_up + 5), later[-1] + 1]
    assert emulator.calls()["c"].tracks["inbound"] == b"".join(pcm16_to_mulaw(noise_chunk("c", s).pcm) for s in sent)
    assert emulator.violations() == []


def test_a_token_endpoint_outage_is_ridden_out(emulator, make_service):
    # Two token fetches fail with every retry; the third answers.
    emulator.faults.fail_token_requests(503, count=2 * (DEFAULT_MAX_RETRIES + 1))
    tokens = CrestaTokenProvider(
        emulator.auth_url, StaticCredentials(CLIENT_ID, CLIENT_SECRET), retry_base_delay_s=0.001
    )
    service = make_service(emulator.ws_url, tokens, PolicySettings(**FAST_TIMERS))
    for seq in range(5):
        service.submit(chunk("c", seq))
    service.close_contact("c")
    assert statuses(drain_all(service)) == [(seq, SENT) for seq in range(5)]
    assert emulator.faults.next_token_failure() is None and emulator.token_requests == 1
    wait_for(lambda: stopped(emulator, "c"), "the stream stops")
    record = emulator.calls()["c"]
    assert collapse(seqs_received(record.tracks["inbound"])) == list(range(5)) and len(record.call_ids) == 1
    assert emulator.violations() == []


# --- a rotated secret, from Secrets Manager to the stream ----------------------------------


@pytest.fixture
def secrets_manager():
    server = ThreadedMotoServer(port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "secretsmanager",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-west-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    yield client
    server.stop()


def secret_text(client_secret: str) -> str:
    return json.dumps({"oauthClientId": CLIENT_ID, "oauthClientSecret": client_secret})


ROTATED = "rotated-secret"
ROTATED_AGAIN = "rotated-again-secret"


def test_a_rotated_secret_is_picked_up_without_a_restart_and_never_logged(
    emulator, make_service, secrets_manager, caplog
):
    with caplog.at_level(logging.WARNING):
        arn = secrets_manager.create_secret(Name="cresta-oauth", SecretString=secret_text(CLIENT_SECRET))["ARN"]
    caplog.set_level(logging.DEBUG)
    clock = [0.0]
    tokens = CrestaTokenProvider(
        emulator.auth_url, SecretsManagerCredentials(arn, secrets_manager), clock=lambda: clock[0]
    )
    service = make_service(emulator.ws_url, tokens, PolicySettings(**FAST_TIMERS))
    service.submit(chunk("before", 0))
    assert statuses(drain_all(service)) == [(0, SENT)]

    # Rotation, as a rotation Lambda does it: new secret value, Cresta trusts only it,
    # and the tokens of the old one stop working. The next stream's upgrade gets 401.
    with caplog.at_level(logging.WARNING):
        secrets_manager.put_secret_value(SecretId=arn, SecretString=secret_text(ROTATED))
    emulator.set_client_credentials(CLIENT_ID, ROTATED)
    emulator.revoke_tokens()
    service.submit(chunk("after-revocation", 1))
    assert statuses(drain_all(service)) == [(1, SENT)]

    # Rotated again while the cached token still works: the token endpoint's 401 when
    # the cache expires makes the provider read the secret again.
    with caplog.at_level(logging.WARNING):
        secrets_manager.put_secret_value(SecretId=arn, SecretString=secret_text(ROTATED_AGAIN))
    emulator.set_client_credentials(CLIENT_ID, ROTATED_AGAIN)
    clock[0] += 3600
    service.submit(chunk("after-expiry", 2))
    assert statuses(drain_all(service)) == [(2, SENT)]

    # SENT is handed to the socket; the emulator reads the last stream's start a moment later.
    calls = {"before", "after-revocation", "after-expiry"}
    wait_for(lambda: set(emulator.calls()) == calls, "every stream's start is read")
    assert emulator.token_requests == 3
    assert "renewing the token" in caplog.text and "reading the credentials again" in caplog.text
    for credential in [CLIENT_SECRET, ROTATED, ROTATED_AGAIN, MEDIA_TOKEN, *emulator.issued_tokens()]:
        assert credential not in caplog.text


@pytest.mark.parametrize(
    ("compression", "negotiated"), [(None, ("permessage-deflate",)), ("deflate", ("permessage-deflate",)), ("none", ())]
)
def test_the_service_built_from_the_job_s_config_delivers_and_closes(emulator, monkeypatch, compression, negotiated):
    monkeypatch.setenv("CRESTA_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("CRESTA_CLIENT_SECRET", CLIENT_SECRET)
    config = load_config(
        env={},
        overrides={
            "cresta.ws_url": emulator.ws_url,
            "cresta.auth_url": emulator.auth_url,
            "cresta.media_token": MEDIA_TOKEN,
            "cresta.attribute_allowlist": "queue",
            **({"cresta.compression": compression} if compression else {}),
        },
    )
    service = create_delivery_service(CrestaSettings.from_config(config))
    try:
        for seq in range(3):
            service.submit(chunk("job-contact", seq))
        service.close_contact("job-contact")
        delivered = drain_all(service)
    finally:
        service.close()
    assert statuses(delivered) == [(seq, SENT) for seq in range(3)]
    assert [d.receipt.attempts for d in delivered] == [1] * 3
    emulator.wait_connections_closed(1)
    record = emulator.calls()["job-contact"]
    assert record.stopped and record.custom_parameters["queue"] == "billing"
    assert collapse(seqs_received(record.tracks["inbound"])) == [0, 1, 2]
    assert record.stream_extensions == [negotiated]
    assert emulator.violations() == []
