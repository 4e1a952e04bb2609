import base64
import doctest
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.media_streams
from pipeline.audio import pcm16_to_mulaw
from pipeline.media_streams import (
    FRAME_BYTES,
    Connected,
    Media,
    MediaStreamsReceiver,
    MediaStreamsSender,
    MediaStreamsStateError,
    ReceiverState,
    Start,
    Stop,
)
from pipeline.records import Track

STREAM_SID = "MZ" + "ab" * 16
TOKEN = "media-token"
PARAMETERS = {"CallId": "contact-1-1700000000000", "Token": TOKEN, "ParticipantMode": "agent"}


def new_sender(parameters=PARAMETERS) -> MediaStreamsSender:
    return MediaStreamsSender(STREAM_SID, "instance-1", "contact-1", parameters)


def tone(samples: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(-32768, 32768, samples).astype("<i2").tobytes()


def decoded(messages: list[str]) -> list[dict]:
    return [json.loads(m) for m in messages]


def good_stream() -> list[str]:
    """connected, start, two customer frames, one agent frame (padded), stop."""
    sender = new_sender()
    return (
        sender.start_messages()
        + sender.media_messages("customer", tone(320))
        + sender.media_messages("agent", tone(100, seed=1))
        + sender.stop_messages()
    )


def feed(messages: list[str], expected_token: str | None = TOKEN) -> MediaStreamsReceiver:
    receiver = MediaStreamsReceiver(expected_token)
    for message in messages:
        receiver.receive_text(message)
    return receiver


# --- sender -------------------------------------------------------------------------------


def test_start_messages_follow_twilio_exactly():
    connected, start = decoded(new_sender().start_messages())
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": STREAM_SID,
        "start": {
            "accountSid": "instance-1",
            "callSid": "contact-1",
            "streamSid": STREAM_SID,
            "tracks": ["inbound", "outbound"],
            "customParameters": PARAMETERS,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }


def test_media_is_mulaw_in_160_byte_frames_numbered_per_track_and_overall():
    sender = new_sender()
    sender.start_messages()
    customer = tone(400)
    agent = tone(160, seed=1)
    messages = decoded(
        sender.media_messages("customer", customer) + sender.media_messages("agent", agent)
    )
    assert [m["sequenceNumber"] for m in messages] == ["2", "3", "4"]
    media = [m["media"] for m in messages]
    assert [(m["track"], m["chunk"], m["timestamp"]) for m in media] == [
        ("inbound", "1", "0"),
        ("inbound", "2", "20"),
        ("outbound", "1", "0"),
    ]
    assert all(m["event"] == "media" and m["streamSid"] == STREAM_SID for m in messages)
    payloads = [base64.b64decode(m["media"]["payload"]) for m in messages]
    assert payloads[0] + payloads[1] == pcm16_to_mulaw(customer)[:320]
    assert payloads[2] == pcm16_to_mulaw(agent)
    assert sender.pending_bytes("customer") == 80 and sender.pending_bytes("agent") == 0


def test_a_remainder_waits_for_the_next_chunk_of_its_own_track():
    sender = new_sender()
    sender.start_messages()
    first, second = tone(100), tone(100, seed=2)
    assert sender.media_messages(Track.CUSTOMER, first) == []
    assert sender.media_messages(Track.AGENT, tone(50, seed=3)) == []
    (message,) = decoded(sender.media_messages(Track.CUSTOMER, second))
    assert base64.b64decode(message["media"]["payload"]) == pcm16_to_mulaw(first + second)[:160]
    assert sender.pending_bytes(Track.CUSTOMER) == 40 and sender.pending_bytes(Track.AGENT) == 50


def test_flush_pads_the_partial_frame_with_mulaw_silence():
    sender = new_sender()
    sender.start_messages()
    audio = tone(30)
    sender.media_messages("agent", audio)
    (message,) = decoded(sender.flush_messages("agent"))
    assert base64.b64decode(message["media"]["payload"]) == pcm16_to_mulaw(audio) + b"\xff" * 130
    assert sender.flush_messages("agent") == []
    assert sender.flush_messages("customer") == []


def test_stop_flushes_both_tracks_then_stops():
    sender = new_sender()
    sender.start_messages()
    sender.media_messages("agent", tone(10))
    sender.media_messages("customer", tone(170))
    messages = decoded(sender.stop_messages())
    assert [(m["event"], m.get("media", {}).get("track")) for m in messages] == [
        ("media", "inbound"),
        ("media", "outbound"),
        ("stop", None),
    ]
    assert messages[0]["media"]["chunk"] == "2" and messages[0]["media"]["timestamp"] == "20"
    assert messages[-1] == {
        "event": "stop",
        "sequenceNumber": "5",
        "streamSid": STREAM_SID,
        "stop": {"accountSid": "instance-1", "callSid": "contact-1"},
    }


def test_sender_refuses_to_be_used_out_of_order():
    sender = new_sender()
    with pytest.raises(MediaStreamsStateError):
        sender.media_messages("customer", tone(160))
    sender.start_messages()
    with pytest.raises(MediaStreamsStateError):
        sender.start_messages()
    sender.stop_messages()
    with pytest.raises(MediaStreamsStateError):
        sender.media_messages("customer", tone(160))
    with pytest.raises(MediaStreamsStateError):
        sender.stop_messages()


def test_sender_rejects_bad_input():
    sender = new_sender()
    sender.start_messages()
    with pytest.raises(ValueError, match="unknown track"):
        sender.media_messages("supervisor", tone(160))
    with pytest.raises(ValueError, match="even number of bytes"):
        sender.media_messages("customer", b"\x00")
    with pytest.raises(TypeError):
        MediaStreamsSender(STREAM_SID, "a", "c", {"Attempt": 2})


def test_docstring_examples_run():
    assert doctest.testmod(pipeline.media_streams).failed == 0


# --- receiver ------------------------------------------------------------------------------


def test_a_good_stream_has_no_violations_and_keeps_every_byte():
    receiver = MediaStreamsReceiver(TOKEN)
    events = [event for message in good_stream() for event in receiver.receive_text(message)]
    assert receiver.violations == []
    assert [type(e) for e in events] == [Connected, Start, Media, Media, Media, Stop]
    assert receiver.stopped and receiver.state is ReceiverState.STOPPED
    assert (receiver.call_sid, receiver.stream_sid) == ("contact-1", STREAM_SID)
    assert receiver.custom_parameters == PARAMETERS
    assert receiver.audio("inbound") == pcm16_to_mulaw(tone(320))
    assert receiver.audio("outbound") == pcm16_to_mulaw(tone(100, seed=1)) + b"\xff" * 60
    assert receiver.media_count == 3


def test_no_expected_token_accepts_any_token():
    assert feed(good_stream(), expected_token=None).violations == []


DELETE = object()
#: connected=0, start=1, media 2-4 (inbound 1, inbound 2, outbound 1), stop=5
GOOD = good_stream()


def mutate(index: int, path: str, value) -> list[str]:
    """The good stream with one field of message ``index`` set, or removed with ``DELETE``."""
    messages = list(GOOD)
    message = json.loads(messages[index])
    *parents, leaf = path.split(".")
    target = message
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    messages[index] = json.dumps(message)
    return messages


SHORT_PAYLOAD = base64.b64encode(bytes(80)).decode()
BREACHES = {
    "no-connected": (GOOD[1:], "'start' received while awaiting connected"),
    "media-before-start": ([GOOD[0], GOOD[2]], "'media' received while awaiting start"),
    "connected-twice": (GOOD[:2] + [GOOD[0]], "'connected' received while streaming"),
    "after-stop": (GOOD + [GOOD[2]], "message after stop"),
    "not-json": (GOOD[:2] + ["{not json"], "not valid JSON"),
    "not-object": (GOOD[:2] + ["[1, 2]"], "not a JSON object"),
    "unknown-event": (GOOD[:2] + ['{"event": "hangup"}'], "unknown event 'hangup'"),
    "protocol": (mutate(0, "protocol", "Stream"), "protocol is 'Stream'"),
    "no-callsid": (mutate(1, "start.callSid", DELETE), "start.callSid is missing"),
    "int-sequence": (mutate(1, "sequenceNumber", 1), "sequenceNumber is int 1"),
    "tracks": (mutate(1, "start.tracks", ["both"]), "start.tracks"),
    "params": (mutate(1, "start.customParameters", {"Token": 5}), "customParameters must"),
    "inner-sid": (mutate(1, "start.streamSid", "MZother"), "start.streamSid differs"),
    "sample-rate": (mutate(1, "start.mediaFormat.sampleRate", 16000), "mediaFormat is"),
    "encoding": (mutate(1, "start.mediaFormat.encoding", "audio/l16"), "mediaFormat is"),
    "bool-channels": (mutate(1, "start.mediaFormat.channels", True), "mediaFormat is"),
    "token-mismatch": (mutate(1, "start.customParameters.Token", "wrong"), "Token does not match"),
    "token-missing": (mutate(1, "start.customParameters.Token", DELETE), "Token is missing"),
    "base64": (mutate(2, "media.payload", "***"), "not valid base64"),
    "no-payload": (mutate(2, "media.payload", DELETE), "media.payload is missing"),
    "short-payload": (mutate(2, "media.payload", SHORT_PAYLOAD), "is 80 bytes, expected 160"),
    "track-name": (mutate(2, "media.track", "inbound_track"), "media.track is"),
    "chunk-skip": (mutate(2, "media.chunk", "2"), "chunk 2 on inbound follows chunk 0"),
    "chunk-repeat": (mutate(3, "media.chunk", "1"), "chunk 1 on inbound follows chunk 1"),
    "chunk-negative": (mutate(2, "media.chunk", "-1"), "expected a decimal string"),
    "timestamp": (mutate(3, "media.timestamp", "0"), "timestamp 0 on inbound does not increase"),
    "sequence-gap": (mutate(3, "sequenceNumber", "7"), "sequenceNumber 7 follows 2"),
    "stream-sid": (mutate(2, "streamSid", "MZother"), "differs from the started stream"),
    "stop-call": (mutate(5, "stop.callSid", "contact-2"), "differ from those in start"),
}


@pytest.mark.parametrize(("messages", "expected"), BREACHES.values(), ids=list(BREACHES))
def test_each_breach_is_reported(messages, expected):
    receiver = feed(messages)
    assert any(expected in violation for violation in receiver.violations), receiver.violations


def test_violations_name_the_message_and_never_quote_the_token():
    receiver = feed(mutate(1, "start.customParameters.Token", "leaked-guess"))
    assert receiver.violations == [
        "message 2: start: customParameters.Token does not match the expected token"
    ]
    assert TOKEN not in " ".join(receiver.violations)


def test_a_binary_frame_is_a_violation():
    receiver = MediaStreamsReceiver(TOKEN)
    assert receiver.receive_bytes(b"\x00\x01") == []
    assert receiver.violations == [
        "message 1: binary frame of 2 bytes; Media Streams messages are JSON text"
    ]


def test_an_unusable_message_is_dropped_and_a_misnumbered_one_is_kept():
    receiver = feed(mutate(2, "media.payload", "***"))
    assert len(receiver.audio("inbound")) == 160
    receiver = feed(mutate(2, "media.chunk", "5"))
    assert len(receiver.audio("inbound")) == 320


def test_a_start_without_connected_still_starts_the_stream():
    receiver = feed(GOOD[1:])
    assert len(receiver.violations) == 1
    assert receiver.call_sid == "contact-1" and receiver.stopped


def test_media_on_a_track_not_announced_is_reported():
    receiver = feed(mutate(1, "start.tracks", ["inbound"]))
    assert any("track 'outbound' was not announced" in v for v in receiver.violations)


# --- round trip ---------------------------------------------------------------------------

chunkings = st.lists(
    st.tuples(st.sampled_from(["customer", "agent"]), st.integers(0, 700)), max_size=25
)


@settings(max_examples=60, deadline=None)
@given(chunkings, st.booleans())
def test_any_chunking_arrives_as_the_same_mulaw_with_no_violations(chunks, stop_with_flush):
    sender = new_sender()
    sent = {"customer": bytearray(), "agent": bytearray()}
    messages = sender.start_messages()
    for index, (track, samples) in enumerate(chunks):
        audio = tone(samples, seed=index)
        sent[track] += audio
        messages += sender.media_messages(track, audio)
    if stop_with_flush:
        messages += sender.flush_messages("agent")
    messages += sender.stop_messages()

    receiver = feed(messages)

    assert receiver.violations == []
    assert receiver.stopped
    for track, twilio_track in (("customer", "inbound"), ("agent", "outbound")):
        expected = pcm16_to_mulaw(bytes(sent[track]))
        expected += b"\xff" * (-len(expected) % FRAME_BYTES)
        assert receiver.audio(twilio_track) == expected
