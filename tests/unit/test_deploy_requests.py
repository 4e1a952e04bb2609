"""The exact CloudFormation and S3 requests of `cresta-pipeline deploy` (botocore Stubber),
for what moto's CloudFormation does not do: resource events, rollbacks, "no updates",
change sets that list their changes, stacks that must be deleted first. Against moto's
server: tests/integration/test_deploy_stack.py.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from jobs import package
from jobs.deploy import DeployError, DeployRequest, StackDeployer, artifact_key, parse_parameter_flags, read_parameters

REGION = "eu-west-2"
STACK = "cresta-pipeline"
BUCKET = "artifacts"
STACK_ID = f"arn:aws:cloudformation:{REGION}:123456789012:stack/{STACK}/1"
TEMPLATE_TEXT = "AWSTemplateFormatVersion: '2010-09-09'\n"
#: What GetTemplateSummary says of the template's parameters.
DECLARED = [
    {"ParameterKey": "ArtifactBucket"},
    {"ParameterKey": "ChunkMs", "DefaultValue": "100"},
    {"ParameterKey": "ConnectorImageUri"},
    {"ParameterKey": "CrestaMediaToken", "DefaultValue": "", "NoEcho": True},
    {"ParameterKey": "FlinkApplicationKey"},
    {"ParameterKey": "LambdaCodeKey"},
]
SUMMARY = {"Parameters": DECLARED, "Capabilities": ["CAPABILITY_IAM"], "ResourceTypes": ["AWS::SQS::Queue"] * 2}
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def client(service: str):
    return boto3.client(service, region_name=REGION, aws_access_key_id="a", aws_secret_access_key="b")


@pytest.fixture
def clients():
    cloudformation, s3 = client("cloudformation"), client("s3")
    with Stubber(cloudformation) as cfn_stub, Stubber(s3) as s3_stub:
        yield cloudformation, cfn_stub, s3, s3_stub
        cfn_stub.assert_no_pending_responses()
        s3_stub.assert_no_pending_responses()


@pytest.fixture
def request_files(tmp_path) -> tuple[Path, Path]:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / package.FLINK_ZIP).write_bytes(b"flink zip")
    (dist / package.LAMBDA_ZIP).write_bytes(b"lambda zip")
    template = tmp_path / "pipeline.yaml"
    template.write_text(TEMPLATE_TEXT)
    return dist, template


def keys(dist: Path) -> dict[str, str]:
    return {
        "FlinkApplicationKey": artifact_key(STACK, dist / package.FLINK_ZIP),
        "LambdaCodeKey": artifact_key(STACK, dist / package.LAMBDA_ZIP),
    }


def make_deployer(clients, out: io.StringIO, sleeps: list[float] | None = None) -> StackDeployer:
    cloudformation, _, s3, _ = clients
    return StackDeployer(
        cloudformation_client=cloudformation, s3_client=s3, out=out, poll_interval_s=7,
        sleep=(sleeps if sleeps is not None else []).append,
    )


def stack(status: str, parameters: dict[str, str] | None = None, outputs: dict[str, str] | None = None) -> dict:
    return {"Stacks": [{
        "StackId": STACK_ID, "StackName": STACK, "CreationTime": NOW, "StackStatus": status,
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in (parameters or {}).items()],
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in (outputs or {}).items()],
    }]}


def event(event_id: str, logical_id: str, status: str, kind: str = "AWS::SQS::Queue", reason: str = "") -> dict:
    return {
        "StackId": STACK_ID, "EventId": event_id, "StackName": STACK, "LogicalResourceId": logical_id,
        "ResourceType": kind, "Timestamp": NOW, "ResourceStatus": status,
        **({"ResourceStatusReason": reason} if reason else {}),
    }


def no_such_stack(cfn_stub) -> None:
    cfn_stub.add_client_error(
        "describe_stacks", service_error_code="ValidationError",
        service_message=f"Stack with id {STACK} does not exist", expected_params={"StackName": STACK},
    )


def test_a_new_stack_is_created_from_uploaded_zips_and_a_rollback_is_an_error_with_its_reasons(
    clients, request_files
):
    _, cfn_stub, _, s3_stub = clients
    dist, template = request_files
    given = {"ArtifactBucket": BUCKET, "ConnectorImageUri": "image:1"}
    no_such_stack(cfn_stub)
    cfn_stub.add_response("get_template_summary", SUMMARY, {"TemplateBody": TEMPLATE_TEXT})
    for name, key in zip((package.FLINK_ZIP, package.LAMBDA_ZIP), keys(dist).values()):
        s3_stub.add_client_error("head_object", service_error_code="404", http_status_code=404,
                                 expected_params={"Bucket": BUCKET, "Key": key})
        s3_stub.add_response("put_object", {}, {"Bucket": BUCKET, "Key": key, "Body": ANY})
    cfn_stub.add_response("create_stack", {"StackId": STACK_ID}, {
        "StackName": STACK, "TemplateBody": TEMPLATE_TEXT, "Capabilities": ["CAPABILITY_IAM"],
        # Sorted by key; ChunkMs and CrestaMediaToken keep the template's defaults.
        "Parameters": [
            {"ParameterKey": "ArtifactBucket", "ParameterValue": BUCKET},
            {"ParameterKey": "ConnectorImageUri", "ParameterValue": "image:1"},
            *({"ParameterKey": k, "ParameterValue": v} for k, v in keys(dist).items()),
        ],
    })
    cfn_stub.add_response("describe_stack_events", {"StackEvents": [
        event("3", "Queue", "CREATE_FAILED", reason="Resource handler returned message: access denied"),
        event("2", "Queue", "CREATE_IN_PROGRESS"),
        event("1", STACK, "CREATE_IN_PROGRESS", "AWS::CloudFormation::Stack", "User Initiated"),
    ]}, {"StackName": STACK})
    cfn_stub.add_response("describe_stacks", stack("ROLLBACK_IN_PROGRESS"), {"StackName": STACK})
    cfn_stub.add_response("describe_stack_events", {"StackEvents": [
        event("4", STACK, "ROLLBACK_COMPLETE", "AWS::CloudFormation::Stack"),
        event("3", "Queue", "CREATE_FAILED", reason="Resource handler returned message: access denied"),
    ]}, {"StackName": STACK})
    cfn_stub.add_response("describe_stacks", stack("ROLLBACK_COMPLETE"), {"StackName": STACK})
    out, sleeps = io.StringIO(), []

    with pytest.raises(DeployError, match="ROLLBACK_COMPLETE"):
        make_deployer(clients, out, sleeps).deploy(DeployRequest(STACK, given, dist=dist, template=template))

    lines = out.getvalue().splitlines()
    events = [line for line in lines if line.startswith("12:00:00")]
    # Each event once, oldest first, across both polls; the failure with its reason.
    assert [line.split()[1] for line in events] == [
        "CREATE_IN_PROGRESS", "CREATE_IN_PROGRESS", "CREATE_FAILED", "ROLLBACK_COMPLETE",
    ]
    assert "access denied" in events[2]
    assert sleeps == [7]


def test_an_update_keeps_values_not_given_and_no_changes_is_not_an_error(clients, request_files):
    _, cfn_stub, _, s3_stub = clients
    dist, template = request_files
    previous = {
        "ArtifactBucket": BUCKET, "ChunkMs": "100", "ConnectorImageUri": "image:1", "CrestaMediaToken": "****",
        **keys(dist),
    }
    outputs = {"ConnectorQueueUrl": "https://sqs.eu-west-2.amazonaws.com/123456789012/q.fifo"}
    cfn_stub.add_response("describe_stacks", stack("UPDATE_COMPLETE", previous), {"StackName": STACK})
    cfn_stub.add_response("get_template_summary", SUMMARY, {"TemplateBody": TEMPLATE_TEXT})
    for key in keys(dist).values():
        s3_stub.add_response("head_object", {}, {"Bucket": BUCKET, "Key": key})
    cfn_stub.add_response("describe_stack_events", {"StackEvents": [event("9", STACK, "UPDATE_COMPLETE")]},
                          {"StackName": STACK})
    cfn_stub.add_client_error("update_stack", service_error_code="ValidationError",
                              service_message="No updates are to be performed.", expected_params={
        "StackName": STACK, "TemplateBody": TEMPLATE_TEXT, "Capabilities": ["CAPABILITY_IAM"],
        "Parameters": [
            {"ParameterKey": "ArtifactBucket", "ParameterValue": BUCKET},
            # At its default: left to the default. Changed from it, or hidden: kept.
            {"ParameterKey": "ConnectorImageUri", "UsePreviousValue": True},
            {"ParameterKey": "CrestaMediaToken", "UsePreviousValue": True},
            *({"ParameterKey": k, "ParameterValue": v} for k, v in keys(dist).items()),
        ],
    })
    cfn_stub.add_response("describe_stacks", stack("UPDATE_COMPLETE", previous, outputs), {"StackName": STACK})
    out = io.StringIO()

    result = make_deployer(clients, out).deploy(DeployRequest(STACK, {}, dist=dist, template=template))

    assert result == outputs
    assert "no changes" in out.getvalue().splitlines()
    assert out.getvalue().count("is there already") == 2


def change_set(status: str, **fields) -> dict:
    return {"ChangeSetName": "x", "StackName": STACK, "Status": status, **fields}


@pytest.mark.parametrize(
    ("described", "expected"),
    [
        (change_set("CREATE_COMPLETE", Changes=[
            {"Type": "Resource", "ResourceChange": {"Action": "Modify", "LogicalResourceId": "FlinkApplication",
                                                    "ResourceType": "AWS::KinesisAnalyticsV2::Application",
                                                    "Replacement": "False"}},
            {"Type": "Resource", "ResourceChange": {"Action": "Modify", "LogicalResourceId": "AudioFramesStream",
                                                    "ResourceType": "AWS::Kinesis::Stream", "Replacement": "True"}},
        ]), [f"would update stack {STACK}:", "  Modify FlinkApplication AWS::KinesisAnalyticsV2::Application",
             "  Modify AudioFramesStream AWS::Kinesis::Stream (replaced)"]),
        (change_set("FAILED", StatusReason="The submitted information didn't contain changes."), ["no changes"]),
    ],
)
def test_a_dry_run_of_an_update_shows_a_change_set_then_deletes_it(clients, request_files, described, expected):
    _, cfn_stub, _, s3_stub = clients
    dist, template = request_files
    previous = {"ArtifactBucket": BUCKET, "ConnectorImageUri": "image:1", **keys(dist)}
    cfn_stub.add_response("describe_stacks", stack("CREATE_COMPLETE", previous), {"StackName": STACK})
    cfn_stub.add_response("get_template_summary", SUMMARY, {"TemplateBody": TEMPLATE_TEXT})
    for key in keys(dist).values():
        s3_stub.add_client_error("head_object", service_error_code="404", http_status_code=404,
                                 expected_params={"Bucket": BUCKET, "Key": key})
    parameters = [
        {"ParameterKey": "ArtifactBucket", "ParameterValue": BUCKET},
        {"ParameterKey": "ChunkMs", "ParameterValue": "200"},
        {"ParameterKey": "ConnectorImageUri", "UsePreviousValue": True},
        *({"ParameterKey": k, "ParameterValue": v} for k, v in keys(dist).items()),
    ]
    cfn_stub.add_response("create_change_set", {"Id": "cs", "StackId": STACK_ID}, {
        "StackName": STACK, "TemplateBody": TEMPLATE_TEXT, "Parameters": parameters,
        "Capabilities": ["CAPABILITY_IAM"], "ChangeSetName": ANY, "ChangeSetType": "UPDATE",
    })
    cfn_stub.add_response("describe_change_set", change_set("CREATE_PENDING"), {"StackName": STACK, "ChangeSetName": ANY})
    cfn_stub.add_response("describe_change_set", described, {"StackName": STACK, "ChangeSetName": ANY})
    cfn_stub.add_response("delete_change_set", {}, {"StackName": STACK, "ChangeSetName": ANY})
    out, sleeps = io.StringIO(), []

    result = make_deployer(clients, out, sleeps).deploy(
        DeployRequest(STACK, {"ChunkMs": "200"}, dist=dist, template=template, dry_run=True)
    )

    assert result == {}
    lines = out.getvalue().splitlines()
    assert lines[:2] == [f"would upload: s3://{BUCKET}/{key}" for key in keys(dist).values()]
    assert lines[2:] == expected
    assert sleeps == [7]


def test_a_dry_run_of_a_new_stack_hides_no_echo_values(clients, request_files):
    _, cfn_stub, _, s3_stub = clients
    dist, template = request_files
    no_such_stack(cfn_stub)
    cfn_stub.add_response("get_template_summary", SUMMARY, {"TemplateBody": TEMPLATE_TEXT})
    for key in keys(dist).values():
        s3_stub.add_response("head_object", {}, {"Bucket": BUCKET, "Key": key})
    given = {"ArtifactBucket": BUCKET, "ConnectorImageUri": "image:1", "CrestaMediaToken": "s3cr3t"}
    out = io.StringIO()

    make_deployer(clients, out).deploy(DeployRequest(STACK, given, dist=dist, template=template, dry_run=True))

    text = out.getvalue()
    assert "CrestaMediaToken = ****" in text and "s3cr3t" not in text
    assert "and resources: 2 AWS::SQS::Queue" in text


@pytest.mark.parametrize("status", ["ROLLBACK_COMPLETE", "UPDATE_IN_PROGRESS"])
def test_a_stack_that_cannot_take_a_deploy_is_reported_before_anything_else(clients, request_files, status):
    _, cfn_stub, _, _ = clients
    dist, template = request_files
    cfn_stub.add_response("describe_stacks", stack(status, {"ArtifactBucket": BUCKET}), {"StackName": STACK})

    with pytest.raises(DeployError, match=status):
        make_deployer(clients, io.StringIO()).deploy(DeployRequest(STACK, {}, dist=dist, template=template))


def test_the_artifact_keys_are_deploys_own(clients, request_files):
    _, cfn_stub, _, _ = clients
    dist, template = request_files
    no_such_stack(cfn_stub)
    given = {"ArtifactBucket": BUCKET, "FlinkApplicationKey": "mine.zip"}

    with pytest.raises(DeployError, match="FlinkApplicationKey is set by deploy"):
        make_deployer(clients, io.StringIO()).deploy(DeployRequest(STACK, given, dist=dist, template=template))


def test_without_a_bucket_nothing_is_asked_of_aws_but_the_stack(clients, request_files):
    _, cfn_stub, _, _ = clients
    dist, template = request_files
    no_such_stack(cfn_stub)

    with pytest.raises(DeployError, match="ArtifactBucket"):
        make_deployer(clients, io.StringIO()).deploy(DeployRequest(STACK, {}, dist=dist, template=template))


def test_an_invalid_template_says_what_cloudformation_said(clients, request_files):
    _, cfn_stub, _, _ = clients
    dist, template = request_files
    no_such_stack(cfn_stub)
    cfn_stub.add_client_error("get_template_summary", service_error_code="ValidationError",
                              service_message="Template format error: unsupported structure.",
                              expected_params={"TemplateBody": TEMPLATE_TEXT})

    with pytest.raises(DeployError, match="Template format error"):
        make_deployer(clients, io.StringIO()).deploy(
            DeployRequest(STACK, {"ArtifactBucket": BUCKET}, dist=dist, template=template)
        )


# --- parameters from files and flags ---------------------------------------------------


@pytest.mark.parametrize("content", [
    {"ChunkMs": "200", "ConnectorMinTasks": 3},
    [{"ParameterKey": "ChunkMs", "ParameterValue": "200"}, {"ParameterKey": "ConnectorMinTasks", "ParameterValue": "3"}],
])
def test_a_parameters_file_is_an_object_or_the_aws_clis_list(tmp_path, content):
    path = tmp_path / "parameters.json"
    path.write_text(json.dumps(content))
    assert read_parameters(path) == {"ChunkMs": "200", "ConnectorMinTasks": "3"}


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"ChunkMs": {"nested": 1}}', '"ChunkMs"'])
def test_a_bad_parameters_file_is_refused_by_name(tmp_path, text):
    path = tmp_path / "parameters.json"
    path.write_text(text)
    with pytest.raises(DeployError, match="parameters.json"):
        read_parameters(path)


def test_parameter_flags_are_key_value_pairs_whose_value_may_hold_equals_signs():
    assert parse_parameter_flags(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(DeployError, match="KEY=VALUE"):
        parse_parameter_flags(["novalue"])
