"""What users of other Amazon Connect audio consumers complain about, one test each.

The list is in the project's reference notes on Connect and KVS ("What users of existing
consumers complain about", from the issues of AWS's sample consumers). Each test plays
the situation behind a complaint on the local stack — moto over HTTP, the KVS media
emulator with KVS's semantics, a real connector worker — or, for the silence complaint,
through the pipeline's own assembler and Media Streams sender, and checks that the
symptom does not appear here.
"""

from __future__ import annotations

import threading

import pytest

from connectors.connect.handler import contact_event_handler
from connectors.kinesis.reader import read_all_records
from connectors.kvs.checkpoints import CheckpointStore
from connectors.kvs.worker import ReadSettings
from emulators.stack import LocalStack
from pipeline.assembler import AudioChunk, ContactAudioAssembler
from pipeline.media_streams import Media, MediaStreamsReceiver, MediaStreamsSender
from pipeline.records import AudioEnd, AudioFrame, Track, decode_audio_records
from stack_contacts import (
    CONTACT,
    OTHER_CONTACT,
    T0,
    WAIT_S,
    Contact,
    RecordingMediaSource,
    assert_exactly_once,
    assert_queues_empty,
    checkpoints,
    read_records,
    running_worker,
    token_selector,
    wait_until,
    write_live,
)


def live_call(stack: LocalStack, contact: Contact) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()
    writer = threading.Thread(target=write_live, args=(stack, contact, done))
    writer.start()
    return writer, done


def hang_up(writer: threading.Thread, done: threading.Event) -> None:
    done.set()
    writer.join(WAIT_S)


def test_complaints_1_and_2_a_long_call_spans_many_get_media_sessions_without_a_gap(make_stack):
    """A consumer with a time limit of its own (a 15-minute Lambda) cuts long calls, and
    KVS ends every GetMedia session after about 45 minutes. Here sessions end every
    0.4 s, never by idleness, and the worker goes on from each session's last
    continuation token."""
    stack = make_stack(kvs_session_limit_s=0.4, kvs_idle_timeout_s=30)
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 1)
    contact.queue(stack)
    source = RecordingMediaSource(stack)
    writer, done = live_call(stack, contact)
    try:
        with running_worker(stack, source, ReadSettings(max_idle_s=1.0)):
            wait_until(lambda: len(source.selectors) >= 4, "three reconnections")
            hang_up(writer, done)
            records = read_records(stack, {CONTACT})
    finally:
        hang_up(writer, done)
    assert_exactly_once(records, contact)
    assert all(s["StartSelectorType"] == "CONTINUATION_TOKEN" for s in source.selectors[1:])
    assert {s["ContinuationToken"] for s in source.selectors[1:]} <= set(contact.numbers)


@pytest.mark.parametrize("earlier_fragments", [0, 3], ids=["new-stream", "reused-stream"])
def test_complaint_3_a_one_fragment_call_keeps_its_first_fragment(make_stack, earlier_fragments):
    """Readers that pass Connect's StartFragmentNumber as AfterFragmentNumber lose the
    contact's first fragment, so short calls come out empty. A call of a single fragment,
    on a stream that may hold an earlier contact's audio, arrives whole and alone."""
    stack = make_stack()
    stream_arn = stack.kvs_stream_arns[0]
    earlier = Contact(OTHER_CONTACT, stream_arn)
    earlier.put(stack, earlier_fragments)
    contact = Contact(CONTACT, stream_arn, first_index=earlier_fragments)
    contact.put(stack, 1)
    contact.queue(stack)
    with running_worker(stack, RecordingMediaSource(stack), ReadSettings(max_idle_s=0.5)):
        records = read_records(stack, {CONTACT})
    assert_exactly_once(records, contact)
    assert {r.contact_id for r in records} == {CONTACT}, "another contact's audio leaked"


def test_complaint_4_tracks_are_never_mixed_and_a_reconnect_repeats_nothing(make_stack):
    """Mixing up the tracks makes choppy or sped-up audio; a reader that replays what
    it read before stutters. Connect's track numbers here are the other way round from
    the usual, the customer track has the legacy name, and the first connection breaks
    in the middle of a fragment."""
    stack = make_stack()
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 4, customer_track_number=2, agent_track_number=1, customer_track_name="Track_audio/L16")
    stack.kvs.cut_next_get_media(contact.stream_arn, after_fragments=2)
    contact.queue(stack)
    source = RecordingMediaSource(stack)
    with running_worker(stack, source, ReadSettings(max_idle_s=0.5)) as worker:
        records = read_records(stack, {CONTACT})
    assert_exactly_once(records, contact)
    assert source.selectors[1] == token_selector(contact.numbers[1])
    assert worker.contacts_handed_back == 0


def test_complaint_5_a_silent_track_keeps_streaming_20_ms_frames_to_cresta():
    """Speech recognisers give up after ~15 s without input on a channel, so consumers
    that drop silence send keep-alives. Connect streams silence as audio; the pipeline
    forwards it like any audio: 20 s of a silent customer track leave as a media
    message every 20 ms, μ-law silence, with no gap in the timestamps."""
    seconds, frame_ms = 20, 125
    samples = 8000 * frame_ms // 1000
    assembler = ContactAudioAssembler(CONTACT, chunk_ms=100, enrich_max_wait_ms=0)
    chunks: list[AudioChunk] = []
    for index in range(seconds * 1000 // frame_ms):
        for track, pcm in ((Track.CUSTOMER, bytes(2 * samples)), (Track.AGENT, b"\x10\x20" * samples)):
            frame = AudioFrame(CONTACT, track, str(1000 + index), 0, T0 + index * frame_ms, 8000, pcm)
            chunks += [c for c in assembler.on_frame(frame, now_ms=T0 + index * frame_ms) if isinstance(c, AudioChunk)]
    frames = seconds * 1000 // frame_ms
    end = AudioEnd.from_totals(
        CONTACT, str(1000 + frames - 1), T0 + seconds * 1000,
        {track: seconds * 8000 for track in Track}, {track: frames for track in Track}, "contact_ended",
    )
    chunks += [c for c in assembler.on_end(end, now_ms=T0 + seconds * 1000) if isinstance(c, AudioChunk)]

    sender = MediaStreamsSender("MZ" + "0" * 32, "AC" + "0" * 32, CONTACT, {})
    messages = sender.start_messages()
    for chunk in chunks:
        messages += sender.media_messages(chunk.track, chunk.pcm)
    messages += sender.stop_messages()
    receiver = MediaStreamsReceiver(expected_token=None)
    received = [event for message in messages for event in receiver.receive_text(message)]

    inbound = [event for event in received if isinstance(event, Media) and event.track == "inbound"]
    assert len(inbound) == seconds * 1000 // 20
    assert [event.timestamp_ms for event in inbound] == [20 * i for i in range(len(inbound))]
    assert receiver.audio("inbound") == b"\xff" * (seconds * 8000)
    assert receiver.stopped


def test_complaint_6_frames_reach_kds_while_the_call_is_live_and_end_with_the_disconnect(
    make_stack, monkeypatch
):
    """Multi-second latency comes from consumers that wait for more than a fragment, and
    the ~3 s end-of-stream delay from waiting out KVS's end of body. Here a fragment is
    in KDS while its GetMedia connection is still open, and once Connect reports the
    contact DISCONNECTED (through the contact-events Lambda) the worker ends it when the
    body ends, long before its one-minute idle limit."""
    # Bodies of a live call must not end between fragments, even on a busy machine.
    stack = make_stack(kvs_idle_timeout_s=2.0)
    monkeypatch.setenv("CONTACT_EVENTS_STREAM", stack.settings.contact_events_stream)
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 1)
    contact.queue(stack)
    source = RecordingMediaSource(stack)
    store: CheckpointStore = checkpoints(stack)
    writer, done = live_call(stack, contact)
    try:
        with running_worker(stack, source, ReadSettings(max_idle_s=60)):
            wait_until(lambda: len(contact.numbers) >= 4, "a live call")
            third = contact.numbers[2]
            wait_until(lambda: frames_of_fragment_in_kds(stack, third), "the third fragment in KDS")
            assert len(source.selectors) == 1, "published while the first connection is open"
            hang_up(writer, done)
            disconnected = {"detail": {"eventType": "DISCONNECTED", "contactId": CONTACT}}
            assert contact_event_handler(disconnected, kinesis=stack.client("kinesis"), checkpoints=store)[
                "status"
            ] == "OK"
            records = read_records(stack, {CONTACT})
    finally:
        hang_up(writer, done)
    assert_exactly_once(records, contact, reason="contact_ended")
    assert store.contact_ended_at_ms(CONTACT) > 0
    assert_queues_empty(stack)


def frames_of_fragment_in_kds(stack: LocalStack, fragment_number: str) -> bool:
    records = read_all_records(stack.client("kinesis"), stack.settings.audio_frames_stream)
    return any(
        isinstance(r, AudioFrame) and r.fragment_number == fragment_number
        for record in records
        for r in decode_audio_records(record["Data"])
    )


def test_complaint_7_a_live_call_whose_connection_breaks_keeps_flowing_to_the_end(make_stack):
    """Transcription stops mid-call when a consumer does not survive a broken
    connection. Here the live call's connection breaks mid-fragment twice; the worker
    reconnects from its last whole fragment each time."""
    stack = make_stack()
    contact = Contact(CONTACT, stack.kvs_stream_arns[0])
    contact.put(stack, 1)
    contact.queue(stack)
    stack.kvs.cut_next_get_media(contact.stream_arn, after_fragments=2)
    stack.kvs.cut_next_get_media(contact.stream_arn, after_fragments=1)
    source = RecordingMediaSource(stack)
    writer, done = live_call(stack, contact)
    try:
        with running_worker(stack, source, ReadSettings(max_idle_s=1.0)) as worker:
            wait_until(lambda: len(source.selectors) >= 3 and len(contact.numbers) >= 8, "two broken connections")
            hang_up(writer, done)
            records = read_records(stack, {CONTACT})
    finally:
        hang_up(writer, done)
    assert_exactly_once(records, contact)
    assert worker.contacts_handed_back == 0


def test_complaint_8_one_connection_per_contact_and_one_endpoint_lookup_per_stream(make_stack):
    """Readers that open a connection per track burn KVS's limit of three per stream,
    and ones that ask GetDataEndpoint per read get ClientLimitExceededException. Here
    the emulator allows a single GetMedia connection per stream, two contacts follow
    each other on the stream, one connection breaks, and GetDataEndpoint is asked once."""
    stack = make_stack(kvs_max_connections_per_stream=1)
    stream_arn = stack.kvs_stream_arns[0]
    first = Contact(OTHER_CONTACT, stream_arn)
    first.put(stack, 3)
    second = Contact(CONTACT, stream_arn, first_index=3)
    second.put(stack, 3)
    stack.kvs.cut_next_get_media(stream_arn, after_fragments=1)
    first.queue(stack)
    control = stack.client("kinesisvideo")
    endpoint_lookups: list[str] = []
    control.meta.events.register(
        "before-parameter-build.kinesis-video.GetDataEndpoint",
        lambda params, **_: endpoint_lookups.append(params["StreamARN"]),
    )
    source = RecordingMediaSource(stack, control)
    with running_worker(stack, source, ReadSettings(max_idle_s=0.5)) as worker:
        read_records(stack, {OTHER_CONTACT})
        second.queue(stack)
        records = read_records(stack, {OTHER_CONTACT, CONTACT})
    assert_exactly_once(records, first, reason="contact_changed")
    assert_exactly_once(records, second)
    assert worker.contacts_handed_back == 0
    assert endpoint_lookups == [stream_arn]
