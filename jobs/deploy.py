"""`cresta-pipeline deploy`: the artifacts to S3, then the CloudFormation stack, created or
updated, watched until it settles.

1. The template is validated and the parameters resolved before anything changes: given
   ones, else (on update) the stack's current values, else the template's defaults.
2. The zips of ``cresta-pipeline package`` (``dist/``) are named by their content,
   ``<stack>/<sha256 prefix>/<file>`` in the stack's ``ArtifactBucket``, and uploaded
   unless the bucket has them. A changed zip gets a new key, and the new key is what makes
   CloudFormation update the Lambda functions and the Managed Flink application: neither
   notices a zip replaced under the same key.
3. The stack is created, or updated.
4. The stack's events are printed as they come, then its outputs.

The template travels inline (CloudFormation takes up to 51,200 bytes that way).
``--dry-run`` changes nothing: for a new stack it prints the uploads, parameters and
resource types it would create; for an existing one the uploads and the changes of a
change set, which it then deletes.

The AWS clients can be given (``cloudformation_client``, ``s3_client`` or a
``boto3_session``), as tests do; by default they are made for ``region``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import boto3
from botocore.exceptions import ClientError

from jobs.package import FLINK_ZIP, LAMBDA_ZIP, ROOT, sha256_of

TEMPLATE = ROOT / "deploy" / "cloudformation" / "pipeline.yaml"
DIST = ROOT / "dist"
BUCKET_PARAMETER = "ArtifactBucket"
#: The stack parameter that names each uploaded zip's key; deploy sets them.
ARTIFACT_PARAMETERS = {FLINK_ZIP: "FlinkApplicationKey", LAMBDA_ZIP: "LambdaCodeKey"}
DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
#: A stack in one of these can take neither a create nor an update.
NEEDS_DELETING = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"}
NO_UPDATES = "No updates are to be performed"
_KEY_DIGEST_CHARS = 16


class DeployError(RuntimeError):
    """The deployment cannot go on; nothing was changed unless the message says so."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    key: str


@dataclass
class DeployRequest:
    stack_name: str
    #: Parameter values given (file and flags); the artifact keys are deploy's own.
    parameters: dict[str, str] = field(default_factory=dict)
    dist: Path = DIST
    template: Path = TEMPLATE
    dry_run: bool = False


def artifact_key(stack_name: str, path: Path) -> str:
    return f"{stack_name}/{sha256_of(path)[:_KEY_DIGEST_CHARS]}/{path.name}"


class StackDeployer:
    """Uploads the artifacts and creates or updates the stack; progress goes to ``out``
    (stderr by default), one line per step and per stack event."""

    def __init__(
        self,
        region: str | None = None,
        *,
        boto3_session: boto3.Session | None = None,
        cloudformation_client: Any = None,
        s3_client: Any = None,
        out: TextIO | None = None,
        poll_interval_s: float = 5.0,
        timeout_s: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        session = boto3_session or boto3.Session(region_name=region)
        self.cloudformation = cloudformation_client or session.client("cloudformation", region_name=region)
        self.s3 = s3_client or session.client("s3", region_name=region)
        self.out = out or sys.stderr
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.clock = clock

    # --- the steps --------------------------------------------------------------------

    def deploy(self, request: DeployRequest) -> dict[str, str]:
        """Returns the stack's outputs (none after a dry run)."""
        template_body = _read(request.template)
        stack = self._deployable_stack(request.stack_name)
        previous = {p["ParameterKey"]: p.get("ParameterValue", "") for p in (stack or {}).get("Parameters", [])}
        bucket = request.parameters.get(BUCKET_PARAMETER) or previous.get(BUCKET_PARAMETER)
        if not bucket:
            raise DeployError(
                f"no {BUCKET_PARAMETER}: give the S3 bucket the artifacts go to (--parameter {BUCKET_PARAMETER}=…)"
            )
        for name, parameter in ARTIFACT_PARAMETERS.items():
            if parameter in request.parameters:
                raise DeployError(f"{parameter} is set by deploy (the key it uploads {name} to); leave it out")
        artifacts = [self._artifact(request, request.dist / name) for name in ARTIFACT_PARAMETERS]
        given = {**request.parameters, BUCKET_PARAMETER: bucket}
        given.update({ARTIFACT_PARAMETERS[artifact.path.name]: artifact.key for artifact in artifacts})
        summary = self._summary(template_body)
        parameters = self._parameters(summary, given, previous if stack else None)
        arguments = {
            "StackName": request.stack_name, "TemplateBody": template_body, "Parameters": parameters,
            "Capabilities": summary.get("Capabilities", []),
        }
        if request.dry_run:
            for artifact in artifacts:
                there = self._exists(bucket, artifact.key)
                self._print(f"{'is there already' if there else 'would upload'}: s3://{bucket}/{artifact.key}")
            if stack is None:
                self._show_creation(request.stack_name, summary, parameters)
            else:
                self._show_changes(arguments)
            return {}

        for artifact in artifacts:
            self._upload(bucket, artifact)
        last_event = self._newest_event_id(request.stack_name) if stack else None
        if stack is None:
            self._print(f"creating stack {request.stack_name}")
            self.cloudformation.create_stack(**arguments)
        else:
            self._print(f"updating stack {request.stack_name}")
            try:
                self.cloudformation.update_stack(**arguments)
            except ClientError as exc:
                if NO_UPDATES not in str(exc):
                    raise
                self._print("no changes")
                return self._outputs(request.stack_name)
        status = self._wait(request.stack_name, last_event)
        if status not in DONE:
            raise DeployError(f"stack {request.stack_name} ended {status}; the events above say why")
        return self._outputs(request.stack_name)

    def _artifact(self, request: DeployRequest, path: Path) -> Artifact:
        if not path.is_file():
            raise DeployError(f"no {path}: `make package` builds it")
        return Artifact(path, artifact_key(request.stack_name, path))

    def _deployable_stack(self, stack_name: str) -> dict | None:
        """The stack, None if there is none; one that can take no deploy now is an error."""
        try:
            (stack,) = self.cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ValidationError" and "does not exist" in str(exc):
                return None
            raise
        status = stack["StackStatus"]
        if status in NEEDS_DELETING:
            raise DeployError(
                f"stack {stack_name} is {status}: delete it "
                f"(aws cloudformation delete-stack --stack-name {stack_name}) and deploy again"
            )
        if status.endswith("_IN_PROGRESS"):
            raise DeployError(f"stack {stack_name} is busy ({status}); try again when it settles")
        return stack

    def _summary(self, template_body: str) -> dict:
        try:
            return self.cloudformation.get_template_summary(TemplateBody=template_body)
        except ClientError as exc:
            raise DeployError(f"the template is not valid: {exc.response['Error']['Message']}") from None

    def _parameters(self, summary: dict, given: dict[str, str], previous: dict[str, str] | None) -> list[dict]:
        """The stack's parameters: given ones, else (on update) the previous value, else the
        template's default; a parameter with none of these stops the deployment. One left at
        the template's default is not sent, so the default goes on applying."""
        declared = {p["ParameterKey"]: p for p in summary["Parameters"]}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise DeployError(
                f"the template has no parameter {', '.join(unknown)} (it has {', '.join(sorted(declared))})"
            )
        parameters, missing = [], []
        for key in sorted(declared):
            default = declared[key].get("DefaultValue")
            if key in given:
                parameters.append({"ParameterKey": key, "ParameterValue": given[key]})
            elif previous is not None and key in previous and previous[key] != default:
                parameters.append({"ParameterKey": key, "UsePreviousValue": True})
            elif default is None:
                missing.append(key)
        if missing:
            raise DeployError(
                f"parameters without a value: {', '.join(missing)} (--parameters FILE or --parameter KEY=VALUE)"
            )
        return parameters

    def _exists(self, bucket: str, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def _upload(self, bucket: str, artifact: Artifact) -> None:
        if self._exists(bucket, artifact.key):
            self._print(f"s3://{bucket}/{artifact.key} is there already")
            return
        self._print(f"uploading {artifact.path.name} to s3://{bucket}/{artifact.key}")
        with artifact.path.open("rb") as body:
            self.s3.put_object(Bucket=bucket, Key=artifact.key, Body=body)

    # --- dry run ----------------------------------------------------------------------

    def _show_creation(self, stack_name: str, summary: dict, parameters: list[dict]) -> None:
        hidden = {p["ParameterKey"] for p in summary["Parameters"] if p.get("NoEcho")}
        self._print(f"would create stack {stack_name} with parameters:")
        for parameter in parameters:
            key = parameter["ParameterKey"]
            self._print(f"  {key} = {'****' if key in hidden else parameter['ParameterValue']}")
        types = Counter(summary.get("ResourceTypes", []))
        self._print("and resources: " + ", ".join(f"{count} {kind}" for kind, count in sorted(types.items())))

    def _show_changes(self, arguments: dict) -> None:
        stack_name, name = arguments["StackName"], f"dry-run-{uuid.uuid4().hex[:12]}"
        self.cloudformation.create_change_set(**arguments, ChangeSetName=name, ChangeSetType="UPDATE")
        try:
            change_set = self._settled_change_set(stack_name, name)
            if change_set["Status"] == "FAILED":
                reason = change_set.get("StatusReason", "")
                self._print("no changes" if "didn't contain changes" in reason else f"change set failed: {reason}")
                return
            self._print(f"would update stack {stack_name}:")
            if not change_set.get("Changes"):
                self._print("  (the change set lists no resource changes)")
            for change in change_set.get("Changes", []):
                resource = change["ResourceChange"]
                replacement = " (replaced)" if resource.get("Replacement") == "True" else ""
                self._print(
                    f"  {resource['Action']} {resource['LogicalResourceId']} {resource['ResourceType']}{replacement}"
                )
        finally:
            self.cloudformation.delete_change_set(StackName=stack_name, ChangeSetName=name)

    def _settled_change_set(self, stack_name: str, name: str) -> dict:
        deadline = self.clock() + self.timeout_s
        while True:
            change_set = self.cloudformation.describe_change_set(StackName=stack_name, ChangeSetName=name)
            if change_set["Status"] in ("CREATE_COMPLETE", "FAILED"):
                return change_set
            if self.clock() > deadline:
                raise DeployError(f"change set {name} still {change_set['Status']} after {self.timeout_s:.0f} s")
            self.sleep(self.poll_interval_s)

    # --- watching the stack -----------------------------------------------------------

    def _newest_event_id(self, stack_name: str) -> str | None:
        events = self.cloudformation.describe_stack_events(StackName=stack_name)["StackEvents"]
        return events[0]["EventId"] if events else None

    def _new_events(self, stack_name: str, last_event: str | None) -> list[dict]:
        """Events after ``last_event``, oldest first (CloudFormation lists newest first)."""
        new: list[dict] = []
        for page in self.cloudformation.get_paginator("describe_stack_events").paginate(StackName=stack_name):
            for event in page["StackEvents"]:
                if event["EventId"] == last_event:
                    return new[::-1]
                new.append(event)
        return new[::-1]

    def _wait(self, stack_name: str, last_event: str | None) -> str:
        deadline = self.clock() + self.timeout_s
        while True:
            for event in self._new_events(stack_name, last_event):
                last_event = event["EventId"]
                reason = f"  {event['ResourceStatusReason']}" if event.get("ResourceStatusReason") else ""
                self._print(
                    f"{event['Timestamp']:%H:%M:%S} {event['ResourceStatus']:<20} {event['LogicalResourceId']} "
                    f"({event['ResourceType']}){reason}"
                )
            status = self.cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]["StackStatus"]
            if not status.endswith("_IN_PROGRESS"):
                return status
            if self.clock() > deadline:
                raise DeployError(f"stack {stack_name} still {status} after {self.timeout_s:.0f} s; it goes on in AWS")
            self.sleep(self.poll_interval_s)

    def _outputs(self, stack_name: str) -> dict[str, str]:
        (stack,) = self.cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise DeployError(f"cannot read {path}: {exc.strerror}") from None


def read_parameters(path: Path) -> dict[str, str]:
    """A parameters file: ``{"Key": "Value"}``, or the AWS CLI's
    ``[{"ParameterKey": …, "ParameterValue": …}]``."""
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise DeployError(f"{path} is not JSON: {exc}") from None
    if isinstance(data, list) and all(isinstance(item, dict) and "ParameterKey" in item for item in data):
        data = {item["ParameterKey"]: item.get("ParameterValue", "") for item in data}
    if not isinstance(data, dict) or not all(isinstance(value, (str, int, float)) for value in data.values()):
        raise DeployError(
            f'{path}: expected {{"Key": "Value", …}} or [{{"ParameterKey": …, "ParameterValue": …}}]'
        )
    return {str(key): str(value) for key, value in data.items()}


def parse_parameter_flags(pairs: list[str]) -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DeployError(f"--parameter expects KEY=VALUE, got {pair!r}")
        parameters[key] = value
    return parameters


def main(argv: list[str] | None = None, *, deployer: StackDeployer | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cresta-pipeline deploy",
        description="Upload dist/ (`make package`) and create or update the CloudFormation stack.",
    )
    parser.add_argument("--stack-name", required=True)
    parser.add_argument("--region", required=True, help="the stack's region (another region is another stack)")
    parser.add_argument("--parameters", type=Path, metavar="FILE",
                        help='stack parameters, {"Key": "Value"} or the AWS CLI\'s ParameterKey/ParameterValue list')
    parser.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="one stack parameter (over the file); ArtifactBucket is where the artifacts go")
    parser.add_argument("--dist", type=Path, default=DIST, help="the artifacts (default: dist/)")
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="default: deploy/cloudformation/pipeline.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    parser.add_argument("--timeout-minutes", type=float, default=60, help="give up watching after this (default 60)")
    args = parser.parse_args(argv)
    try:
        parameters = read_parameters(args.parameters) if args.parameters else {}
        parameters.update(parse_parameter_flags(args.parameter))
        deployer = deployer or StackDeployer(args.region, timeout_s=args.timeout_minutes * 60)
        outputs = deployer.deploy(
            DeployRequest(args.stack_name, parameters, dist=args.dist, template=args.template, dry_run=args.dry_run)
        )
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"error: AWS refused {exc.operation_name}: {exc.response['Error'].get('Message', exc)}", file=sys.stderr)
        return 1
    for key, value in sorted(outputs.items()):
        print(f"{key}\t{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
