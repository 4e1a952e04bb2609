"""What the deployment packages: the Managed Flink application zip, the Lambda zip and
the connector worker's image.

The zips are built by ``cresta-pipeline package`` and unpacked; their entry points are
imported by a fresh interpreter whose path holds nothing but the zip's folders, the
runtime's packages (PyFlink and what it requires; boto3 for Lambda) and the standard
library, as Managed Flink and Lambda run them. There is no Docker engine here, so the
Dockerfile is checked line by line.
"""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

from jobs import package
from jobs.audio_job import DEFAULT_JAR
from pipeline.config import load_config

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


# --- the Managed Flink application zip ---------------------------------------------------


@pytest.fixture(scope="module")
def flink_zip(tmp_path_factory) -> Path:
    if not DEFAULT_JAR.is_file():
        pytest.skip(f"no shaded jar at {DEFAULT_JAR}: `make jar` builds it")
    return package.build_flink_zip(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def application(flink_zip, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("application")
    with zipfile.ZipFile(flink_zip) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def run_options(application) -> dict[str, str]:
    groups = json.loads((application / package.PROPERTIES_FILE).read_text())
    return {group["PropertyGroupId"]: group["PropertyMap"] for group in groups}[package.RUN_OPTIONS_GROUP]


def runtime_site(requirement: str, folder: Path) -> Path:
    """A folder with only what a runtime provides: the installed files of ``requirement``
    and of everything it requires (linked, by top-level name)."""
    folder.mkdir()
    for distribution in package.requirement_closure([requirement]).values():
        for top in {file.parts[0] for file in distribution.files or ()} - {".."}:
            if not (folder / top).exists():
                (folder / top).symlink_to(distribution.locate_file(top))
    return folder


def isolated_python(path: list[Path], code: str, cwd: Path) -> dict:
    """Runs ``code`` in a fresh interpreter without site-packages (-I -S), ``path`` first on
    its sys.path; returns the JSON it prints last."""
    prelude = f"import sys; sys.path[:0] = {[str(entry) for entry in path]!r}\n"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


LOADED_MODULES = (
    "print(json.dumps({name: getattr(module, '__file__', None) for name, module in list(sys.modules.items())}))"
)


def test_the_run_options_name_the_entry_at_the_root_the_jar_and_the_python_folder(application, run_options):
    assert "/" not in run_options["python"] and (application / run_options["python"]).is_file()
    jar = application / run_options["jarfile"]
    assert jar.parent.name == "lib" and jar.name == DEFAULT_JAR.name
    assert filecmp.cmp(jar, DEFAULT_JAR, shallow=False)
    for folder in run_options["pyFiles"].split(","):
        assert (application / folder).is_dir()


def test_the_property_template_is_a_config_the_job_loads(application):
    config = load_config(application / package.PROPERTIES_FILE, env={})
    assert config["kinesis.audio_frames_stream"] == package.DEPLOYMENT_SETTINGS["kinesis.audio_frames_stream"]


def test_the_entry_and_every_shipped_module_import_from_the_zip_and_the_flink_runtime_alone(
    application, run_options, tmp_path
):
    runtime = runtime_site(package.FLINK_RUNTIME_REQUIREMENT, tmp_path / "runtime")
    python_files = [application / folder for folder in run_options["pyFiles"].split(",")]
    shipped = sorted(
        ".".join(path.relative_to(folder).with_suffix("").parts).removesuffix(".__init__")
        for folder in python_files for path in folder.rglob("*.py")
        if path.relative_to(folder).parts[0] in package.SHIPPED_PACKAGES
    )
    closure = package.import_closure([package.FLINK_ENTRY])
    # The script's folder comes first, as when Flink runs `python main.py`.
    loaded = isolated_python(
        [application, *python_files, runtime],
        "import importlib, json, sys\n"
        f"import {Path(run_options['python']).stem}\n"
        f"for name in {shipped + sorted(closure.external)!r}: importlib.import_module(name)\n"
        + LOADED_MODULES,
        cwd=tmp_path,
    )
    assert {"jobs.audio_job", "jobs.functions"} <= set(shipped)
    # The Cresta client: the delivery function imports it only when its task opens.
    assert [name for name in shipped if name.startswith("connectors.cresta.")]
    assert loaded["main"] == str(application / "main.py")
    for name in [*shipped, "websockets", "httpx", "boto3", "botocore"]:
        assert loaded[name].startswith(str(application / package.PYTHON_FILES_DIR)), name
    assert loaded["pyflink"].startswith(str(runtime))
    outside = {
        name: file for name, file in loaded.items()
        if file and not file.startswith((str(application), str(runtime), sys.base_prefix))
    }
    assert outside == {}


def test_only_what_the_runtime_lacks_is_vendored_for_its_machine(application, run_options):
    python = application / run_options["pyFiles"]
    vendored = {path.name.split("-")[0].lower() for path in python.glob("*.dist-info")}
    runtime = set(package.requirement_closure([package.FLINK_RUNTIME_REQUIREMENT]))
    assert {"websockets", "httpx", "boto3", "botocore"} <= vendored
    assert not vendored & {name.replace("-", "_") for name in runtime}
    # A C extension built for Managed Flink's interpreter and machine, whatever builds the zip.
    assert list((python / "websockets").glob("*.cpython-311-x86_64-linux-gnu.so"))
    assert not (python / "bin").exists()


def test_no_emulator_benchmark_or_compiled_file_is_shipped(flink_zip):
    names = zipfile.ZipFile(flink_zip).namelist()
    assert not [name for name in names if name.startswith(("python/emulators/", "python/bench/", "python/tests/"))]
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.startswith("python/") and name.endswith(".jar")]


def test_the_same_sources_make_the_same_zip(flink_zip, tmp_path):
    # The deployment names artifacts by their content: an unchanged job must not look changed.
    assert package.build_flink_zip(tmp_path).read_bytes() == flink_zip.read_bytes()


def test_without_the_jar_packaging_says_how_to_build_it(tmp_path):
    with pytest.raises(package.PackagingError, match="make jar"):
        package.build_flink_zip(tmp_path, jar=tmp_path / "missing.jar")


# --- the Lambda zip ----------------------------------------------------------------------


def test_the_lambda_zip_serves_the_stacks_handlers_with_the_runtimes_boto3_alone(tmp_path):
    lambda_zip = package.build_lambda_zip(tmp_path / "dist")
    code = tmp_path / "code"
    with zipfile.ZipFile(lambda_zip) as archive:
        archive.extractall(code)
    template = cfn_yaml.load(str(ROOT / "deploy" / "cloudformation" / "pipeline.yaml"))
    handlers = [
        resource["Properties"]["Handler"] for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Lambda::Function"
    ]
    runtime = runtime_site(package.LAMBDA_RUNTIME_REQUIREMENT, tmp_path / "runtime")
    loaded = isolated_python(
        [code, runtime],
        "import importlib, json, sys\n"
        f"for handler in {handlers!r}:\n"
        "    module, _, function = handler.rpartition('.')\n"
        "    assert callable(getattr(importlib.import_module(module), function)), handler\n"
        + LOADED_MODULES,
        cwd=tmp_path,
    )
    assert len(handlers) == 2
    project = {name: file for name, file in loaded.items() if name.split(".")[0] in package.SHIPPED_PACKAGES}
    assert project and all(file.startswith(str(code)) for file in project.values())
    assert not [name for name in zipfile.ZipFile(lambda_zip).namelist() if not name.startswith(("pipeline/", "connectors/"))]


# --- what the build follows ---------------------------------------------------------------


def write_modules(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_imports_in_function_bodies_and_relative_imports_are_followed(tmp_path):
    write_modules(tmp_path, {
        "entry.py": "import jobs.run\n",
        "jobs/__init__.py": "",
        "jobs/run.py": "def start():\n    from pipeline import lazy\n    import websockets\n",
        "pipeline/__init__.py": "",
        "pipeline/lazy.py": "from .shared import VALUE\nimport json\n",
        "pipeline/shared.py": "VALUE = 1\n",
        "pipeline/unused.py": "",
    })
    closure = package.import_closure([tmp_path / "entry.py"], root=tmp_path)
    assert closure.modules == {
        Path(name) for name in
        ("jobs/__init__.py", "jobs/run.py", "pipeline/__init__.py", "pipeline/lazy.py", "pipeline/shared.py")
    }
    assert closure.external == {"websockets"}


def test_a_job_importing_the_emulators_is_refused(tmp_path):
    write_modules(tmp_path, {
        "entry.py": "import jobs.run\n",
        "jobs/__init__.py": "",
        "jobs/run.py": "def start():\n    from emulators.demo import main\n",
        "emulators/__init__.py": "",
        "emulators/demo.py": "",
    })
    with pytest.raises(package.PackagingError, match="emulators"):
        package.import_closure([tmp_path / "entry.py"], root=tmp_path)
