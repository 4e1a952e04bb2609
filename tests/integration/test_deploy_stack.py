"""`cresta-pipeline deploy` against moto's server, over HTTP, with the real template.

moto's CloudFormation creates what it models (KMS, Kinesis, SQS, DynamoDB, S3, IAM,
Lambda, ECS, EventBridge, logs, SNS) and skips, with a warning, what it does not (the
Managed Flink application, alarms, the metric filter, autoscaling, the Connect
association, the secret); its stacks report stack events only, and its change sets list
no resource changes. So these tests cover the uploads, the create and the update (with
previous values kept), the outputs and what a dry run leaves untouched; exact requests,
rollbacks, "no updates" and change-set listings are pinned in tests/unit/test_deploy_requests.py.

The artifacts are real zips: deploy moves them as bytes and names them by content.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest

from emulators.stack import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY
from jobs import package
from jobs.cli import main as cli

BUCKET = "deploy-artifacts"
STACK = "cresta-test"
PARAMETERS = {
    "ConnectInstanceArn": "arn:aws:connect:us-east-1:123456789012:instance/0d2b1c47-6c4e-4d5a-9d73-6f1e9d3c2a10",
    "KvsStreamPrefix": "connect-live-media",
    "CrestaAuthUrl": "https://auth.example.test",
    "CrestaWebSocketUrl": "wss://media.example.test/stream",
    "CrestaMediaToken": "token-not-to-print",
    "ArtifactBucket": BUCKET,
    "ConnectorImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/cresta-connector:1",
    "VpcId": "vpc-0a1b2c3d",
    "SubnetIds": "subnet-0a1b2c3d,subnet-4e5f6a7b",
}


@pytest.fixture
def aws(make_stack, monkeypatch):
    """moto's server, reached through the environment as the CLI reaches AWS."""
    stack = make_stack()
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    stack.client("s3").create_bucket(Bucket=BUCKET)
    # moto warns once per resource type it does not model.
    warnings.filterwarnings("ignore", message="Tried to parse", category=UserWarning)
    return stack


@pytest.fixture
def dist(tmp_path) -> Path:
    folder = tmp_path / "dist"
    package.build_lambda_zip(folder)
    write_flink_zip(folder, "first")
    return folder


def write_flink_zip(folder: Path, version: str) -> None:
    with zipfile.ZipFile(folder / package.FLINK_ZIP, "w") as archive:
        archive.writestr("main.py", f"VERSION = {version!r}\n")


@pytest.fixture
def parameters_file(tmp_path) -> Path:
    path = tmp_path / "parameters.json"
    path.write_text(json.dumps(PARAMETERS))
    return path


def deploy(*arguments: str) -> int:
    return cli(["deploy", "--stack-name", STACK, "--region", REGION, *arguments])


def objects(aws) -> dict[str, bytes]:
    s3 = aws.client("s3")
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {item["Key"]: s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listed}


def stack_parameters(aws) -> dict[str, str]:
    (stack,) = aws.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"]
    return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}


def test_a_first_deploy_uploads_the_zips_creates_the_stack_and_prints_its_outputs(aws, dist, parameters_file, capsys):
    assert deploy("--parameters", str(parameters_file), "--dist", str(dist)) == 0
    out, err = capsys.readouterr()

    stored = objects(aws)
    for name, parameter in (("cresta-pipeline-flink.zip", "FlinkApplicationKey"),
                            ("cresta-pipeline-lambdas.zip", "LambdaCodeKey")):
        key = stack_parameters(aws)[parameter]
        assert key == f"{STACK}/{package.sha256_of(dist / name)[:16]}/{name}"
        assert stored[key] == (dist / name).read_bytes()
    assert len(stored) == 2
    (stack,) = aws.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    # What moto built from the template is there: the streams, the FIFO work queue.
    assert f"{STACK}-audio-frames" in aws.client("kinesis").list_streams()["StreamNames"]
    queue_url = aws.client("sqs").get_queue_url(QueueName=f"{STACK}-connector.fifo")["QueueUrl"]
    printed = dict(line.split("\t") for line in out.splitlines())
    # moto answers with its own host; the stack's output names the queue as AWS does.
    assert printed["ConnectorQueueUrl"].rpartition("/")[2] == queue_url.rpartition("/")[2]
    assert printed == {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert f"creating stack {STACK}" in err and "CREATE_COMPLETE" in err
    assert PARAMETERS["CrestaMediaToken"] not in out + err


def test_an_update_uploads_the_changed_zip_only_and_keeps_the_values_not_given(aws, dist, parameters_file, capsys):
    assert deploy("--parameters", str(parameters_file), "--dist", str(dist)) == 0
    before = stack_parameters(aws)
    write_flink_zip(dist, "second")
    capsys.readouterr()

    # No parameters file: the bucket and every other value come from the stack.
    assert deploy("--parameter", "ChunkMs=200", "--dist", str(dist)) == 0
    out, err = capsys.readouterr()

    after = stack_parameters(aws)
    assert after["ChunkMs"] == "200"
    assert after["FlinkApplicationKey"] != before["FlinkApplicationKey"]
    assert objects(aws)[after["FlinkApplicationKey"]] == (dist / package.FLINK_ZIP).read_bytes()
    assert after["LambdaCodeKey"] == before["LambdaCodeKey"]
    assert f"s3://{BUCKET}/{after['LambdaCodeKey']} is there already" in err
    changed = {"ChunkMs", "FlinkApplicationKey"}
    assert {k: v for k, v in after.items() if k not in changed} == {k: v for k, v in before.items() if k not in changed}
    (stack,) = aws.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"]
    assert stack["StackStatus"] == "UPDATE_COMPLETE" and f"updating stack {STACK}" in err
    assert "ConnectorQueueUrl" in out


def test_a_dry_run_of_a_new_stack_changes_nothing(aws, dist, parameters_file, capsys):
    assert deploy("--parameters", str(parameters_file), "--dist", str(dist), "--dry-run") == 0
    out, err = capsys.readouterr()

    assert objects(aws) == {}
    assert aws.client("cloudformation").list_stacks()["StackSummaries"] == []
    assert err.count("would upload: s3://") == 2
    assert f"would create stack {STACK}" in err
    assert "CrestaMediaToken = ****" in err and PARAMETERS["CrestaMediaToken"] not in err
    assert "AWS::KinesisAnalyticsV2::Application" in err
    assert out == ""


def test_a_dry_run_of_an_update_leaves_the_stack_and_the_bucket_as_they_were(aws, dist, parameters_file, capsys):
    assert deploy("--parameters", str(parameters_file), "--dist", str(dist)) == 0
    before, stored = stack_parameters(aws), objects(aws)
    write_flink_zip(dist, "second")
    capsys.readouterr()

    assert deploy("--parameter", "ChunkMs=200", "--dist", str(dist), "--dry-run") == 0
    _, err = capsys.readouterr()

    assert stack_parameters(aws) == before
    assert objects(aws) == stored
    assert aws.client("cloudformation").list_change_sets(StackName=STACK)["Summaries"] == []
    assert f"would update stack {STACK}" in err
    assert err.count("would upload: s3://") == 1 and err.count("is there already: s3://") == 1


def test_a_missing_parameter_stops_the_deploy_before_any_upload(aws, dist, parameters_file, capsys):
    incomplete = {k: v for k, v in PARAMETERS.items() if k != "ConnectorImageUri"}
    parameters_file.write_text(json.dumps(incomplete))

    assert deploy("--parameters", str(parameters_file), "--dist", str(dist)) == 1

    assert "ConnectorImageUri" in capsys.readouterr().err
    assert objects(aws) == {}
    assert aws.client("cloudformation").list_stacks()["StackSummaries"] == []


def test_an_unknown_parameter_is_refused_with_the_templates_names(aws, dist, parameters_file, capsys):
    assert deploy("--parameters", str(parameters_file), "--parameter", "ChunkSize=200", "--dist", str(dist)) == 1
    err = capsys.readouterr().err
    assert "no parameter ChunkSize" in err and "ChunkMs" in err
    assert objects(aws) == {}


def test_without_the_packaged_zips_deploy_says_how_to_build_them(aws, tmp_path, parameters_file, capsys):
    assert deploy("--parameters", str(parameters_file), "--dist", str(tmp_path / "empty")) == 1
    assert "make package" in capsys.readouterr().err
