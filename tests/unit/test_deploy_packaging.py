"""What the deployment packages: the Lambda zip and the connector worker's image.

There is no Docker engine here, so the Dockerfile is checked line by line; the Lambda
package (``pipeline/`` and ``connectors/`` only) by importing the handlers in a fresh
interpreter and listing what they load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "connector" / "Dockerfile"
#: What the Lambda Python runtime provides besides the standard library: boto3 and its
#: dependencies (certifi is botocore's optional CA bundle).
LAMBDA_RUNTIME_PACKAGES = {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3", "certifi"}


def third_party_imports(*modules: str) -> set[str]:
    """Top-level non-stdlib packages a fresh interpreter loads to import ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    # Leaves out the interpreter's own modules and the editable install's import hook.
    return {name for name in json.loads(out.stdout.splitlines()[-1]) if not name.startswith("_")}


def test_the_lambda_package_needs_only_pipeline_connectors_and_the_runtimes_boto3():
    loaded = third_party_imports("connectors.connect.handler")
    assert loaded - LAMBDA_RUNTIME_PACKAGES == {"pipeline", "connectors"}


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    text = "\n".join(line for line in lines if not line.startswith("#")).replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line]


def arguments(instructions, keyword: str) -> list[str]:
    return [args for word, args in instructions if word == keyword]


def test_the_image_is_python_3_11_slim(instructions):
    assert instructions[0] == ("FROM", "python:3.11-slim")


def test_the_project_is_installed_without_dev_extras(instructions):
    installs = [args for args in arguments(instructions, "RUN") if "pip install" in args]
    assert installs == ["pip install /src && rm -rf /src"]
    assert "[dev]" not in DOCKERFILE.read_text()


def test_every_project_package_the_worker_imports_is_copied(instructions):
    copied = {Path(args.split()[0]).name for args in arguments(instructions, "COPY")}
    project_packages = {"pipeline", "connectors", "jobs", "emulators"}
    needed = third_party_imports("jobs.cli", "connectors.kvs.worker") & project_packages
    assert needed <= copied
    assert "emulators" not in copied


def test_the_worker_runs_as_a_non_root_user_after_the_install(instructions):
    words = [word for word, _ in instructions]
    (user,) = arguments(instructions, "USER")
    assert user.split(":")[0] not in ("root", "0")
    assert words.index("USER") > max(i for i, (w, a) in enumerate(instructions) if w == "RUN" and "pip" in a)


def test_the_entrypoint_is_the_connector_and_sigterm_stops_it(instructions):
    (entrypoint,) = arguments(instructions, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["cresta-pipeline", "connector", "run"]
    assert arguments(instructions, "STOPSIGNAL") == ["SIGTERM"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cresta-pipeline"] == "jobs.cli:main"
