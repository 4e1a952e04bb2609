import doctest
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.l16_stream
from pipeline.l16_stream import HEADER, MAGIC, L16Receiver, L16Sender, L16StateError
from pipeline.media_streams import Media, Start, Stop
from pipeline.records import Track

TOKEN = "media-token"
PARAMETERS = {"CallId": "contact-1-1700000000000", "Token": TOKEN, "ParticipantMode": "agent"}


def new_sender() -> L16Sender:
    return L16Sender("L16-stream", "instance-1", "contact-1", PARAMETERS)


def tone(samples: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(-32768, 32768, samples).astype("<i2").tobytes()


def good_stream() -> list[str | bytes]:
    """start, customer frame, agent frame, customer frame, stop."""
    sender = new_sender()
    return (
        sender.start_messages()
        + sender.media_messages("customer", tone(800))
        + sender.media_messages("agent", tone(300, seed=1))
        + sender.media_messages(Track.CUSTOMER, tone(160, seed=2))
        + sender.stop_messages()
    )


def feed(messages, expected_token=TOKEN) -> L16Receiver:
    receiver = L16Receiver(expected_token)
    for message in messages:
        if isinstance(message, str):
            receiver.receive_text(message)
        else:
            receiver.receive_bytes(message)
    return receiver


def test_docstring_examples_run():
    assert doctest.testmod(pipeline.l16_stream).failed == 0


def test_start_announces_little_endian_l16_and_the_custom_parameters():
    (start,) = new_sender().start_messages()
    assert json.loads(start) == {
        "event": "start",
        "protocol": "cresta-l16",
        "version": "1",
        "start": {
            "accountSid": "instance-1",
            "callSid": "contact-1",
            "streamSid": "L16-stream",
            "tracks": ["inbound", "outbound"],
            "customParameters": PARAMETERS,
            "mediaFormat": {
                "encoding": "audio/L16",
                "sampleRate": 8000,
                "channels": 1,
                "byteOrder": "little-endian",
            },
        },
    }


def test_frames_carry_track_sequence_and_sample_offset_then_the_pcm_unchanged():
    sender = new_sender()
    sender.start_messages()
    customer, agent = tone(8000 + 10), tone(5, seed=1)
    frames = sender.media_messages("customer", customer) + sender.media_messages("agent", agent)
    headers = [HEADER.unpack(frame[: HEADER.size]) for frame in frames]
    assert headers == [(MAGIC, 1, 0, 1, 0), (MAGIC, 1, 0, 2, 8000), (MAGIC, 1, 1, 3, 0)]
    assert b"".join(f[HEADER.size :] for f in frames[:2]) == customer
    assert frames[2][HEADER.size :] == agent


def test_the_sender_refuses_to_be_used_out_of_order_or_with_half_samples():
    sender = new_sender()
    with pytest.raises(L16StateError):
        sender.media_messages("customer", tone(1))
    sender.start_messages()
    with pytest.raises(L16StateError):
        sender.start_messages()
    with pytest.raises(ValueError, match="even number of bytes"):
        sender.media_messages("customer", b"\x00")
    sender.stop_messages()
    with pytest.raises(L16StateError):
        sender.stop_messages()


def test_a_good_stream_has_no_violations_and_keeps_every_sample():
    receiver = L16Receiver(TOKEN)
    events = []
    for message in good_stream():
        events += receiver.receive_text(message) if isinstance(message, str) else receiver.receive_bytes(message)
    assert receiver.violations == []
    assert [type(e) for e in events] == [Start, Media, Media, Media, Stop]
    assert receiver.stopped
    assert receiver.audio("inbound") == tone(800) + tone(160, seed=2)
    assert receiver.audio("outbound") == tone(300, seed=1)
    assert [(e.track, e.chunk, e.timestamp_ms) for e in events if isinstance(e, Media)] == [
        ("inbound", 1, 0),
        ("outbound", 1, 0),
        ("inbound", 2, 100),
    ]


GOOD = good_stream()


def with_start(change) -> list:
    start = json.loads(GOOD[0])
    change(start)
    return [json.dumps(start)] + GOOD[1:]


def with_frame(index: int, payload: bytes | None = None, **header) -> list:
    """The good stream with message ``index`` (a frame, 1..3) given other header fields
    (magic, version, track, sequence, offset) or another payload."""
    frame = GOOD[index]
    fields = dict(zip(("magic", "version", "track", "sequence", "offset"), HEADER.unpack_from(frame)))
    fields.update(header)
    messages = list(GOOD)
    messages[index] = HEADER.pack(*fields.values()) + (frame[HEADER.size :] if payload is None else payload)
    return messages


BREACHES = {
    "binary-before-start": (GOOD[1:], "binary frame while awaiting start"),
    "text-media": (GOOD[:1] + ['{"event": "media"}'], "unknown text event 'media'"),
    "not-json": (GOOD[:1] + ["{"], "not valid JSON"),
    "start-twice": (GOOD[:1] + GOOD[:1], "start: received while streaming"),
    "after-stop": (GOOD + GOOD[1:2], "message after stop"),
    "stop-before-start": ([GOOD[-1]], "stop: received before start"),
    "protocol": (with_start(lambda m: m.update(protocol="cresta-l8")), "protocol 'cresta-l8'"),
    "media-format": (
        with_start(lambda m: m["start"]["mediaFormat"].update(byteOrder="big-endian")),
        "mediaFormat is",
    ),
    "no-call-sid": (with_start(lambda m: m["start"].pop("callSid")), "start.callSid is missing"),
    "tracks": (with_start(lambda m: m["start"].update(tracks=["both"])), "start.tracks"),
    "token": (
        with_start(lambda m: m["start"]["customParameters"].update(Token="x")),
        "Token does not match",
    ),
    "short-header": (GOOD[:1] + [b"CL16\x01"], "shorter than the 14-byte header"),
    "magic": (with_frame(1, magic=b"RIFF"), "frame header starts b'RIFF'"),
    "version": (with_frame(1, version=2), "version 2"),
    "track": (with_frame(1, track=2), "frame track 2"),
    "odd-payload": (with_frame(1, payload=b"\x00" * 3), "is 3 bytes"),
    "empty-payload": (with_frame(1, payload=b""), "is 0 bytes"),
    "oversized-payload": (with_frame(1, payload=bytes(16002)), "is 16002 bytes"),
    "sequence": (with_frame(2, sequence=5), "sequence number 5 follows 1"),
    "offset-gap": (with_frame(3, offset=900), "at sample 900, expected 800"),
    "stop-mismatch": (
        GOOD[:-1] + [json.dumps({"event": "stop", "stop": {"accountSid": "instance-1", "callSid": "x", "streamSid": "L16-stream"}})],
        "differ from those in start",
    ),
}


@pytest.mark.parametrize(("messages", "expected"), BREACHES.values(), ids=list(BREACHES))
def test_each_breach_is_reported(messages, expected):
    receiver = feed(messages)
    assert any(expected in violation for violation in receiver.violations), receiver.violations


def test_violations_never_quote_the_token():
    receiver = feed(with_start(lambda m: m["start"]["customParameters"].update(Token="guess")))
    assert TOKEN not in " ".join(receiver.violations) and "guess" not in " ".join(receiver.violations)


chunkings = st.lists(st.tuples(st.sampled_from(["customer", "agent"]), st.integers(0, 9000)), max_size=12)


@settings(max_examples=40, deadline=None)
@given(chunkings)
def test_any_chunking_arrives_as_the_same_pcm_with_no_violations(chunks):
    sender = new_sender()
    sent = {"customer": b"", "agent": b""}
    messages = sender.start_messages()
    for index, (track, samples) in enumerate(chunks):
        audio = tone(samples, seed=index)
        sent[track] += audio
        messages += sender.media_messages(track, audio)
    messages += sender.stop_messages()
    receiver = feed(messages)
    assert receiver.violations == [] and receiver.stopped
    assert receiver.audio("inbound") == sent["customer"]
    assert receiver.audio("outbound") == sent["agent"]
