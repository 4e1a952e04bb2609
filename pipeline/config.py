"""The pipeline's one configuration model: the Flink job's and the connector worker's.

Keys are dotted names grouped the way Managed Flink property groups are
(``/etc/flink/application_properties.json`` is a list of
``{"PropertyGroupId": group, "PropertyMap": {key: value}}``), so the same file works
locally and in production. Precedence, lowest first: defaults, the file, environment
variables, explicit overrides (CLI flags). A setting's environment variable is
``CRESTA_PIPELINE_`` + its key upper-cased with dots as underscores; some also answer to
the names AWS tools and the deployment give every component (``AWS_REGION``,
``CONNECTOR_QUEUE_URL``, …), which the prefixed name overrides. Every value is
validated; an error names the bad key.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline.assembler import MAX_CHUNK_MS, MIN_CHUNK_MS

ENV_PREFIX = "CRESTA_PIPELINE_"
MANAGED_FLINK_PROPERTIES = Path("/etc/flink/application_properties.json")
#: Managed Flink's own property group in that file (the entry point, the jar, pyFiles).
MANAGED_FLINK_RUN_OPTIONS = "kinesis.analytics.flink.run.options"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    parse: Callable[[str], Any]
    doc: str
    check: Callable[[Any], bool] = lambda _value: True
    expectation: str = ""
    #: Other environment variables that set it, weakest last.
    env_aliases: tuple[str, ...] = ()
    #: A credential: never written to logs (``PipelineConfig.loggable``).
    secret: bool = False

    @property
    def env_names(self) -> tuple[str, ...]:
        """Every environment variable that sets it, strongest first."""
        return (_env_name(self.key), *self.env_aliases)


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean")


SETTINGS: tuple[Setting, ...] = (
    Setting("aws.region", "us-east-1", str, "AWS region of the streams",
            env_aliases=("AWS_REGION", "AWS_DEFAULT_REGION")),
    Setting("aws.endpoint_url", "", str, "AWS endpoint override (local stack only)",
            env_aliases=("AWS_ENDPOINT_URL",)),
    Setting("kinesis.audio_frames_stream", "audio-frames", str, "KDS stream of AudioFrame records",
            env_aliases=("AUDIO_FRAMES_STREAM",)),
    Setting("kinesis.contact_events_stream", "contact-events", str, "KDS stream of ContactEvent JSON"),
    Setting(
        "kinesis.initial_position", "TRIM_HORIZON", str,
        "where a job without a checkpoint starts reading",
        lambda v: v in ("TRIM_HORIZON", "LATEST"), "TRIM_HORIZON or LATEST",
    ),
    Setting(
        "kinesis.poll_interval_ms", 200, int,
        "GetRecords interval per shard (KDS allows 5 calls/s per shard)",
        lambda v: v >= 10, ">= 10",
    ),
    Setting(
        "assembler.chunk_ms", 100, int, "audio per chunk",
        lambda v: MIN_CHUNK_MS <= v <= MAX_CHUNK_MS, f"{MIN_CHUNK_MS}..{MAX_CHUNK_MS}",
    ),
    Setting(
        "assembler.reorder_window_ms", 500, int,
        "how long out-of-order frames are waited for before a gap is filled with silence",
        lambda v: 0 <= v <= 10_000, "0..10000",
    ),
    Setting(
        "assembler.idle_flush_ms", 2000, int,
        "a partial chunk is sent after this long without new audio", lambda v: v >= 100, ">= 100",
    ),
    Setting(
        "assembler.state_grace_ms", 60_000, int,
        "a contact's state is kept this long after its END (without END: after ENDED and its last audio) "
        "to drop replays; audio after that is dropped and reported (audio_after_expiry)",
        lambda v: v >= 0, ">= 0",
    ),
    Setting(
        "assembler.state_ttl_ms", 6 * 3_600_000, int,
        "safety net: a contact's keyed state not written for this long is dropped even if its timers "
        "never cleared it (0: off)",
        lambda v: v >= 0, ">= 0",
    ),
    Setting(
        "enrich.max_wait_ms", 2000, int,
        "how long audio waits for the contact's STARTED event", lambda v: v >= 0, ">= 0",
    ),
    Setting("cresta.ws_url", "", str, "Cresta Media Streams WebSocket URL (wss:// in production)"),
    Setting("cresta.auth_url", "", str, "Cresta OAuth domain, e.g. https://auth.us-west-2-prod.cresta.ai"),
    Setting("cresta.media_token", "", str, "per-customer token sent as the Token custom parameter", secret=True),
    Setting(
        "cresta.protocol", "media_streams", str, "stream protocol: media_streams | l16",
        lambda v: v in ("media_streams", "l16"), "media_streams or l16",
    ),
    Setting(
        "cresta.oauth_secret_arn", "", str,
        "Secrets Manager secret with oauthClientId/oauthClientSecret; empty: CRESTA_CLIENT_ID/SECRET env",
    ),
    Setting(
        "cresta.buffer_ms", 5000, int, "per-contact audio buffered while Cresta is away",
        lambda v: v >= 0, ">= 0",
    ),
    Setting(
        "cresta.burst_ms", 60000, int,
        "per-contact audio held while Cresta answers (a backlog replayed after a restart); >= cresta.buffer_ms",
        lambda v: v >= 0, ">= 0",
    ),
    Setting(
        "cresta.stall_ms", 1000, int,
        "an open or send in flight this long counts as Cresta away (cresta.buffer_ms applies again)",
        lambda v: v >= 0, ">= 0",
    ),
    Setting(
        "cresta.close_grace_ms", 5000, int, "how long a closing contact waits for its queued chunks",
        lambda v: v >= 0, ">= 0",
    ),
    Setting(
        "cresta.compression", "deflate", str,
        "WebSocket compression offered to Cresta: deflate (permessage-deflate) | none",
        lambda v: v in ("deflate", "none"), "deflate or none",
    ),
    Setting(
        "cresta.attribute_allowlist", "", str,
        "comma-separated contact attributes sent to Cresta (others stay in the account)",
    ),
    Setting("audit.path", "", str, "audit trail root: file:///… or s3://bucket/prefix"),
    Setting("audit.include_audio", False, _bool, "add the pcm column (PII: off by default)"),
    Setting(
        "audit.all_attributes", False, _bool,
        "keep every contact attribute in the audit (PII); default: only those sent to Cresta",
    ),
    Setting("errors.path", "", str, "root of the error output (JSON lines); default: errors/ beside audit.path"),
    Setting(
        "s3.path_style_access", False, _bool,
        "address s3:// buckets by path, not host name (local S3 such as moto, reached at aws.endpoint_url)",
    ),
    Setting(
        "flink.parallelism", 1, int,
        "job parallelism on a local minicluster; on a cluster (Managed Flink) the cluster's own "
        "parallelism and autoscaling decide", lambda v: v >= 1, ">= 1",
    ),
    Setting(
        "flink.checkpoint_interval_ms", 2000, int,
        "checkpoint interval; Parquet part files are committed on checkpoints",
        lambda v: v >= 100, ">= 100",
    ),
    Setting(
        "flink.bundle_time_ms", 20, int,
        "max time a Python bundle waits before it is processed (bounds added latency)",
        lambda v: v >= 1, ">= 1",
    ),
    Setting("flink.bundle_size", 100, int, "max records per Python bundle", lambda v: v >= 1, ">= 1"),
    Setting(
        "flink.buffer_timeout_ms", 5, int,
        "longest a record waits in a network buffer before it is sent on to the next task "
        "(Flink's default is 100)",
        lambda v: v >= 0, ">= 0",
    ),
    Setting(
        "flink.python_execution_mode", "process", str,
        "where the Python functions run: process (Python worker processes beside the JVM) or thread "
        "(embedded in the JVM)", lambda v: v in ("process", "thread"), "process or thread",
    ),
    Setting(
        "flink.rest_port", 0, int,
        "local minicluster only: port of Flink's REST API (job status, metrics); 0: Flink's own choice",
        lambda v: 0 <= v <= 65535, "0..65535",
    ),
    Setting(
        "flink.working_dir", "", str,
        "local minicluster only: where Flink keeps its working files (a blob store with the job's jars, "
        "~130 MB a run, left behind when the job is stopped); empty: the system temp directory",
    ),
    Setting(
        "flink.checkpoint_dir", "", str,
        "local minicluster only: where checkpoints are written (a folder); empty: checkpoints/ in "
        "flink.working_dir, or a new folder in the system temp directory",
    ),
    Setting("flink.jar", "", str, "the shaded connector jar (a path or file:// URL)"),
    Setting(
        "flink.plugins_dir", "", str,
        "Flink plugins folder loaded in local runs (the S3 file system); default: deploy/flink/target/plugins",
    ),
    Setting(
        "flink.restart_attempts", 3, int,
        "restarts (fixed delay, from the last checkpoint) before a failing job gives up",
        lambda v: v >= 0, ">= 0",
    ),
    Setting("flink.restart_delay_ms", 2000, int, "wait before each restart", lambda v: v >= 0, ">= 0"),
    Setting("job.ready_file", "", str, "touched once the job's Python operators are up (local runs)"),
    Setting(
        "job.fail_once_file", "", str,
        "testing: once this file exists, the next record fails its task; the file is removed first, so "
        "the failure happens once across restarts",
    ),
    Setting("connector.queue_url", "", str, "SQS queue of contacts to read (required by the worker)",
            env_aliases=("CONNECTOR_QUEUE_URL",)),
    Setting(
        "connector.checkpoint_table", "", str,
        "DynamoDB table of contact checkpoints; without it a contact that comes back to the queue "
        "is read again from its start", env_aliases=("CHECKPOINT_TABLE",),
    ),
    Setting("connector.kvs_media_endpoint", "", str, "GetMedia endpoint replacing GetDataEndpoint's answer "
            "(local stack only)", env_aliases=("KVS_MEDIA_ENDPOINT",)),
    Setting(
        "connector.max_idle_s", 10.0, float,
        "a contact whose stream brings no new data this long is over (when Connect's DISCONNECTED "
        "does not end it first)", lambda v: v >= 0, ">= 0",
    ),
    Setting(
        "connector.checkpoint_interval_s", 5.0, float,
        "at most one checkpoint per contact this often while audio flows; 0: after every fragment",
        lambda v: v >= 0, ">= 0",
    ),
    Setting(
        "connector.visibility_timeout_s", 60, int,
        "contacts being read stay invisible on the queue this long, extended while reading",
        lambda v: 1 <= v <= 43_200, "1..43200 (SQS's limit)",
    ),
    Setting(
        "connector.max_concurrent_contacts", 200, int, "contacts one worker reads at once",
        lambda v: v >= 1, ">= 1",
    ),
    Setting(
        "connector.receivers", 4, int,
        "threads long-polling the work queue at once (contacts that start together are picked up faster)",
        lambda v: 1 <= v <= 50, "1..50",
    ),
)

SETTING_BY_KEY = {setting.key: setting for setting in SETTINGS}


class PipelineConfig(Mapping[str, Any]):
    """Validated settings, read like a mapping: ``config["assembler.chunk_ms"]``."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def loggable(self) -> dict[str, Any]:
        """The settings as they may appear in logs: credentials show only whether they are set."""
        return {
            key: ("<set>" if value else "<empty>") if SETTING_BY_KEY[key].secret else value
            for key, value in self._values.items()
        }

    def to_property_groups(self) -> list[dict[str, Any]]:
        """This config in the Managed Flink ``application_properties.json`` shape."""
        groups: dict[str, dict[str, str]] = {}
        for key, value in self._values.items():
            group, name = key.split(".", 1)
            groups.setdefault(group, {})[name] = str(value).lower() if isinstance(value, bool) else str(value)
        return [{"PropertyGroupId": g, "PropertyMap": m} for g, m in groups.items()]


def add_setting_flags(parser: argparse.ArgumentParser, flags: Mapping[str, str]) -> None:
    """One option per ``flag → setting key``, its help taken from the setting."""
    for flag, key in flags.items():
        setting = SETTING_BY_KEY[key]
        parser.add_argument(flag, dest=key, metavar="VALUE",
                            help=f"{setting.doc} [{key}; env {', '.join(setting.env_names)}; "
                                 f"default {setting.default!r}]")


def flag_overrides(args: argparse.Namespace, flags: Mapping[str, str]) -> dict[str, Any]:
    """The settings given on the command line, for ``load_config(overrides=…)``."""
    return {key: getattr(args, key) for key in flags.values() if getattr(args, key) is not None}


def errors_path(config: Mapping[str, Any]) -> str:
    """``errors.path``, or an ``errors`` folder beside the audit trail's root."""
    if config["errors.path"]:
        return config["errors.path"]
    parent, _, _ = config["audit.path"].rstrip("/").rpartition("/")
    return f"{parent}/errors"


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> PipelineConfig:
    """Defaults ← file (or Managed Flink's properties when present) ← env ← overrides."""
    values = {s.key: s.default for s in SETTINGS}
    file_path = Path(path) if path else (MANAGED_FLINK_PROPERTIES if MANAGED_FLINK_PROPERTIES.exists() else None)
    if file_path is not None:
        values.update(_validate(_read_property_groups(file_path), str(file_path)))
    env = os.environ if env is None else env
    from_env = {}
    for setting in SETTINGS:
        name = next((name for name in setting.env_names if name in env), None)
        if name is not None:
            from_env[setting.key] = env[name]
    values.update(_validate(from_env, "environment"))
    values.update(_validate(overrides or {}, "override"))
    return PipelineConfig(values)


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace(".", "_")


def _read_property_groups(path: Path) -> dict[str, str]:
    try:
        groups = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(groups, list):
        raise ConfigError(f"{path}: expected a list of property groups")
    flat: dict[str, str] = {}
    for index, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("PropertyMap", {}), dict):
            raise ConfigError(f"{path}: property group #{index} is not {{PropertyGroupId, PropertyMap}}")
        group_id = group.get("PropertyGroupId")
        for name, value in (group.get("PropertyMap") or {}).items():
            key = f"{group_id}.{name}"
            # Managed Flink's own run options live in the same file; they are not ours.
            if group_id == MANAGED_FLINK_RUN_OPTIONS:
                continue
            flat[key] = value
    return flat


def _validate(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        setting = SETTING_BY_KEY.get(key)
        if setting is None:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        try:
            parsed = setting.parse(value) if isinstance(value, str) else value
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
        expected_type = type(setting.default)
        if expected_type is float and type(parsed) is int:
            parsed = float(parsed)
        if type(parsed) is not expected_type:
            raise ConfigError(f"{source}: {key}: expected {expected_type.__name__}, got {value!r}")
        if not setting.check(parsed):
            raise ConfigError(f"{source}: {key} = {value!r}, expected {setting.expectation}")
        out[key] = parsed
    return out
