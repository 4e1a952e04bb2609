"""`kvs inspect` / `kvs dump` over real KVS captures and Connect-layout streams."""

from __future__ import annotations

import io
import json
import random
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connectors.kvs import tools
from jobs.cli import main as cli_main
from pipeline.audio import read_wav
from pipeline.kvs_fragments import ContactAudioCollector, FragmentSummariser, epoch_seconds_to_ms
from pipeline.mkv import BlockSpec, MkvStreamParser, TrackSpec, write_connect_fragment, write_fragment
from pipeline.records import Track

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kvs"
CONTACT_A = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
CONTACT_B = "8e3c1c1e-0000-4000-8000-000000000001"
T0 = 1_726_677_688_724
FIRST_NUMBER = 91343852333181432392682062607743920146264440000


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def pcm(seed: int, seconds: float = 0.5, sample_rate: int = 8000) -> bytes:
    return random.Random(seed).randbytes(int(sample_rate * seconds) * 2)


def epoch_seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def connect_fragment(index: int, contact_id: str, customer: bytes, agent: bytes, **kwargs: Any) -> bytes:
    """A Connect fragment with the tags GetMedia adds before the Cluster."""
    aws_tags = [
        ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", str(FIRST_NUMBER + index)),
        ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", epoch_seconds(T0 + index * 1000 + 40)),
        ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", epoch_seconds(T0 + index * 1000)),
    ]
    return write_connect_fragment(
        contact_id=contact_id,
        instance_id="instance-1",
        timecode_ms=T0 + index * 1000,
        customer_pcm=customer,
        agent_pcm=agent,
        extra_tags_before_cluster=[aws_tags],
        **kwargs,
    )


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = tools.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def inspect_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run(["inspect", str(path), "--json"], capsys)
    assert (code, err) == (0, "")
    return json.loads(out)


def write(tmp_path: Path, data: bytes, name: str = "getmedia.mkv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def dump(tmp_path: Path, data: bytes, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, Path]:
    out_dir = tmp_path / "out"
    code, out, err = run(["dump", str(write(tmp_path, data)), "--out", str(out_dir)], capsys)
    return code, out, err, out_dir


def assert_wav(path: Path, pcm_bytes: bytes, sample_rate: int = 8000) -> None:
    wav = read_wav(path)
    assert (wav.format_tag, wav.sample_rate, wav.channels, wav.bits_per_sample) == (1, sample_rate, 1, 16)
    assert wav.data == pcm_bytes


def tag_values(raw: bytes, name: str) -> list[str]:
    """Tag strings read straight from the bytes: the digits that follow the tag's name."""
    return [m.decode() for m in re.findall(re.escape(name.encode()) + rb".{1,12}?([0-9]+(?:\.[0-9]+)?)", raw, re.S)]


def assert_schema(document: dict[str, Any]) -> None:
    assert set(document) == {"tracks", "fragments"}
    for track in document["tracks"]:
        assert set(track) == {"number", "name", "codec_id"}
        assert (type(track["number"]), type(track["name"]), type(track["codec_id"])) == (int, str, str)
    for fragment in document["fragments"]:
        assert set(fragment) == {
            "fragment_number", "producer_timestamp_ms", "server_timestamp_ms", "tags", "frames",
        }
        assert fragment["fragment_number"] is None or isinstance(fragment["fragment_number"], str)
        for key in ("producer_timestamp_ms", "server_timestamp_ms"):
            assert fragment[key] is None or type(fragment[key]) is int
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in fragment["tags"].items())
        assert all(isinstance(k, str) and type(v) is int for k, v in fragment["frames"].items())


# -- inspect: real captures ------------------------------------------------------------------


def test_inspect_getmedia_capture_matches_the_tag_strings_in_the_bytes(capsys):
    raw = fixture("getmedia_h264_5fragments.mkv")
    document = inspect_json(FIXTURES / "getmedia_h264_5fragments.mkv", capsys)

    assert_schema(document)
    assert document["tracks"] == [{"number": 1, "name": "", "codec_id": "V_MPEG4/ISO/AVC"}]
    fragments = document["fragments"]
    assert [f["fragment_number"] for f in fragments] == tag_values(raw, "AWS_KINESISVIDEO_FRAGMENT_NUMBER")
    assert [f["producer_timestamp_ms"] for f in fragments] == [
        int(Decimal(v) * 1000) for v in tag_values(raw, "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP")
    ]
    assert [f["server_timestamp_ms"] for f in fragments] == [
        int(Decimal(v) * 1000) for v in tag_values(raw, "AWS_KINESISVIDEO_SERVER_TIMESTAMP")
    ]
    assert len(fragments) == 5
    assert fragments[0]["producer_timestamp_ms"] == 1_511_852_108_513
    # 300 SimpleBlocks in all, counted with an independent EBML dump (PROVENANCE.md).
    assert [f["frames"] for f in fragments] == [{"#1": 60}] * 5
    assert fragments[4]["tags"]["AWS_KINESISVIDEO_CONTINUATION_TOKEN"] == fragments[4]["fragment_number"]


def test_inspect_mixed_tags_capture_with_unknown_size_clusters(capsys):
    document = inspect_json(FIXTURES / "mixed_tags_unknown_size_clusters.mkv", capsys)

    assert_schema(document)
    fragments = document["fragments"]
    assert len(fragments) == 10
    assert sum(f["frames"]["test track"] for f in fragments) == 100
    assert [f["producer_timestamp_ms"] for f in fragments] == [i * 5000 for i in range(10)]
    assert all(f["tags"]["testTag_4"] == "testTag_4_Value" for f in fragments)


def test_inspect_captures_without_frames_or_fragment_tags(capsys):
    with_tags = inspect_json(FIXTURES / "empty_mkv_with_tags.mkv", capsys)
    assert with_tags["fragments"] == [
        {
            "fragment_number": "91343852338378294813695855977007281634605393997",
            "producer_timestamp_ms": 1_515_865_326_543,
            "server_timestamp_ms": 1_516_124_526_822,
            "tags": {
                "AWS_KINESISVIDEO_FRAGMENT_NUMBER": "91343852338378294813695855977007281634605393997",
                "AWS_KINESISVIDEO_SERVER_TIMESTAMP": "1516124526.822",
                "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP": "1515865326.543",
            },
            "frames": {},
        }
    ]
    without_tags = inspect_json(FIXTURES / "tags_empty_cluster.mkv", capsys)
    assert_schema(without_tags)
    assert without_tags["tracks"] == []
    [fragment] = without_tags["fragments"]
    assert (fragment["fragment_number"], fragment["producer_timestamp_ms"], fragment["server_timestamp_ms"]) == (
        None, None, None,
    )
    assert fragment["tags"] == {f"testTag_{i}": f"testTag_{i}_Value" for i in range(5)}


def test_inspect_table_has_one_line_per_fragment(tmp_path, capsys):
    data = b"".join(connect_fragment(i, CONTACT_A, pcm(2 * i), pcm(2 * i + 1)) for i in range(3))
    code, out, err = run(["inspect", str(write(tmp_path, data))], capsys)

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["fragment", "producer", "time"]
    assert len(lines) == 1 + 3 + 1
    assert lines[1].split() == [
        str(FIRST_NUMBER), "2024-09-18", "16:41:28.724", "2024-09-18", "16:41:28.764",
        "AUDIO_FROM_CUSTOMER=8", "AUDIO_TO_CUSTOMER=8", CONTACT_A,
    ]
    assert lines[-1] == "tracks: 1 AUDIO_FROM_CUSTOMER (A_AAC), 2 AUDIO_TO_CUSTOMER (A_AAC)"


def test_inspect_connect_stream_json(tmp_path, capsys):
    data = connect_fragment(0, CONTACT_A, pcm(1), pcm(2)) + connect_fragment(1, CONTACT_B, pcm(3), pcm(4))
    document = inspect_json(write(tmp_path, data), capsys)

    assert_schema(document)
    assert document["tracks"] == [
        {"number": 1, "name": "AUDIO_FROM_CUSTOMER", "codec_id": "A_AAC"},
        {"number": 2, "name": "AUDIO_TO_CUSTOMER", "codec_id": "A_AAC"},
    ]
    first, second = document["fragments"]
    assert (first["fragment_number"], first["producer_timestamp_ms"], first["server_timestamp_ms"]) == (
        str(FIRST_NUMBER), T0, T0 + 40,
    )
    assert first["frames"] == {"AUDIO_FROM_CUSTOMER": 8, "AUDIO_TO_CUSTOMER": 8}
    assert (first["tags"]["ContactId"], second["tags"]["ContactId"]) == (CONTACT_A, CONTACT_B)
    assert first["tags"]["MimeType"] == "audio/L16;rate=8000;channels=1;"


def test_inspect_reads_stdin(monkeypatch, capsys):
    data = connect_fragment(0, CONTACT_A, pcm(1), pcm(2))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, err = run(["inspect", "-", "--json"], capsys)

    assert (code, err) == (0, "")
    assert json.loads(out)["fragments"][0]["tags"]["ContactId"] == CONTACT_A


def test_through_the_cresta_pipeline_cli(capsys):
    assert cli_main(["kvs", "inspect", str(FIXTURES / "empty_mkv_with_tags.mkv"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["fragments"]) == 1


def test_timestamps_are_converted_exactly():
    # float("1.005") * 1000 is 1004.999…: the conversion must not go through a float.
    assert epoch_seconds_to_ms("1.005") == 1005
    assert epoch_seconds_to_ms("1726677687.758") == 1_726_677_687_758
    assert epoch_seconds_to_ms("1726677687") == 1_726_677_687_000
    assert epoch_seconds_to_ms("1726677687.7") == 1_726_677_687_700
    assert [epoch_seconds_to_ms(text) for text in ("", "-1.000", "1.0001", "1e3", " 1.000")] == [None] * 5


# -- truncated and corrupt input ---------------------------------------------------------------


def test_truncated_input_prints_what_was_read_then_fails(tmp_path, capsys):
    whole = b"".join(connect_fragment(i, CONTACT_A, pcm(2 * i), pcm(2 * i + 1)) for i in range(3))
    fragment_length = len(connect_fragment(0, CONTACT_A, pcm(0), pcm(1)))
    cut = fragment_length * 2 + fragment_length // 2
    code, out, err = run(["inspect", str(write(tmp_path, whole[:cut])), "--json"], capsys)

    assert code == 1
    fragments = json.loads(out)["fragments"]
    assert [f["fragment_number"] for f in fragments] == [str(FIRST_NUMBER + i) for i in range(3)]
    assert fragments[1]["frames"] == {"AUDIO_FROM_CUSTOMER": 8, "AUDIO_TO_CUSTOMER": 8}
    assert err.startswith("cresta-pipeline kvs: error: the input is not a readable KVS stream: input ends inside")
    assert "Traceback" not in err


def test_truncated_input_dump_writes_the_complete_fragments_then_fails(tmp_path, capsys):
    first = connect_fragment(0, CONTACT_A, pcm(1), pcm(2))
    second = connect_fragment(1, CONTACT_B, pcm(3), pcm(4))
    code, out, err, out_dir = dump(tmp_path, first + second[: len(second) // 2], capsys)

    assert code == 1
    assert_wav(out_dir / CONTACT_A / "customer.wav", pcm(1))
    assert not (out_dir / CONTACT_B).exists()
    assert re.fullmatch(r"skipped [1-9][0-9]* frames of fragments without a ContactId tag", out.splitlines()[-1])
    assert "input ends inside" in err


def test_garbage_input_fails_with_a_clear_message(tmp_path, capsys):
    code, out, err = run(["inspect", str(write(tmp_path, b"not an mkv at all"))], capsys)

    assert (code, out) == (1, "tracks: none\n")
    assert err == (
        "cresta-pipeline kvs: error: the input is not a readable KVS stream: unexpected element 0x6E6F "
        "at the top level; expected an EBML header or a Segment (at byte offset 0)\n"
    )


def test_missing_file_fails_with_a_clear_message(tmp_path, capsys):
    code, out, err = run(["dump", str(tmp_path / "absent.mkv"), "--out", str(tmp_path)], capsys)

    assert (code, out) == (1, "no contact audio in the input\n")
    assert err == f"cresta-pipeline kvs: error: cannot open {tmp_path / 'absent.mkv'}: No such file or directory\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect"],
        ["inspect", "a.mkv", "--stream-arn", "arn:aws:kinesisvideo:us-east-1:1:stream/s/1"],
        ["inspect", "a.mkv", "--start-fragment", "1"],
        ["dump", "a.mkv"],
    ],
)
def test_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tools.main(argv)
    assert exit_info.value.code == 2
    assert f"usage: cresta-pipeline kvs {argv[0]}" in capsys.readouterr().err


# -- dump ------------------------------------------------------------------------------------


def test_dump_two_contacts_on_one_stream_gives_two_folders_with_exact_audio(tmp_path, capsys):
    a = [(pcm(10), pcm(11)), (pcm(12), pcm(13))]
    b = [(pcm(20, 0.3), pcm(21, 0.3))]
    data = b"".join(
        connect_fragment(index, contact, customer, agent)
        for index, (contact, (customer, agent)) in enumerate([(CONTACT_A, a[0]), (CONTACT_A, a[1]), (CONTACT_B, b[0])])
    )
    code, out, err, out_dir = dump(tmp_path, data, capsys)

    assert (code, err) == (0, "")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([CONTACT_A, CONTACT_B])
    assert_wav(out_dir / CONTACT_A / "customer.wav", a[0][0] + a[1][0])
    assert_wav(out_dir / CONTACT_A / "agent.wav", a[0][1] + a[1][1])
    assert_wav(out_dir / CONTACT_B / "customer.wav", b[0][0])
    assert_wav(out_dir / CONTACT_B / "agent.wav", b[0][1])
    assert out.splitlines() == [
        f"{out_dir / CONTACT_A / 'customer.wav'}  1.000 s  (16000 bytes of PCM at 8000 Hz)",
        f"{out_dir / CONTACT_A / 'agent.wav'}  1.000 s  (16000 bytes of PCM at 8000 Hz)",
        f"{out_dir / CONTACT_B / 'customer.wav'}  0.300 s  (4800 bytes of PCM at 8000 Hz)",
        f"{out_dir / CONTACT_B / 'agent.wav'}  0.300 s  (4800 bytes of PCM at 8000 Hz)",
    ]


def test_dump_routes_by_track_name_not_number(tmp_path, capsys):
    customer, agent = pcm(30), pcm(31)
    data = connect_fragment(0, CONTACT_A, customer, agent, customer_track_number=2, agent_track_number=1)
    code, _, _, out_dir = dump(tmp_path, data, capsys)

    assert code == 0
    assert_wav(out_dir / CONTACT_A / "customer.wav", customer)
    assert_wav(out_dir / CONTACT_A / "agent.wav", agent)


def test_dump_legacy_customer_track_name(tmp_path, capsys):
    customer, agent = pcm(40), pcm(41)
    data = connect_fragment(0, CONTACT_A, customer, agent, customer_track_name="Track_audio/L16")
    code, _, _, out_dir = dump(tmp_path, data, capsys)

    assert code == 0
    assert_wav(out_dir / CONTACT_A / "customer.wav", customer)
    assert_wav(out_dir / CONTACT_A / "agent.wav", agent)


def test_dump_sample_rate_from_the_mime_type_tag(tmp_path, capsys):
    customer, agent = pcm(50, sample_rate=16000), pcm(51, sample_rate=16000)
    data = connect_fragment(0, CONTACT_A, customer, agent, sample_rate=16000)
    code, out, _, out_dir = dump(tmp_path, data, capsys)

    assert code == 0
    assert_wav(out_dir / CONTACT_A / "customer.wav", customer, sample_rate=16000)
    assert "0.500 s  (16000 bytes of PCM at 16000 Hz)" in out


def test_dump_of_captures_without_contacts_writes_nothing(tmp_path, capsys):
    code, out, err, out_dir = dump(tmp_path, fixture("getmedia_h264_5fragments.mkv"), capsys)

    assert (code, err) == (0, "")
    assert not out_dir.exists()
    assert out.splitlines() == [
        "no contact audio in the input",
        "skipped 300 frames of fragments without a ContactId tag",
    ]


def test_dump_refuses_a_contact_id_that_is_not_a_folder_name(tmp_path, capsys):
    code, _, err, _ = dump(tmp_path, connect_fragment(0, "../escape", pcm(1), pcm(2)), capsys)

    assert code == 1
    assert "ContactId '../escape' cannot be a folder name" in err
    assert not (tmp_path / "escape").exists()


def test_dump_stops_at_an_error_reported_in_the_stream(tmp_path, capsys):
    error = write_connect_fragment(
        contact_id=CONTACT_A, instance_id="i", timecode_ms=T0 + 1000, customer_pcm=pcm(3), agent_pcm=pcm(4),
        extra_tags_before_cluster=[[("AWS_KINESISVIDEO_ERROR_CODE", "FRAGMENT_NOT_FOUND"),
                                    ("AWS_KINESISVIDEO_ERROR_ID", "4000")]],
    )
    code, _, err, out_dir = dump(tmp_path, connect_fragment(0, CONTACT_A, pcm(1), pcm(2)) + error, capsys)

    assert code == 1
    assert_wav(out_dir / CONTACT_A / "customer.wav", pcm(1))
    assert err == (
        "cresta-pipeline kvs: error: GetMedia reported an error in the stream: "
        "AWS_KINESISVIDEO_ERROR_CODE=FRAGMENT_NOT_FOUND, AWS_KINESISVIDEO_ERROR_ID=4000\n"
    )


def test_dump_stops_where_the_sample_rate_of_a_contact_changes(tmp_path, capsys):
    data = connect_fragment(0, CONTACT_A, pcm(1), pcm(2)) + connect_fragment(
        1, CONTACT_A, pcm(3, sample_rate=16000), pcm(4, sample_rate=16000), sample_rate=16000
    )
    code, _, err, out_dir = dump(tmp_path, data, capsys)

    assert code == 1
    assert_wav(out_dir / CONTACT_A / "customer.wav", pcm(1))
    assert err == (
        f"cresta-pipeline kvs: error: contact {CONTACT_A} changes sample rate from 8000 to 16000 Hz "
        f"in fragment {FIRST_NUMBER + 1}; a WAV file has one rate\n"
    )


def test_dump_stops_at_a_fragment_the_connector_would_reject(tmp_path, capsys):
    odd_frame = write_fragment(
        tracks=[TrackSpec(1, "AUDIO_FROM_CUSTOMER"), TrackSpec(2, "AUDIO_TO_CUSTOMER")],
        cluster_timecode=T0 + 1000,
        blocks=[BlockSpec(1, 0, b"\x01\x02\x03")],
        tags_after_cluster=[[("ContactId", CONTACT_A)]],
    )
    code, _, err, out_dir = dump(tmp_path, connect_fragment(0, CONTACT_A, pcm(1), pcm(2)) + odd_frame, capsys)

    assert code == 1
    assert_wav(out_dir / CONTACT_A / "agent.wav", pcm(2))
    assert err == f"cresta-pipeline kvs: error: contact {CONTACT_A}: corrupt_stream: customer frame of odd length 3\n"


# -- the pure summariser and collector, fed in any chunking --------------------------------------


def feed_in_chunks(data: bytes, sizes: list[int]) -> tuple[list, dict]:
    parser, summariser, collector = MkvStreamParser(), FragmentSummariser(), ContactAudioCollector()
    summaries = []
    offset = 0
    for size in sizes:
        events = parser.feed(data[offset : offset + size])
        summaries += summariser.feed(events)
        collector.feed(events)
        offset += size
    events = parser.feed(data[offset:]) + parser.close()
    summaries += summariser.feed(events) + summariser.close()
    collector.feed(events)
    collector.close()
    audio = {cid: (a.sample_rate, {t: bytes(p) for t, p in a.pcm.items()}) for cid, a in collector.contacts.items()}
    return summaries, audio


def test_summaries_and_audio_do_not_depend_on_chunking():
    data = connect_fragment(0, CONTACT_A, pcm(1, 0.1), pcm(2, 0.1)) + connect_fragment(1, CONTACT_B, pcm(3, 0.1), pcm(4, 0.1))
    rng = random.Random(5)

    whole = feed_in_chunks(data, [])
    bytewise = feed_in_chunks(data, [1] * len(data))
    ragged = feed_in_chunks(data, [rng.randint(1, 700) for _ in range(len(data) // 350)])

    assert whole == bytewise == ragged
    assert whole[1] == {
        CONTACT_A: (8000, {Track.CUSTOMER: pcm(1, 0.1), Track.AGENT: pcm(2, 0.1)}),
        CONTACT_B: (8000, {Track.CUSTOMER: pcm(3, 0.1), Track.AGENT: pcm(4, 0.1)}),
    }
