"""Record codecs (DESIGN §4): round trips, and every way a reader refuses a record.

A reader in the Flink job or a connector worker catches ``RecordError`` and sends the
record to the error output (DESIGN §5, "Bad input"). Any other exception escaping a
decoder fails the job or the worker, so the error-path tests below also check that
nothing but ``RecordError`` comes out.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.records import (
    AUDIO_BATCH_MAGIC,
    AUDIO_FRAME_MAGIC,
    AUDIO_FRAME_VERSION,
    CONTACT_EVENT_SCHEMA,
    CONTACT_WORK_SCHEMA,
    MAX_ATTRIBUTES_BYTES,
    MAX_CONTACT_ID_BYTES,
    MAX_FRAGMENT_NUMBER_LENGTH,
    AudioEnd,
    AudioFrame,
    ContactEvent,
    ContactWork,
    EventType,
    FrameKind,
    RecordError,
    Track,
    decode_audio_record,
    decode_audio_records,
    encode_frame_batches,
)

FAST = settings(max_examples=60, deadline=None)

CONTACT = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
FRAGMENT = "91343852333181432392682062622220590765191907586"
STREAM_ARN = "arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-pool-1/1690000000000"

# -- strategies ---------------------------------------------------------------------------

# 32 code points are at most 128 UTF-8 bytes, the contact id limit.
contact_ids = st.text(min_size=1, max_size=32)
fragment_numbers = st.from_regex(r"[0-9]{1,48}", fullmatch=True)
int64 = st.integers(-(2**63), 2**63 - 1)
uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)
pcm16 = st.binary(max_size=600).map(lambda b: b[: len(b) // 2 * 2])
attribute_maps = st.dictionaries(st.text(max_size=12), st.text(max_size=24), max_size=6)


def reason_of(call, *args) -> str:
    """Call a decoder that must refuse its input; return the RecordError's reason."""
    with pytest.raises(RecordError) as info:
        call(*args)
    assert info.value.reason in str(info.value)
    return info.value.reason


def frame(**changes) -> AudioFrame:
    fields = dict(
        contact_id=CONTACT,
        track=Track.AGENT,
        fragment_number=FRAGMENT,
        frame_index=7,
        producer_timestamp_ms=1726677688724,
        sample_rate=8000,
        pcm=bytes(range(64)),
    )
    fields.update(changes)
    return AudioFrame(**fields)


def end(**changes) -> AudioEnd:
    fields = dict(
        contact_id=CONTACT,
        last_fragment_number=FRAGMENT,
        producer_timestamp_ms=1726677699000,
        customer_samples=88000,
        agent_samples=87200,
        customer_frames=172,
        agent_frames=171,
        reason="end_of_contact",
    )
    fields.update(changes)
    return AudioEnd(**fields)


def event_body(**changes) -> dict:
    body = {
        "schema": CONTACT_EVENT_SCHEMA,
        "type": "STARTED",
        "contact_id": CONTACT,
        "instance_id": "d5b716a2-0000-4000-8000-000000000001",
        "event_time_ms": 1726677688000,
        "stream_arn": STREAM_ARN,
        "start_fragment_number": FRAGMENT,
        "start_timestamp_ms": 1726677688724,
        "attributes": {"lang": "en-US"},
        "agent_id": "",
        "queue_name": "Billing",
        "initiation_method": "INBOUND",
        "previous_contact_id": "",
    }
    body.update(changes)
    return body


def encoded(body: dict) -> bytes:
    return json.dumps(body).encode()


# -- round trips ---------------------------------------------------------------------------


@FAST
@given(
    contact_id=contact_ids,
    track=st.sampled_from(Track),
    fragment_number=fragment_numbers,
    frame_index=uint32,
    ts=int64,
    rate=st.integers(1, 2**32 - 1),
    pcm=pcm16,
)
def test_audio_frame_round_trip(contact_id, track, fragment_number, frame_index, ts, rate, pcm):
    original = AudioFrame(contact_id, track, fragment_number, frame_index, ts, rate, pcm)
    decoded = decode_audio_record(original.encode())
    assert decoded == original
    assert isinstance(decoded, AudioFrame)
    assert decoded.sample_count == len(pcm) // 2


@FAST
@given(
    contact_id=contact_ids,
    last_fragment=st.one_of(st.just(""), fragment_numbers),
    ts=int64,
    customer_samples=uint64,
    agent_samples=uint64,
    customer_frames=uint32,
    agent_frames=uint32,
    reason=st.text(max_size=60),
)
def test_audio_end_round_trip(
    contact_id, last_fragment, ts, customer_samples, agent_samples, customer_frames, agent_frames, reason
):
    original = AudioEnd(
        contact_id, last_fragment, ts, customer_samples, agent_samples, customer_frames, agent_frames, reason
    )
    decoded = decode_audio_record(original.encode())
    assert decoded == original
    assert decoded.samples(Track.CUSTOMER) == customer_samples
    assert decoded.samples(Track.AGENT) == agent_samples


@FAST
@given(
    event_type=st.sampled_from(EventType),
    contact_id=contact_ids,
    event_time_ms=int64,
    instance_id=st.text(max_size=40),
    stream_arn=st.text(max_size=80),
    start_fragment_number=st.one_of(st.just(""), fragment_numbers),
    start_timestamp_ms=int64,
    attributes=attribute_maps,
    agent_id=st.text(max_size=20),
    queue_name=st.text(max_size=20),
    initiation_method=st.sampled_from(["", "INBOUND", "OUTBOUND", "TRANSFER", "CALLBACK", "API"]),
    previous_contact_id=st.text(max_size=36),
)
def test_contact_event_round_trip(**fields):
    original = ContactEvent(type=fields.pop("event_type"), **fields)
    data = original.encode()
    assert json.loads(data)["schema"] == CONTACT_EVENT_SCHEMA
    assert ContactEvent.decode(data) == original
    # A Kinesis consumer may hand the record over as text as well as bytes.
    assert ContactEvent.decode(data.decode()) == original


@FAST
@given(
    contact_id=contact_ids,
    stream_arn=st.text(min_size=1, max_size=80),
    start_fragment_number=st.one_of(st.just(""), fragment_numbers),
    instance_id=st.text(max_size=40),
    start_timestamp_ms=int64,
)
def test_contact_work_round_trip(**fields):
    original = ContactWork(**fields)
    body = original.encode()
    assert json.loads(body)["schema"] == CONTACT_WORK_SCHEMA
    assert ContactWork.decode(body) == original
    assert ContactWork.decode(body.encode()) == original


def test_audio_frame_layout_is_the_header_then_the_pcm():
    pcm = bytes(range(64))
    record = frame(pcm=pcm).encode()
    # Only the sample count in the header depends on the PCM, not the header's length.
    assert record.endswith(pcm)
    assert len(record) == len(frame(pcm=b"").encode()) + len(pcm)
    assert record[:4] == AUDIO_FRAME_MAGIC
    assert record[4] == AUDIO_FRAME_VERSION
    assert record[5] == FrameKind.FRAME
    assert record[6] == Track.AGENT


# -- audio record errors -------------------------------------------------------------------


@pytest.mark.parametrize("record", [frame().encode(), end().encode()], ids=["frame", "end"])
def test_bad_magic(record):
    for magic in (b"XXXX", b"CXAG", b"\0\0\0\0", AUDIO_FRAME_MAGIC.lower()):
        assert reason_of(decode_audio_record, magic + record[4:]) == "bad_magic"


@pytest.mark.parametrize("record", [frame().encode(), end().encode()], ids=["frame", "end"])
@pytest.mark.parametrize("version", [0, AUDIO_FRAME_VERSION + 1, 255])
def test_unknown_audio_version(record, version):
    mutated = record[:4] + bytes([version]) + record[5:]
    assert reason_of(decode_audio_record, mutated) == "unknown_version"


def test_frame_truncated_at_every_prefix_length():
    record = frame().encode()
    header_length = len(frame(pcm=b"").encode())
    assert header_length < len(record)
    for n in range(len(record)):
        reason = reason_of(decode_audio_record, record[:n])
        # Inside the header the record is cut short; inside the PCM the header's sample
        # count no longer matches the payload.
        expected = "truncated" if n < header_length else "bad_length"
        assert reason == expected, f"prefix of {n} bytes"


@pytest.mark.parametrize("reason_text", ["", "end_of_contact"])
def test_end_truncated_at_every_prefix_length(reason_text):
    record = end(reason=reason_text).encode()
    for n in range(len(record)):
        assert reason_of(decode_audio_record, record[:n]) == "truncated", f"prefix of {n} bytes"


def test_frame_without_pcm_truncated_at_every_prefix_length():
    record = frame(pcm=b"").encode()
    assert decode_audio_record(record) == frame(pcm=b"")
    for n in range(len(record)):
        assert reason_of(decode_audio_record, record[:n]) == "truncated", f"prefix of {n} bytes"


def test_bad_length():
    record = frame().encode()
    assert reason_of(decode_audio_record, record + b"\0") == "bad_length"
    assert reason_of(decode_audio_record, record + b"\0\0") == "bad_length"
    assert reason_of(decode_audio_record, record[:-2]) == "bad_length"


@pytest.mark.parametrize("code", [2, 3, 127, 255])
def test_bad_track(code):
    record = frame().encode()
    assert reason_of(decode_audio_record, record[:6] + bytes([code]) + record[7:]) == "bad_track"


@pytest.mark.parametrize("kind", [0, 3, 255])
def test_bad_kind(kind):
    record = frame().encode()
    assert reason_of(decode_audio_record, record[:5] + bytes([kind]) + record[6:]) == "bad_kind"


def test_empty_contact_id():
    assert reason_of(decode_audio_record, frame(contact_id="").encode()) == "bad_contact_id"
    assert reason_of(decode_audio_record, end(contact_id="").encode()) == "bad_contact_id"


def test_zero_sample_rate():
    assert reason_of(decode_audio_record, frame(sample_rate=0).encode()) == "bad_sample_rate"


def test_header_string_not_utf8():
    record = frame(contact_id="CIDX").encode()
    assert record.count(b"\x04CIDX") == 1
    assert reason_of(decode_audio_record, record.replace(b"\x04CIDX", b"\x04\xff\xfe\xfd\xfc")) == "bad_string"


def test_frame_with_a_fragment_number_that_is_not_a_number_is_refused():
    # KVS fragment numbers are decimal strings; the assembler orders replayed frames by
    # int(fragment_number). A record that decodes with "12ab" later raises ValueError
    # inside the keyed Flink function, which only expects RecordError from bad input.
    record = frame(fragment_number="12ab").encode()
    with pytest.raises(RecordError):
        decode_audio_record(record)


def test_encode_refuses_what_the_format_cannot_carry():
    with pytest.raises(RecordError) as info:
        frame(pcm=b"\0\0\0").encode()
    assert info.value.reason == "bad_pcm"
    with pytest.raises(RecordError) as info:
        frame(contact_id="c" * (MAX_CONTACT_ID_BYTES + 1)).encode()
    assert info.value.reason == "too_long"
    with pytest.raises(RecordError) as info:
        frame(fragment_number="1" * (MAX_FRAGMENT_NUMBER_LENGTH + 1)).encode()
    assert info.value.reason == "too_long"
    with pytest.raises(RecordError) as info:
        end(reason="r" * 256).encode()
    assert info.value.reason == "too_long"
    # The limits themselves are fine.
    limit = frame(contact_id="c" * MAX_CONTACT_ID_BYTES, fragment_number="1" * MAX_FRAGMENT_NUMBER_LENGTH)
    assert decode_audio_record(limit.encode()) == limit


# -- ContactEvent errors -------------------------------------------------------------------


def test_contact_event_example_decodes_field_by_field():
    event = ContactEvent.decode(encoded(event_body()))
    assert event == ContactEvent(
        type=EventType.STARTED,
        contact_id=CONTACT,
        event_time_ms=1726677688000,
        instance_id="d5b716a2-0000-4000-8000-000000000001",
        stream_arn=STREAM_ARN,
        start_fragment_number=FRAGMENT,
        start_timestamp_ms=1726677688724,
        attributes={"lang": "en-US"},
        queue_name="Billing",
        initiation_method="INBOUND",
    )


@pytest.mark.parametrize("schema", ["contact-event/2", "contact-event/0", "contact-work/1", "", None, 1])
def test_contact_event_unknown_schema(schema):
    assert reason_of(ContactEvent.decode, encoded(event_body(schema=schema))) == "unknown_version"


def test_contact_event_without_schema():
    body = event_body()
    del body["schema"]
    assert reason_of(ContactEvent.decode, encoded(body)) == "unknown_version"


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"{'schema': 'contact-event/1'}", b"\xff\xfe\xfd", b"contact-event/1", "{\"schema\":"],
    ids=["empty", "open-brace", "single-quotes", "not-utf8", "bare-word", "text-cut"],
)
def test_contact_event_malformed_json(data):
    assert reason_of(ContactEvent.decode, data) == "malformed_event"


def test_contact_event_deeply_nested_json_is_a_record_error():
    # Well under the 1 MiB Kinesis record limit; json raises RecursionError on it.
    assert reason_of(ContactEvent.decode, b"[" * 100_000) == "malformed_event"


@pytest.mark.parametrize("data", [b"[]", b"null", b"42", b'"STARTED"'])
def test_contact_event_not_an_object(data):
    assert reason_of(ContactEvent.decode, data) == "malformed_event"


@pytest.mark.parametrize("event_type", ["DISCONNECTED", "started", "", None, 3])
def test_contact_event_unknown_type(event_type):
    assert reason_of(ContactEvent.decode, encoded(event_body(type=event_type))) == "malformed_event"


@pytest.mark.parametrize("contact_id", ["", None, 17, ["c"], "c" * (MAX_CONTACT_ID_BYTES + 1)])
def test_contact_event_bad_contact_id(contact_id):
    assert reason_of(ContactEvent.decode, encoded(event_body(contact_id=contact_id))) == "malformed_event"


@pytest.mark.parametrize(
    "attributes",
    [{"lang": 1}, {"lang": None}, {"lang": ["en"]}, {"lang": {"v": "en"}}, ["lang"], "lang=en"],
)
def test_contact_event_non_string_attributes(attributes):
    assert reason_of(ContactEvent.decode, encoded(event_body(attributes=attributes))) == "malformed_event"


@pytest.mark.parametrize("attributes", [[], "", 0, False], ids=["list", "string", "zero", "false"])
def test_contact_event_falsy_non_map_attributes_are_refused(attributes):
    # Only an absent or null attributes field means "no attributes"; an empty list is
    # not a string map.
    assert reason_of(ContactEvent.decode, encoded(event_body(attributes=attributes))) == "malformed_event"


def test_contact_event_null_attributes_mean_none():
    assert ContactEvent.decode(encoded(event_body(attributes=None))).attributes == {}


@pytest.mark.parametrize("field", ["event_time_ms", "start_timestamp_ms"])
@pytest.mark.parametrize("value", ["soon", [1], {"ms": 1}])
def test_contact_event_bad_number(field, value):
    assert reason_of(ContactEvent.decode, encoded(event_body(**{field: value}))) == "malformed_event"


@pytest.mark.parametrize("field", ["event_time_ms", "start_timestamp_ms"])
@pytest.mark.parametrize("literal", ["1e400", "-1e400", "Infinity", "NaN"])
def test_contact_event_non_finite_number_is_a_record_error(field, literal):
    # Python's json reads 1e400 as inf, and int(inf) raises OverflowError.
    data = json.dumps(event_body(**{field: 0})).replace(f'"{field}": 0', f'"{field}": {literal}')
    assert literal in data
    assert reason_of(ContactEvent.decode, data) == "malformed_event"


@pytest.mark.parametrize(
    "body",
    [event_body(contact_id="\ud800"), event_body(attributes={"lang": "\udc00"}), event_body(attributes={"\ud83d": "x"})],
    ids=["contact-id", "attribute-value", "attribute-key"],
)
def test_contact_event_lone_surrogate_is_a_record_error(body):
    # json.dumps escapes the surrogate as \\ud800, which is valid JSON; json.loads returns a
    # str that cannot be encoded to UTF-8.
    data = json.dumps(body).encode()
    assert b"\\ud" in data
    assert reason_of(ContactEvent.decode, data) == "malformed_event"


def _attributes_of_size(size: int) -> dict[str, str]:
    # One key of 4 bytes, the rest in the value: the limit counts key and value bytes.
    return {"blob": "x" * (size - 4)}


def test_attributes_at_the_limit_pass_and_one_byte_more_is_oversized():
    at_limit = event_body(attributes=_attributes_of_size(MAX_ATTRIBUTES_BYTES))
    assert ContactEvent.decode(encoded(at_limit)).attributes == at_limit["attributes"]
    over = event_body(attributes=_attributes_of_size(MAX_ATTRIBUTES_BYTES + 1))
    assert reason_of(ContactEvent.decode, encoded(over)) == "oversized_attributes"


def test_attribute_size_counts_utf8_bytes_not_characters():
    # 'é' is 2 bytes in UTF-8: these maps are about half the limit in characters.
    assert MAX_ATTRIBUTES_BYTES % 2 == 0
    at_limit = {"kk": "é" * ((MAX_ATTRIBUTES_BYTES - 2) // 2)}
    assert len("kk".encode()) + len(at_limit["kk"].encode()) == MAX_ATTRIBUTES_BYTES
    assert ContactEvent.decode(encoded(event_body(attributes=at_limit))).attributes == at_limit
    over = {"kkk": at_limit["kk"]}
    assert reason_of(ContactEvent.decode, encoded(event_body(attributes=over))) == "oversized_attributes"


def test_oversized_attributes_refused_on_encode():
    event = ContactEvent(
        type=EventType.STARTED,
        contact_id=CONTACT,
        event_time_ms=1,
        attributes=_attributes_of_size(MAX_ATTRIBUTES_BYTES + 1),
    )
    assert reason_of(event.encode) == "oversized_attributes"


# -- ContactWork errors --------------------------------------------------------------------


def work_body(**changes) -> str:
    body = {
        "schema": CONTACT_WORK_SCHEMA,
        "contact_id": CONTACT,
        "stream_arn": STREAM_ARN,
        "start_fragment_number": FRAGMENT,
        "instance_id": "d5b716a2-0000-4000-8000-000000000001",
        "start_timestamp_ms": 1726677688724,
    }
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...})


def test_contact_work_example_decodes_field_by_field():
    assert ContactWork.decode(work_body()) == ContactWork(
        contact_id=CONTACT,
        stream_arn=STREAM_ARN,
        start_fragment_number=FRAGMENT,
        instance_id="d5b716a2-0000-4000-8000-000000000001",
        start_timestamp_ms=1726677688724,
    )


@pytest.mark.parametrize("schema", ["contact-work/2", "contact-event/1", ..., None])
def test_contact_work_unknown_schema(schema):
    assert reason_of(ContactWork.decode, work_body(schema=schema)) == "unknown_version"


@pytest.mark.parametrize("data", ["", "{", "{'contact_id': 'c'}", b"\xff\xfe"], ids=["empty", "brace", "quotes", "not-utf8"])
def test_contact_work_malformed_json(data):
    assert reason_of(ContactWork.decode, data) == "malformed_work"


@pytest.mark.parametrize("data", ["[]", "null", "[1]", "\"contact\""])
def test_contact_work_not_an_object_is_malformed_not_a_version(data):
    # ContactEvent.decode calls a non-object "malformed_event"; the work item should
    # say the same instead of blaming the schema version.
    assert reason_of(ContactWork.decode, data) == "malformed_work"


@pytest.mark.parametrize(
    "changes",
    [
        {"contact_id": ...},
        {"stream_arn": ...},
        {"contact_id": ""},
        {"stream_arn": ""},
        {"start_timestamp_ms": "noon"},
    ],
    ids=["no-contact", "no-stream", "empty-contact", "empty-stream", "bad-timestamp"],
)
def test_contact_work_missing_or_bad_fields(changes):
    assert reason_of(ContactWork.decode, work_body(**changes)) == "malformed_work"


@pytest.mark.parametrize("field", ["contact_id", "stream_arn"])
@pytest.mark.parametrize("value", [None, 12, ["x"]])
def test_contact_work_non_string_ids_are_refused(field, value):
    # str(None) == "None": a null contact id must not become a contact called "None".
    assert reason_of(ContactWork.decode, work_body(**{field: value})) == "malformed_work"


def test_contact_work_non_finite_timestamp_is_a_record_error():
    data = work_body(start_timestamp_ms=0).replace('"start_timestamp_ms": 0', '"start_timestamp_ms": 1e400')
    assert "1e400" in data
    assert reason_of(ContactWork.decode, data) == "malformed_work"


# --- frame batches ----------------------------------------------------------------------


@given(st.lists(st.binary(max_size=400).map(lambda b: b[: len(b) // 2 * 2]), min_size=1, max_size=40), st.integers(64, 4096))
@FAST
def test_frame_batches_round_trip_in_order_within_the_size_limit(payloads, max_bytes):
    frames = [frame(frame_index=i, pcm=pcm) for i, pcm in enumerate(payloads)]
    batches = encode_frame_batches(frames, max_bytes=max_bytes)
    assert [f for batch in batches for f in decode_audio_records(batch)] == frames
    assert all(batch.startswith(AUDIO_BATCH_MAGIC) for batch in batches)
    # A batch only exceeds the limit when one frame alone does.
    assert all(len(batch) <= max_bytes or len(decode_audio_records(batch)) == 1 for batch in batches)


def test_a_single_record_still_decodes_as_one():
    assert decode_audio_records(frame().encode()) == [frame()]
    assert decode_audio_records(end().encode()) == [end()]


def test_bad_frame_batches_are_record_errors():
    (batch,) = encode_frame_batches([frame(frame_index=0), frame(frame_index=1)])
    for n in range(4, len(batch)):
        with pytest.raises(RecordError):
            decode_audio_records(batch[:n])
    assert reason_of(decode_audio_records, batch + b"\0") == "bad_length"
    assert reason_of(decode_audio_records, batch[:4] + b"\x09" + batch[5:]) == "unknown_version"
    (mixed,) = encode_frame_batches([frame(frame_index=0), frame(contact_id="other", frame_index=1)])
    assert reason_of(decode_audio_records, mixed) == "bad_batch"
    end_item = end().encode()
    with_end = AUDIO_BATCH_MAGIC + bytes([1]) + (1).to_bytes(2, "big") + len(end_item).to_bytes(4, "big") + end_item
    assert reason_of(decode_audio_records, with_end) == "bad_batch"
