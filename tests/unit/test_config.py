"""load_config: defaults ← property-groups file ← CRESTA_PIPELINE_* env ← overrides."""

from __future__ import annotations

import json

import pytest

from pipeline import config as config_module
from pipeline.config import SETTINGS, ConfigError, PipelineConfig, load_config

RUN_OPTIONS = "kinesis.analytics.flink.run.options"


@pytest.fixture(autouse=True)
def no_managed_flink_file(tmp_path, monkeypatch):
    # A developer machine or CI runner must not leak /etc/flink into these tests.
    monkeypatch.setattr(config_module, "MANAGED_FLINK_PROPERTIES", tmp_path / "absent" / "props.json")


def write_groups(path, groups) -> str:
    path.write_text(json.dumps(groups))
    return str(path)


def load(**kwargs) -> PipelineConfig:
    kwargs.setdefault("env", {})
    return load_config(**kwargs)


def config_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    return str(info.value)


# -- defaults and precedence -------------------------------------------------------------


def test_defaults_are_every_settings_default():
    config = load()
    assert dict(config) == {s.key: s.default for s in SETTINGS}


def test_documented_defaults():
    config = load()
    assert config["assembler.chunk_ms"] == 100  # DESIGN §4: 100 ms by default
    assert config["audit.include_audio"] is False  # DESIGN §4: PII off by default
    assert config["kinesis.initial_position"] == "TRIM_HORIZON"


def test_each_layer_overrides_the_one_below(tmp_path):
    path = write_groups(
        tmp_path / "props.json",
        [
            {"PropertyGroupId": "assembler", "PropertyMap": {"chunk_ms": "200"}},
            {"PropertyGroupId": "aws", "PropertyMap": {"region": "eu-west-1"}},
            {"PropertyGroupId": "kinesis", "PropertyMap": {"poll_interval_ms": "500"}},
        ],
    )
    env = {
        "CRESTA_PIPELINE_AWS_REGION": "eu-central-1",
        "CRESTA_PIPELINE_KINESIS_POLL_INTERVAL_MS": "600",
        "CRESTA_PIPELINE_ENRICH_MAX_WAIT_MS": "700",
    }
    config = load_config(path, env=env, overrides={"kinesis.poll_interval_ms": 800})
    assert config["assembler.chunk_ms"] == 200  # file over default
    assert config["aws.region"] == "eu-central-1"  # env over file
    assert config["enrich.max_wait_ms"] == 700  # env over default
    assert config["kinesis.poll_interval_ms"] == 800  # override over env and file
    assert config["flink.parallelism"] == 1  # untouched default


def test_env_names_are_the_prefixed_upper_case_key():
    env = {
        "CRESTA_PIPELINE_ASSEMBLER_CHUNK_MS": "250",
        "CRESTA_PIPELINE_AUDIT_INCLUDE_AUDIO": "true",
        "CRESTA_PIPELINE_KINESIS_AUDIO_FRAMES_STREAM": "frames-x",
        "ASSEMBLER_CHUNK_MS": "300",  # no prefix: not ours
    }
    config = load(env=env)
    assert config["assembler.chunk_ms"] == 250
    assert config["audit.include_audio"] is True
    assert config["kinesis.audio_frames_stream"] == "frames-x"


def test_process_environment_is_the_default_env(monkeypatch):
    monkeypatch.setenv("CRESTA_PIPELINE_FLINK_PARALLELISM", "4")
    assert load_config()["flink.parallelism"] == 4


def test_managed_flink_properties_are_read_when_no_path_is_given(tmp_path, monkeypatch):
    props = tmp_path / "application_properties.json"
    write_groups(props, [{"PropertyGroupId": "flink", "PropertyMap": {"parallelism": "3"}}])
    monkeypatch.setattr(config_module, "MANAGED_FLINK_PROPERTIES", props)
    assert load()["flink.parallelism"] == 3


# -- parsing and validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" On ", True),
     ("0", False), ("false", False), ("no", False), ("off", False)],
)
def test_boolean_spellings(text, value):
    assert load(env={"CRESTA_PIPELINE_AUDIT_INCLUDE_AUDIO": text})["audit.include_audio"] is value


def test_strings_are_parsed_and_typed_values_kept():
    config = load(overrides={"assembler.chunk_ms": "60", "flink.parallelism": 2, "audit.include_audio": True})
    assert config["assembler.chunk_ms"] == 60
    assert config["flink.parallelism"] == 2
    assert config["audit.include_audio"] is True


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("assembler.chunk_ms", "fast"),
        ("assembler.chunk_ms", "100ms"),
        ("assembler.chunk_ms", "1.5"),
        ("flink.parallelism", ""),
        ("audit.include_audio", "maybe"),
        ("audit.include_audio", "2"),
    ],
)
def test_unparsable_text_names_the_key(key, value):
    message = config_error(overrides={key: value})
    assert key in message
    env_name = "CRESTA_PIPELINE_" + key.upper().replace(".", "_")
    message = config_error(env={env_name: value})
    assert key in message and "environment" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("assembler.chunk_ms", 100.0),
        ("assembler.chunk_ms", True),  # a bool is an int subclass, but not a chunk length
        ("flink.parallelism", True),  # ... even where True (== 1) would pass the range check
        ("enrich.max_wait_ms", False),
        ("assembler.chunk_ms", None),
        ("audit.include_audio", 1),
        ("aws.region", 5),
        ("aws.region", ["us-east-1"]),
    ],
)
def test_wrong_type_names_the_key(key, value):
    assert key in config_error(overrides={key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("assembler.chunk_ms", "19"),
        ("assembler.chunk_ms", "1001"),
        ("assembler.chunk_ms", "0"),
        ("kinesis.initial_position", "EARLIEST"),
        ("kinesis.initial_position", "latest"),
        ("kinesis.poll_interval_ms", "9"),
        ("enrich.max_wait_ms", "-1"),
        ("flink.parallelism", "0"),
        ("flink.checkpoint_interval_ms", "99"),
        ("flink.bundle_time_ms", "0"),
        ("flink.bundle_size", "0"),
        ("flink.buffer_timeout_ms", "-1"),
        ("flink.python_execution_mode", "loopback"),
        ("flink.rest_port", "65536"),
    ],
)
def test_out_of_range_names_the_key_and_the_expectation(key, value):
    message = config_error(overrides={key: value})
    assert key in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("assembler.chunk_ms", "20"), ("assembler.chunk_ms", "1000"), ("kinesis.initial_position", "LATEST"),
     ("enrich.max_wait_ms", "0"), ("kinesis.poll_interval_ms", "10"), ("flink.buffer_timeout_ms", "0"),
     ("flink.python_execution_mode", "thread"), ("flink.rest_port", "0")],
)
def test_range_limits_are_allowed(key, value):
    assert str(load(overrides={key: value})[key]) == value


def test_file_values_are_validated_and_the_error_names_the_file_and_key(tmp_path):
    path = write_groups(tmp_path / "props.json", [{"PropertyGroupId": "assembler", "PropertyMap": {"chunk_ms": "5"}}])
    message = config_error(path=path)
    assert "assembler.chunk_ms" in message
    assert "props.json" in message


# -- unknown keys ----------------------------------------------------------------------------


def test_unknown_override_is_rejected():
    assert "assembler.chunk_msec" in config_error(overrides={"assembler.chunk_msec": "100"})


def test_unknown_file_key_is_rejected(tmp_path):
    path = write_groups(
        tmp_path / "props.json",
        [{"PropertyGroupId": "cresta", "PropertyMap": {"ws_url": "wss://x", "wsurl": "wss://y"}}],
    )
    assert "cresta.wsurl" in config_error(path=path)


def test_unknown_group_is_rejected(tmp_path):
    path = write_groups(tmp_path / "props.json", [{"PropertyGroupId": "kinesis2", "PropertyMap": {"region": "x"}}])
    assert "kinesis2.region" in config_error(path=path)


def test_managed_flink_run_options_group_is_ignored(tmp_path):
    path = write_groups(
        tmp_path / "props.json",
        [
            {
                "PropertyGroupId": RUN_OPTIONS,
                "PropertyMap": {"python": "jobs/audio_job.py", "jarfile": "lib/pipeline-connectors.jar"},
            },
            {"PropertyGroupId": "assembler", "PropertyMap": {"chunk_ms": "40"}},
        ],
    )
    config = load(path=path)
    assert config["assembler.chunk_ms"] == 40
    assert not [key for key in config if key.startswith("kinesis.analytics")]
    assert set(config) == {s.key for s in SETTINGS}


# -- the file itself ---------------------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path):
    assert "nope.json" in config_error(path=tmp_path / "nope.json")


@pytest.mark.parametrize("text", ["{", "", '{"PropertyGroupId": "aws"}', '"aws.region"'])
def test_file_that_is_not_a_list_of_groups_is_a_config_error(tmp_path, text):
    path = tmp_path / "props.json"
    path.write_text(text)
    config_error(path=path)


@pytest.mark.parametrize(
    "groups",
    [["assembler"], [{"PropertyGroupId": "assembler", "PropertyMap": ["chunk_ms"]}], [None]],
    ids=["group-is-a-string", "map-is-a-list", "group-is-null"],
)
def test_malformed_group_is_a_config_error(tmp_path, groups):
    # The job's entry point turns ConfigError into a clean message; anything else is a
    # traceback on a Managed Flink start.
    config_error(path=write_groups(tmp_path / "props.json", groups))


# -- property groups round trip ------------------------------------------------------------------


def test_property_groups_round_trip_through_a_file(tmp_path):
    original = load(
        overrides={
            "aws.region": "ap-southeast-2",
            "assembler.chunk_ms": 40,
            "enrich.max_wait_ms": 0,
            "audit.include_audio": True,
            "kinesis.initial_position": "LATEST",
            "flink.parallelism": 8,
            "cresta.ws_url": "wss://media.example.test/v1/stream?x=1,2",
            "audit.path": "s3://audit-bucket/prefix",
        }
    )
    groups = original.to_property_groups()
    # The Managed Flink shape: a list of {PropertyGroupId, PropertyMap} with string values.
    assert isinstance(groups, list)
    for group in groups:
        assert set(group) == {"PropertyGroupId", "PropertyMap"}
        assert all(isinstance(v, str) for v in group["PropertyMap"].values())
    by_group = {g["PropertyGroupId"]: g["PropertyMap"] for g in groups}
    assert len(by_group) == len(groups)
    assert by_group["assembler"]["chunk_ms"] == "40"
    assert by_group["audit"]["include_audio"] == "true"
    assert by_group["aws"]["region"] == "ap-southeast-2"

    path = write_groups(tmp_path / "application_properties.json", groups)
    assert dict(load(path=path)) == dict(original)


def test_defaults_round_trip_through_a_file(tmp_path):
    original = load()
    path = write_groups(tmp_path / "application_properties.json", original.to_property_groups())
    assert dict(load(path=path)) == dict(original)


def test_round_trip_file_keeps_run_options_out(tmp_path):
    groups = load().to_property_groups()
    assert RUN_OPTIONS not in {g["PropertyGroupId"] for g in groups}
    groups.append({"PropertyGroupId": RUN_OPTIONS, "PropertyMap": {"python": "jobs/audio_job.py"}})
    path = write_groups(tmp_path / "application_properties.json", groups)
    assert dict(load(path=path)) == dict(load())


def test_loggable_settings_hide_credentials_but_say_whether_they_are_set():
    config = load_config(env={}, overrides={"cresta.media_token": "tok-Secret-123", "aws.region": "eu-west-2"})
    logged = json.dumps(config.loggable())
    assert "tok-Secret-123" not in logged
    assert config.loggable()["cresta.media_token"] == "<set>"
    assert load_config(env={}).loggable()["cresta.media_token"] == "<empty>"
    assert config.loggable()["aws.region"] == "eu-west-2"
    assert config["cresta.media_token"] == "tok-Secret-123"
