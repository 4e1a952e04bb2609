"""The PyFlink job graph: wiring only; the logic lives in ``pipeline``.

    audio-frames ─┐
    contact-events┴─▶ key_by(ContactId) ─▶ AssembleAndDeliverFunction
                      (ContactAssemblerFunction → CrestaDeliveryFunction) ─▶ FileSink(Parquet, dt=…/hour=…)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import site
import sys
import tempfile
from pathlib import Path

from pyflink.common import Configuration, Encoder, Types
from pyflink.datastream import CheckpointingMode, StreamExecutionEnvironment
from pyflink.datastream.connectors.file_system import (
    BucketAssigner,
    FileSink,
    OutputFileConfig,
    RollingPolicy,
)
from pyflink.datastream.formats.parquet import ParquetBulkWriters
from pyflink.java_gateway import get_gateway
from pyflink.table import DataTypes
from pyflink.util.java_utils import is_instance_of

from connectors.kinesis.flink_source import raw_bytes_consumer
from jobs.functions import AUDIO, ERRORS, EVENT, AssembleAndDeliverFunction, RecordDecoder
from pipeline.audit import ColumnKind, audit_columns
from pipeline.config import SETTINGS, ConfigError, PipelineConfig, errors_path, load_config

log = logging.getLogger("jobs.audio_job")

JOB_NAME = "cresta-contact-audio"
#: Where the project's packages (``jobs``, ``pipeline``, ``connectors``) are.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JAR = PROJECT_ROOT / "deploy/flink/target/cresta-pipeline-flink-deps.jar"
#: Where the Maven build puts Flink plugins for local runs: s3-fs-hadoop/flink-s3-fs-hadoop-*.jar.
DEFAULT_PLUGINS_DIR = DEFAULT_JAR.parent / "plugins"
S3_SCHEMES = ("s3://", "s3a://")
#: What ``get_execution_environment`` returns outside a cluster: a local minicluster.
LOCAL_ENVIRONMENT_CLASS = "org.apache.flink.streaming.api.environment.LocalStreamEnvironment"

_FLINK_TYPES = {
    ColumnKind.STRING: (Types.STRING, DataTypes.STRING),
    ColumnKind.INT: (Types.INT, DataTypes.INT),
    ColumnKind.BIGINT: (Types.LONG, DataTypes.BIGINT),
    ColumnKind.DOUBLE: (Types.DOUBLE, DataTypes.DOUBLE),
    ColumnKind.BOOLEAN: (Types.BOOLEAN, DataTypes.BOOLEAN),
    # java.sql.Timestamp rather than LocalDateTime: the embedded interpreter of thread mode
    # hands datetimes to the JVM only as the former, and worker processes can do either.
    ColumnKind.TIMESTAMP_MS: (Types.SQL_TIMESTAMP, lambda: DataTypes.TIMESTAMP(3).bridged_to("java.sql.Timestamp")),
    ColumnKind.JSON_MAP: (Types.STRING, DataTypes.STRING),
    ColumnKind.BYTES: (lambda: Types.PRIMITIVE_ARRAY(Types.BYTE()), DataTypes.BYTES),
}


def audit_type_info(include_audio: bool):
    columns = audit_columns(include_audio)
    return Types.ROW_NAMED([c.name for c in columns], [_FLINK_TYPES[c.kind][0]() for c in columns])


def audit_row_type(include_audio: bool):
    columns = audit_columns(include_audio)
    return DataTypes.ROW([DataTypes.FIELD(c.name, _FLINK_TYPES[c.kind][1]()) for c in columns])


def audit_sink(config: PipelineConfig) -> FileSink:
    include_audio = config["audit.include_audio"]
    writer = ParquetBulkWriters.for_row_type(audit_row_type(include_audio), utc_timestamp=True)
    return (
        FileSink.for_bulk_format(config["audit.path"], writer)
        # Partitioned by the hour the row was written, in UTC (hive style).
        .with_bucket_assigner(BucketAssigner.date_time_bucket_assigner("'dt='yyyy-MM-dd'/hour='HH", "UTC"))
        .with_output_file_config(
            OutputFileConfig.builder().with_part_prefix("audit").with_part_suffix(".parquet").build()
        )
        .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
        .build()
    )


def build_job(env: StreamExecutionEnvironment, config: PipelineConfig) -> None:
    raw = Types.PRIMITIVE_ARRAY(Types.BYTE())
    audio_stream, events_stream = config["kinesis.audio_frames_stream"], config["kinesis.contact_events_stream"]
    audio = env.add_source(raw_bytes_consumer(audio_stream, config), audio_stream, raw).process(
        RecordDecoder(AUDIO, audio_stream)
    ).name("decode-audio-frames")
    events = env.add_source(raw_bytes_consumer(events_stream, config), events_stream, raw).process(
        RecordDecoder(EVENT, events_stream)
    ).name("decode-contact-events")
    delivered = (
        audio.union(events)
        .key_by(lambda tagged: tagged[1], key_type=Types.STRING())
        .process(AssembleAndDeliverFunction(config), output_type=audit_type_info(config["audit.include_audio"]))
        .name("assemble-and-deliver-to-cresta")
    )
    delivered.sink_to(audit_sink(config)).name("audit-parquet")
    (
        audio.get_side_output(ERRORS)
        .union(events.get_side_output(ERRORS), delivered.get_side_output(ERRORS))
        .sink_to(errors_sink(config))
        .name("errors-jsonl")
    )


def errors_sink(config: PipelineConfig) -> FileSink:
    return (
        FileSink.for_row_format(errors_path(config), Encoder.simple_string_encoder())
        .with_bucket_assigner(BucketAssigner.date_time_bucket_assigner("'dt='yyyy-MM-dd'/hour='HH", "UTC"))
        .with_output_file_config(OutputFileConfig.builder().with_part_prefix("errors").with_part_suffix(".jsonl").build())
        .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
        .build()
    )


def flink_configuration(config: PipelineConfig) -> Configuration:
    conf = Configuration()
    # On Managed Flink the run option "jarfile" brings the jar; a source checkout has `make jar`'s.
    jar = config["flink.jar"] or (str(DEFAULT_JAR) if DEFAULT_JAR.exists() else "")
    if jar:
        conf.set_string("pipeline.jars", jar if "://" in jar else Path(jar).resolve().as_uri())
    conf.set_string("python.fn-execution.bundle.time", str(config["flink.bundle_time_ms"]))
    conf.set_string("python.fn-execution.bundle.size", str(config["flink.bundle_size"]))
    conf.set_string("python.execution-mode", config["flink.python_execution_mode"])
    if config["flink.working_dir"]:
        conf.set_string("process.working-dir", config["flink.working_dir"])
    if config["flink.rest_port"]:
        # A local minicluster's REST API (job status, metrics) on a known port. Its metric
        # store refreshes at most this often when asked (Flink's default is 10 s).
        conf.set_string("rest.bind-port", str(config["flink.rest_port"]))
        conf.set_string("metrics.fetcher.update-interval", "1000")
    # A failed task restarts the job from its last completed checkpoint: Kinesis positions,
    # the assemblers' state and the FileSink's pending files come back together.
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(config["flink.restart_attempts"]))
    conf.set_string("restart-strategy.fixed-delay.delay", f"{config['flink.restart_delay_ms']} ms")
    if config["aws.endpoint_url"]:
        # Local runs: Python workers must use this interpreter (the venv), not `python` on PATH.
        conf.set_string("python.executable", sys.executable)
        if config["flink.python_execution_mode"] == "thread":
            # The interpreter embedded in the JVM starts from the base Python's paths,
            # without the virtualenv's site-packages (PyFlink) or this project.
            conf.set_string("python.pythonpath", os.pathsep.join([str(PROJECT_ROOT), *site.getsitepackages()]))
    return conf


def create_environment(config: PipelineConfig) -> StreamExecutionEnvironment:
    if config["aws.endpoint_url"]:
        # The local Kinesis endpoint (moto) speaks JSON only; the AWS SDK defaults to CBOR.
        os.environ["AWS_CBOR_DISABLE"] = "true"
        os.environ["JVM_ARGS"] = " ".join(
            [os.environ.get("JVM_ARGS", ""), "-Dcom.amazonaws.sdk.disableCbor=true", "-Duser.timezone=UTC"]
        ).strip()
    os.environ.setdefault("TZ", "UTC")
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(config))
    env.enable_checkpointing(config["flink.checkpoint_interval_ms"], CheckpointingMode.EXACTLY_ONCE)
    env.set_buffer_timeout(config["flink.buffer_timeout_ms"])
    if is_instance_of(env._j_stream_execution_environment, LOCAL_ENVIRONMENT_CLASS):
        if not config["flink.jar"] and not DEFAULT_JAR.exists():
            raise ConfigError(f"no connector jar at {DEFAULT_JAR}: `make jar` builds it (or set flink.jar)")
        # Only a local minicluster takes the job's parallelism: on a cluster (Managed Flink)
        # the application's parallelism and autoscaling decide, and setting it would pin it.
        env.set_parallelism(config["flink.parallelism"])
        # A minicluster keeps checkpoints in the JobManager's memory unless told otherwise,
        # and fails every checkpoint of a task whose state passes 5 MB: ~150 calls with
        # chunks waiting for Cresta did, and the job stopped. (Managed Flink brings its own
        # checkpoint storage.)
        storage = Configuration()
        storage.set_string("execution.checkpointing.storage", "filesystem")
        storage.set_string("execution.checkpointing.dir", local_checkpoint_dir(config).as_uri())
        env.configure(storage)
        initialize_local_s3(config)
    return env


def local_checkpoint_dir(config: PipelineConfig) -> Path:
    if config["flink.checkpoint_dir"]:
        return Path(config["flink.checkpoint_dir"]).resolve()
    if config["flink.working_dir"]:
        return Path(config["flink.working_dir"]).resolve() / "checkpoints"
    return Path(tempfile.mkdtemp(prefix="cresta-pipeline-checkpoints-"))


def initialize_local_s3(config: PipelineConfig) -> None:
    """Loads the S3 file system plugin into a local minicluster, configured from ``config``.

    A Flink cluster loads file systems from its plugins folder at start, configured from
    its own configuration. A local PyFlink minicluster does neither: nothing calls
    ``FileSystem.initialize``, and the first ``FileSystem.get`` initialises it without
    plugins or settings (PyFlink also points ``FLINK_PLUGINS_DIR`` at its own folder).
    So the job does it, in the gateway JVM the minicluster runs in, before the job is
    built. Credentials are not configured: S3A's default chain reads them from the
    environment. Managed Flink brings its own S3 file system; this runs only locally.
    """
    if not any(path.startswith(S3_SCHEMES) for path in (config["audit.path"], errors_path(config))):
        return
    plugins = Path(config["flink.plugins_dir"] or DEFAULT_PLUGINS_DIR)
    if not any(plugins.glob("*/flink-s3-fs-hadoop-*.jar")):
        raise ConfigError(f"no S3 file system plugin in {plugins}/*/ (`make -B jar` builds it)")
    settings = Configuration()
    if config["aws.endpoint_url"]:
        settings.set_string("s3.endpoint", config["aws.endpoint_url"])
    settings.set_string("s3.path.style.access", str(config["s3.path_style_access"]).lower())
    jvm = get_gateway().jvm
    j_settings = settings._j_configuration
    descriptors = jvm.org.apache.flink.core.plugin.DirectoryBasedPluginFinder(
        jvm.java.io.File(str(plugins.resolve())).toPath()
    ).findPlugins()
    plugin_manager = jvm.org.apache.flink.core.plugin.DefaultPluginManager(
        descriptors, jvm.org.apache.flink.configuration.CoreOptions.getPluginParentFirstLoaderPatterns(j_settings)
    )
    jvm.org.apache.flink.core.fs.FileSystem.initialize(j_settings, plugin_manager)
    log.info("S3 file system loaded from %s (endpoint %s)", plugins, config["aws.endpoint_url"] or "AWS")


def run(config: PipelineConfig) -> None:
    if not config["audit.path"]:
        raise ConfigError("audit.path is required")
    env = create_environment(config)
    build_job(env, config)
    log.info("starting %s with %s", JOB_NAME, json.dumps(config.loggable(), default=str))
    client = env.execute_async(JOB_NAME)
    log.info("job %s submitted", client.get_job_id())
    client.get_job_execution_result().result()


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    settings = "\n".join(f"  {s.key} = {s.default!r}\n      {s.doc}" for s in SETTINGS)
    parser = argparse.ArgumentParser(
        prog="cresta-pipeline job run",
        description="Run the PyFlink job (on a local minicluster, or as Managed Flink's entry point).",
        epilog=(
            "settings (file < env CRESTA_PIPELINE_<KEY with dots as underscores> < --set):\n" + settings
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="properties file (Managed Flink application_properties.json shape)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Building the job imports Beam, which sets the root logger to WARNING: keep ours at INFO.
    logging.getLogger("jobs").setLevel(logging.INFO)
    try:
        config = load_config(args.config, overrides=parse_overrides(args.set))
        run(config)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
