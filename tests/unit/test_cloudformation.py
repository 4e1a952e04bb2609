"""The CloudFormation templates under ``deploy/cloudformation``: cfn-lint clean, and the
deployment's promises checked on the parsed template (cfn-lint's YAML loader, which
reads ``!Ref``, ``!Sub`` and the other short forms).

The checks tie the template to the code it deploys: property group keys to
``pipeline.config``, the workers' environment to the settings' aliases, the work queue
to ``contact_flow_handler``'s FIFO ids, the event rule to the contact flow's tag and the
handler's event types, the failing-contacts metric filter to what the worker logs.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from pathlib import Path

import pytest
from cfnlint.api import ManualArgs, lint_file
from cfnlint.decode import cfn_yaml

from connectors.connect.contact_events import HANDLED_EVENT_TYPES
from connectors.kvs.checkpoints import ATTR_CONTACT_ID, ATTR_EXPIRES_AT
from connectors.kvs.media import MediaSourceError
from connectors.kvs.worker import ReadSettings, read_contact
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.runners.common import NameContext
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory
from pyflink.fn_execution.datastream.process.runtime_context import StreamingRuntimeContext
from pyflink.fn_execution.metrics.process.metric_impl import GenericMetricGroup

from jobs import package
from jobs.functions import _JobMetrics
from pipeline.audit import DeliveryStatus
from pipeline.config import SETTING_BY_KEY
from pipeline.metrics import DELIVERIES, DELIVERY_LATENCY_P99, FRAMES_IN, JOB_METRICS
from pipeline.records import ContactWork

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((ROOT / "deploy" / "cloudformation").glob("*.yaml"))
PIPELINE = ROOT / "deploy" / "cloudformation" / "pipeline.yaml"
FLOW = ROOT / "deploy" / "connect" / "contact-flow.json"
RUN_OPTIONS_GROUP = package.RUN_OPTIONS_GROUP
#: Regions Amazon Connect runs in: the template must lint in each, naming none of them.
LINT_REGIONS = ["us-east-1", "us-west-2", "eu-west-2", "eu-central-1", "ap-southeast-2", "ap-northeast-1", "ca-central-1"]

#: Actions that read or write the pipeline's data: never granted on every resource.
DATA_PLANE_ACTIONS = (
    "kinesis:PutRecord*", "kinesis:GetRecords", "sqs:*Message*", "dynamodb:*Item", "s3:GetObject",
    "s3:PutObject", "secretsmanager:GetSecretValue", "kinesisvideo:GetMedia", "kms:Decrypt",
    "kms:GenerateDataKey*",
)
#: Actions AWS authorises only on "*" (no resource-level permissions).
STAR_ONLY_ACTIONS = {"cloudwatch:PutMetricData"}


@pytest.fixture(scope="module")
def template() -> dict:
    return cfn_yaml.load(str(PIPELINE))


@pytest.fixture(scope="module")
def resources(template) -> dict:
    return template["Resources"]


def of_type(resources: dict, resource_type: str) -> dict[str, dict]:
    return {name: r for name, r in resources.items() if r["Type"] == resource_type}


def ref(name: str) -> dict:
    return {"Ref": name}


def get_att(name: str, attribute: str) -> dict:
    return {"Fn::GetAtt": [name, attribute]}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda path: path.name)
def test_the_template_is_cfn_lint_clean_in_every_connect_region(path):
    matches = lint_file(path, config=ManualArgs(regions=LINT_REGIONS))
    assert [str(match) for match in matches] == []


def test_the_template_fits_in_a_request():
    # `cresta-pipeline deploy` sends it as TemplateBody, which CloudFormation takes up to
    # 51,200 bytes (beyond that it must come from S3).
    assert len(PIPELINE.read_bytes()) <= 51_200


def strings(node, key: str = ""):
    """Every string the template deploys (descriptions, which name examples, left out)."""
    if isinstance(node, dict):
        for child_key, child in node.items():
            if not child_key.endswith("Description"):
                yield from strings(child, child_key)
    elif isinstance(node, list):
        for child in node:
            yield from strings(child, key)
    elif isinstance(node, str):
        yield node


def test_nothing_names_a_region_an_account_or_the_aws_partition(template):
    for text in strings({k: v for k, v in template.items() if k != "Metadata"}):
        assert not re.search(r"\b[a-z]{2}-(?:gov-)?[a-z]+-\d\b", text), f"a region in {text!r}: use AWS::Region"
        assert not re.search(r"\b\d{12}\b", text), f"an account id in {text!r}: use AWS::AccountId"
        assert not text.startswith("arn:aws:"), f"a partition in {text!r}: use arn:${{AWS::Partition}}:"


# --- IAM --------------------------------------------------------------------------------


def policy_statements(resources: dict) -> list[tuple[str, dict]]:
    """(resource name, statement) of every identity policy, both branches of an Fn::If."""
    found = []
    for name, resource in resources.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            documents = [policy["PolicyDocument"] for policy in properties.get("Policies", [])]
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents = [properties["PolicyDocument"]]
        else:
            continue
        for document in documents:
            for statement in document["Statement"]:
                if "Fn::If" in statement:
                    _, *branches = statement["Fn::If"]
                    found += [(name, branch) for branch in branches if branch != ref("AWS::NoValue")]
                else:
                    found.append((name, statement))
    return found


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_no_data_plane_action_is_granted_on_every_resource(resources):
    statements = policy_statements(resources)
    granted = set()
    for name, statement in statements:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        actions = as_list(statement["Action"])
        granted.update(actions)
        data_plane = [
            action for action in actions
            if any(fnmatch.fnmatchcase(action, pattern) or fnmatch.fnmatchcase(pattern, action)
                   for pattern in DATA_PLANE_ACTIONS)
        ]
        if data_plane:
            assert "*" not in as_list(statement["Resource"]), f"{name}: {data_plane} on '*'"
        if "*" in as_list(statement["Resource"]):
            assert set(actions) <= STAR_ONLY_ACTIONS, f"{name}: {actions} on '*'"
        assert not any(action.endswith(":*") for action in actions), f"{name}: a whole service"
    # Not vacuous: the pipeline's reads and writes are all among the statements checked.
    assert {"kinesis:PutRecord", "kinesis:PutRecords", "kinesis:GetRecords", "sqs:SendMessage",
            "sqs:ReceiveMessage", "dynamodb:UpdateItem", "dynamodb:GetItem", "s3:PutObject",
            "secretsmanager:GetSecretValue", "kinesisvideo:GetMedia", "kms:Decrypt"} <= granted


def test_the_workers_read_connect_streams_by_the_instances_prefix_only(resources):
    statements = [s for _, s in policy_statements(resources) if "kinesisvideo:GetMedia" in as_list(s["Action"])]
    (statement,) = statements
    arn = statement["Resource"]["Fn::Sub"]
    assert arn.endswith(":stream/${KvsStreamPrefix}*/*")
    assert arn.startswith("arn:${AWS::Partition}:kinesisvideo:${AWS::Region}:${AWS::AccountId}:")


# --- Alarms -----------------------------------------------------------------------------


def alarm_metrics(alarm: dict) -> list[dict]:
    """The metrics an alarm watches: its own, or those of its metric math."""
    properties = alarm["Properties"]
    if "MetricName" in properties:
        return [properties]
    return [query["MetricStat"]["Metric"] for query in properties["Metrics"] if "MetricStat" in query]


def alarms_on(resources: dict, metric_name: str, **dimensions) -> list[str]:
    found = []
    for name, alarm in of_type(resources, "AWS::CloudWatch::Alarm").items():
        for metric in alarm_metrics(alarm):
            present = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            if metric["MetricName"] == metric_name and all(present.get(k) == v for k, v in dimensions.items()):
                found.append(name)
    return found


def test_every_stream_has_an_iterator_age_alarm(resources):
    for stream in of_type(resources, "AWS::Kinesis::Stream"):
        assert alarms_on(resources, "GetRecords.IteratorAgeMilliseconds", StreamName=ref(stream)), stream


def test_flink_checkpoint_failures_and_downtime_have_alarms(resources):
    assert alarms_on(resources, "numberOfFailedCheckpoints", Application=ref("FlinkApplication"))
    assert alarms_on(resources, "downtime", Application=ref("FlinkApplication"))


def test_cresta_failed_and_dropped_chunks_and_the_delivery_p99_have_alarms(resources):
    rate_alarms = set(alarms_on(resources, DELIVERIES.name, status="FAILED"))
    assert rate_alarms & set(alarms_on(resources, DELIVERIES.name, status="DROPPED"))
    assert alarms_on(resources, DELIVERY_LATENCY_P99.name, Application=ref("FlinkApplication"))


#: Managed Flink's own metrics that alarms and the dashboard read.
FLINK_METRICS = {"downtime", "numberOfFailedCheckpoints", "lastCheckpointDuration", "KPUs"}
#: The values the job gives a dimension; "reason" takes the error reasons, open-ended.
DIMENSION_VALUES = {"status": [status.value for status in DeliveryStatus], "reason": ["bad_magic"]}


def exported_job_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """What the job's functions register, as Managed Flink exports it to CloudWatch:
    metric name → (kind, the dimensions it has beside Application).

    Every catalogue metric is registered through ``_JobMetrics`` on PyFlink's Python metric
    group (what a Python worker hands a function) and read back from Beam's metrics
    container: the updates the worker sends to Flink's JVM. Their namespace is the group
    path, names then types, which Flink's ``FlinkMetricContainer`` replays as
    ``addGroup(name)`` / ``addGroup(key, value)``; a meter's time span comes last. AWS
    exports metrics under a group named kinesisanalytics, with the key/value groups below it
    as dimensions.
    """
    sampler = statesampler.StateSampler("job", CounterFactory())
    statesampler.set_current_tracker(sampler)
    container = MetricsContainer("operator")
    base = GenericMetricGroup(None, None)
    context = StreamingRuntimeContext("operator", "operator (1/1)", 1, 128, 0, 0, {}, base, None, False)
    try:
        with sampler.scoped_state(NameContext("operator"), "process", metrics_container=container):
            metrics = _JobMetrics(context)
            gauges = [spec for spec in JOB_METRICS if spec.kind == "gauge"]
            for p50, p99 in zip(gauges[::2], gauges[1::2]):
                assert (p50.name.endswith("_p50"), p99.name.endswith("_p99")) == (True, True)
                metrics.percentiles(p50, p99)
            for spec in (spec for spec in JOB_METRICS if spec.kind != "gauge"):
                for value in DIMENSION_VALUES.get(spec.dimension, [None]):
                    metrics.inc(spec, label=(spec.dimension, value) if value else None)
            groups = [base]
            while groups:  # what a Python worker does with gauges when a bundle finishes
                group = groups.pop()
                for name, read in group._flink_gauge.items():
                    group._beam_gauge[name].set(read())
                groups.extend(group._sub_groups)
    finally:
        statesampler.set_current_tracker(None)
    updates = container.get_cumulative()
    exported: dict[str, tuple[str, set[str]]] = {}
    for key, kind in [*((key, "counter") for key in updates.counters), *((key, "gauge") for key in updates.gauges)]:
        namespace = json.loads(key.metric.namespace)
        if len(namespace) % 2:
            namespace.pop()
            kind = "meter"
        names, types = namespace[: len(namespace) // 2], namespace[len(namespace) // 2:]
        assert (names[0].lower(), types[0]) == ("kinesisanalytics", "MetricGroupType.generic"), key
        assert types[1:] == ["MetricGroupType.key", "MetricGroupType.value"] * (len(types) // 2), key
        exported.setdefault(key.metric.name, (kind, set()))[1].update(names[1::2])
    return {name: (kind, frozenset(dimensions)) for name, (kind, dimensions) in exported.items()}


def test_the_job_registers_every_catalogue_metric_where_managed_flink_exports_it():
    exported = exported_job_metrics()
    assert exported == {spec.name: (spec.kind, frozenset({spec.dimension} - {""})) for spec in JOB_METRICS}


def test_a_metric_is_split_only_by_the_dimension_the_catalogue_names():
    context = StreamingRuntimeContext("operator", "operator (1/1)", 1, 128, 0, 0, {}, GenericMetricGroup(None, None), None, False)
    metrics = _JobMetrics(context)
    with pytest.raises(ValueError, match="status"):
        metrics.inc(DELIVERIES, label=("reason", "bad_magic"))
    with pytest.raises(ValueError, match="status"):
        metrics.inc(DELIVERIES)
    with pytest.raises(ValueError):
        metrics.inc(FRAMES_IN, label=("status", "SENT"))


def job_metrics_read_by_the_stack(resources) -> list[tuple[str, dict]]:
    """(metric name, dimensions) of every AWS/KinesisAnalytics metric an alarm or the
    dashboard reads, other than Managed Flink's own."""
    read = [
        (metric["MetricName"], {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])})
        for alarm in of_type(resources, "AWS::CloudWatch::Alarm").values() for metric in alarm_metrics(alarm)
        if metric["Namespace"] == "AWS/KinesisAnalytics"
    ]
    body = resources["PipelineDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    dashboard = json.loads(body)  # every ${…} is inside a JSON string
    for widget in dashboard["widgets"]:
        for row in widget["properties"]["metrics"]:
            if row[0] == "AWS/KinesisAnalytics":
                pairs = [item for item in row[2:] if isinstance(item, str)]
                dimensions = dict(zip(pairs[::2], pairs[1::2]))
                if dimensions.get("Application") == "${FlinkApplication}":
                    dimensions["Application"] = ref("FlinkApplication")
                read.append((row[1], dimensions))
    return [(name, dimensions) for name, dimensions in read if name not in FLINK_METRICS]


def test_the_alarms_and_dashboard_read_the_metrics_the_job_exports(resources):
    exported = exported_job_metrics()
    read = job_metrics_read_by_the_stack(resources)
    assert {name for name, _ in read} >= {DELIVERIES.name, DELIVERY_LATENCY_P99.name}
    for name, dimensions in read:
        assert name in exported, f"{name}: not a metric of pipeline/metrics.py"
        assert dimensions.pop("Application") == ref("FlinkApplication"), name
        assert set(dimensions) == exported[name][1], (name, dimensions)
        assert all(value in DIMENSION_VALUES[key] for key, value in dimensions.items()), (name, dimensions)


def test_every_alarm_notifies_the_alarm_topic(resources):
    for name, alarm in of_type(resources, "AWS::CloudWatch::Alarm").items():
        assert ref("AlarmTopic") in alarm["Properties"]["AlarmActions"], name


def filter_terms(pattern: str) -> list[str]:
    """The terms of a CloudWatch Logs filter pattern for unstructured events (all must occur)."""
    terms = re.findall(r'"([^"]*)"|(\S+)', pattern)
    return [quoted or bare for quoted, bare in terms]


class _FailingSource:
    def __init__(self, error: MediaSourceError) -> None:
        self.error = error

    def open(self, stream_arn, start_selector):
        raise self.error


def worker_log_lines(caplog, error: MediaSourceError) -> list[str]:
    """What the worker logs for one contact whose GetMedia fails, as awslogs stores it
    (the time first, then ``LEVEL logger message``, the worker's log format)."""
    work = ContactWork(
        contact_id="c-1", stream_arn="arn:aws:kinesisvideo:r:1:stream/connect-p-1/1",
        start_fragment_number="1", instance_id="i-1", start_timestamp_ms=1,
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="connectors.kvs.worker"):
        read_contact(
            work, _FailingSource(error), lambda data, key: None,
            settings=ReadSettings(max_failed_connects=0, retry_initial_s=0, retry_max_s=0),
        )
    return [f"2024-09-18 16:45:00,123 {r.levelname} {r.name} {r.getMessage()}" for r in caplog.records]


def test_failing_contacts_are_counted_from_the_workers_log_and_alarmed(resources, caplog):
    (metric_filter,) = of_type(resources, "AWS::Logs::MetricFilter").values()
    properties = metric_filter["Properties"]
    assert properties["LogGroupName"] == ref("ConnectorLogs")
    (transformation,) = properties["MetricTransformations"]
    alarmed = [
        alarm for alarm in of_type(resources, "AWS::CloudWatch::Alarm").values()
        if alarm["Properties"].get("MetricName") == transformation["MetricName"]
        and alarm["Properties"].get("Namespace") == transformation["MetricNamespace"]
    ]
    assert alarmed

    terms = filter_terms(properties["FilterPattern"])

    def counted(line: str) -> bool:
        return all(term in line for term in terms)

    failed = worker_log_lines(caplog, MediaSourceError("ResourceNotFoundException", "gone", retryable=False))
    assert [line for line in failed if counted(line)] == [line for line in failed if "reason=stream_not_found" in line]
    assert sum(map(counted, failed)) == 1
    # A read handed back to the queue is retried, not failed; a normal end is INFO.
    retried = worker_log_lines(caplog, MediaSourceError("ClientLimitExceededException", "busy", retryable=True))
    assert any("will retry" in line for line in retried) and not any(map(counted, retried))
    normal_end = next(line for line in failed if counted(line)).replace(" WARNING ", " INFO ")
    assert not counted(normal_end)


# --- Flink application ------------------------------------------------------------------


@pytest.fixture(scope="module")
def flink(resources) -> dict:
    (application,) = of_type(resources, "AWS::KinesisAnalyticsV2::Application").values()
    return application["Properties"]


def property_groups(flink: dict) -> dict[str, dict]:
    groups = flink["ApplicationConfiguration"]["EnvironmentProperties"]["PropertyGroups"]
    return {group["PropertyGroupId"]: group["PropertyMap"] for group in groups}


def test_the_flink_application_runs_the_packaged_zip_on_flink_1_20(flink, resources):
    assert flink["RuntimeEnvironment"] == "FLINK-1_20"
    # The files of the zip `cresta-pipeline package` builds (tests/unit/test_deploy_packaging.py
    # runs its entry from them).
    assert property_groups(flink)[RUN_OPTIONS_GROUP] == package.run_options()
    code = flink["ApplicationConfiguration"]["ApplicationCodeConfiguration"]
    assert code["CodeContentType"] == "ZIPFILE"
    assert code["CodeContent"]["S3ContentLocation"] == {
        "BucketARN": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}"}, "FileKey": ref("FlinkApplicationKey"),
    }
    (statement,) = [
        statement for name, statement in policy_statements(resources)
        if name == "FlinkRole" and "s3:GetObject" in as_list(statement["Action"])
        and statement["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/${FlinkApplicationKey}"}
    ]
    assert statement["Effect"] == "Allow"


def test_the_lambdas_run_handlers_of_the_packaged_lambda_zip(resources):
    for function in of_type(resources, "AWS::Lambda::Function").values():
        properties = function["Properties"]
        assert properties["Code"] == {"S3Bucket": ref("ArtifactBucket"), "S3Key": ref("LambdaCodeKey")}
        assert properties["Handler"].rpartition(".")[0] in package.LAMBDA_HANDLER_MODULES


def test_every_property_is_a_setting_of_the_pipelines_config(flink):
    keys = [
        f"{group}.{name}" for group, properties in property_groups(flink).items() if group != RUN_OPTIONS_GROUP
        for name in properties
    ]
    assert set(keys) <= set(SETTING_BY_KEY), set(keys) - set(SETTING_BY_KEY)
    # The zip's application_properties.json template lists the same keys.
    assert sorted(keys) == sorted(package.DEPLOYMENT_SETTINGS)


def test_the_job_reads_the_stacks_streams_and_writes_to_its_bucket(flink):
    groups = property_groups(flink)
    assert groups["kinesis"]["audio_frames_stream"] == ref("AudioFramesStream")
    assert groups["kinesis"]["contact_events_stream"] == ref("ContactEventsStream")
    assert groups["audit"]["path"] == {"Fn::Sub": "s3://${AuditBucket}/audit"}


def test_the_job_reads_cresta_credentials_from_the_stacks_secret(flink, resources):
    assert property_groups(flink)["cresta"]["oauth_secret_arn"] == ref("CrestaCredentialsSecret")
    assert any(
        name == "FlinkRole" and statement["Action"] == "secretsmanager:GetSecretValue"
        and statement["Resource"] == ref("CrestaCredentialsSecret")
        for name, statement in policy_statements(resources)
    )


def test_checkpointing_parallelism_autoscaling_and_logging_are_configured(flink, resources):
    configuration = flink["ApplicationConfiguration"]["FlinkApplicationConfiguration"]
    checkpoints = configuration["CheckpointConfiguration"]
    assert checkpoints["CheckpointingEnabled"] is True
    # The job sets the same interval itself (flink.checkpoint_interval_ms).
    assert checkpoints["CheckpointInterval"] == property_groups(flink)["flink"]["checkpoint_interval_ms"]
    parallelism = configuration["ParallelismConfiguration"]
    assert parallelism["AutoScalingEnabled"] is True
    assert parallelism["Parallelism"] == ref("FlinkParallelism")
    # The job sets a parallelism only on a local minicluster; none is given to it here.
    assert "parallelism" not in property_groups(flink)["flink"]
    (logging_option,) = of_type(resources, "AWS::KinesisAnalyticsV2::ApplicationCloudWatchLoggingOption").values()
    assert logging_option["Properties"]["ApplicationName"] == ref("FlinkApplication")


# --- Connector workers, queue and checkpoints -------------------------------------------


def test_the_workers_run_the_connector_with_the_settings_aliases(resources):
    (task,) = of_type(resources, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert container["EntryPoint"] == ["cresta-pipeline", "connector", "run"]
    environment = {variable["Name"]: variable["Value"] for variable in container["Environment"]}
    assert environment == {
        "CONNECTOR_QUEUE_URL": ref("ConnectorQueue"),
        "CHECKPOINT_TABLE": ref("CheckpointTable"),
        "AUDIO_FRAMES_STREAM": ref("AudioFramesStream"),
        "AWS_REGION": ref("AWS::Region"),
    }
    aliases = {alias for setting in SETTING_BY_KEY.values() for alias in setting.env_aliases}
    assert set(environment) <= aliases
    assert task["Properties"]["RequiresCompatibilities"] == ["FARGATE"]


def test_the_worker_service_scales_on_the_work_queues_depth(resources):
    (target,) = of_type(resources, "AWS::ApplicationAutoScaling::ScalableTarget").values()
    assert target["Properties"]["ResourceId"] == {
        "Fn::Sub": "service/${ConnectorCluster}/${ConnectorService.Name}"
    }
    (policy,) = of_type(resources, "AWS::ApplicationAutoScaling::ScalingPolicy").values()
    queries = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]["Metrics"]
    queue_metrics = {
        query["MetricStat"]["Metric"]["MetricName"] for query in queries
        if "MetricStat" in query and query["MetricStat"]["Metric"]["Dimensions"]
        == [{"Name": "QueueName", "Value": get_att("ConnectorQueue", "QueueName")}]
    }
    assert queue_metrics == {"ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible"}


def test_the_work_queue_is_fifo_so_the_handler_sets_its_ids_and_has_a_fifo_dead_letter_queue(resources):
    queue = resources["ConnectorQueue"]["Properties"]
    assert queue["FifoQueue"] is True
    # contact_flow_handler sets MessageGroupId/MessageDeduplicationId on a .fifo URL.
    assert queue["QueueName"]["Fn::Sub"].endswith(".fifo")
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == get_att("ConnectorDeadLetterQueue", "Arn")
    assert resources["ConnectorDeadLetterQueue"]["Properties"]["FifoQueue"] is True
    flow_function = resources["ContactFlowFunction"]["Properties"]
    assert flow_function["Environment"]["Variables"]["CONNECTOR_QUEUE_URL"] == ref("ConnectorQueue")


def test_the_checkpoint_table_is_keyed_and_expired_as_the_checkpoint_store_expects(resources):
    table = resources["CheckpointTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": ATTR_CONTACT_ID, "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": ATTR_CONTACT_ID, "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": ATTR_EXPIRES_AT, "Enabled": True}


def test_streams_are_on_demand_and_encrypted_with_the_pipeline_key(resources):
    streams = of_type(resources, "AWS::Kinesis::Stream")
    assert set(streams) == {"AudioFramesStream", "ContactEventsStream"}
    for stream in streams.values():
        assert stream["Properties"]["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
        assert stream["Properties"]["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": get_att("PipelineKey", "Arn")}


# --- Audit bucket -----------------------------------------------------------------------


def test_the_audit_bucket_is_private_encrypted_tls_only_and_expires(resources):
    bucket = resources["AuditBucket"]["Properties"]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert any("ExpirationInDays" in r for r in bucket["LifecycleConfiguration"]["Rules"])
    assert bucket["ObjectLockConfiguration"]["Fn::If"][0] == "AuditObjectLock"
    (statement,) = resources["AuditBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# --- Connect side -----------------------------------------------------------------------


def test_the_contact_event_rule_asks_for_the_handled_events_of_tagged_contacts_of_the_instance(resources):
    pattern = resources["ContactEventRule"]["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.connect"] and pattern["detail-type"] == ["Amazon Connect Contact Event"]
    assert pattern["resources"] == [ref("ConnectInstanceArn")]
    assert set(pattern["detail"]["eventType"]) == set(HANDLED_EVENT_TYPES)
    flow = json.loads(FLOW.read_text())
    (tag_action,) = [action for action in flow["Actions"] if action["Type"] == "TagContact"]
    assert pattern["detail"]["tags"] == {key: [value] for key, value in tag_action["Parameters"]["Tags"].items()}


def test_events_the_rule_cannot_deliver_go_to_the_alarmed_dead_letter_queue_only_it_may_write(resources):
    (target,) = resources["ContactEventRule"]["Properties"]["Targets"]
    queue_arn = get_att("ContactEventFunctionDeadLetterQueue", "Arn")
    assert target["DeadLetterConfig"] == {"Arn": queue_arn}
    assert resources["ContactEventFunction"]["Properties"]["DeadLetterConfig"] == {"TargetArn": queue_arn}
    policy = resources["ContactEventDeadLetterQueuePolicy"]["Properties"]
    assert policy["Queues"] == [ref("ContactEventFunctionDeadLetterQueue")]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": get_att("ContactEventRule", "Arn")}}
    # The queue is encrypted with the pipeline's key: EventBridge needs to use it.
    assert resources["ContactEventFunctionDeadLetterQueue"]["Properties"]["KmsMasterKeyId"] == ref("PipelineKey")
    key_statements = resources["PipelineKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert any(
        s["Principal"] == {"Service": "events.amazonaws.com"} and {"kms:Decrypt", "kms:GenerateDataKey"} <= set(s["Action"])
        for s in key_statements
    )
    alarm = resources["ContactEventDeadLettersAlarm"]["Properties"]
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": get_att("ContactEventFunctionDeadLetterQueue", "QueueName")}]


def test_the_contact_flow_function_answers_before_the_flow_stops_waiting(resources):
    flow = json.loads(FLOW.read_text())
    (invoke,) = [action for action in flow["Actions"] if action["Type"] == "InvokeLambdaFunction"]
    function = resources["ContactFlowFunction"]["Properties"]
    assert function["Timeout"] < int(invoke["Parameters"]["InvocationTimeLimitSeconds"]) <= 8
    assert function["Handler"] == "connectors.connect.handler.contact_flow_handler"
    assert resources["ContactEventFunction"]["Properties"]["Handler"] == "connectors.connect.handler.contact_event_handler"


def test_connect_may_invoke_the_flow_function_from_the_instance_only(resources):
    permission = resources["ContactFlowFunctionPermission"]["Properties"]
    assert permission["Principal"] == "connect.amazonaws.com"
    assert permission["SourceArn"] == ref("ConnectInstanceArn")


def test_the_dashboard_is_json_and_shows_what_the_alarms_watch(resources, template):
    body = resources["PipelineDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    # Substitutions are ${Name} or ${Name.Attribute}; any value keeps the JSON valid.
    dashboard = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))
    shown = {row[1] for widget in dashboard["widgets"] for row in widget["properties"]["metrics"]}
    alarmed = {
        metric["MetricName"] for alarm in of_type(resources, "AWS::CloudWatch::Alarm").values()
        for metric in alarm_metrics(alarm)
    }
    assert alarmed - {"Errors", "ApproximateNumberOfMessagesVisible"} <= shown
