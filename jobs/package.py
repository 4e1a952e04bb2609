"""`cresta-pipeline package`: the deployment artifacts, built from the source tree.

``dist/cresta-pipeline-flink.zip`` is a Managed Service for Apache Flink application in the
layout the service runs a PyFlink job from (AWS's Python examples and "Create your Managed
Service for Apache Flink Python application")::

    main.py                      run option "python": the entry point
    lib/<shaded jar>             run option "jarfile": every Java dependency (``make jar``)
    python/                      run option "pyFiles": the job's own modules (pipeline/,
                                 jobs/, connectors/) and the pure-Python dependencies the
                                 runtime lacks, vendored for its platform
    application_properties.json  the property groups: the run options above and the keys
                                 a deployment sets (deploy/cloudformation/pipeline.yaml)

Managed Flink installs nothing (no ``pyRequirements``): what the job imports beyond PyFlink
and PyFlink's own dependencies must be in the zip. Flink puts each ``pyFiles`` folder itself
on the ``PYTHONPATH`` of the entry point and of the Python workers, so ``python/`` holds
importable packages at its top.

``dist/cresta-pipeline-lambdas.zip`` holds the Connect-side Lambda handlers' modules at
its root; the Lambda runtime brings boto3.

Only modules the entry points import, directly or from a function body, are shipped:
``emulators/`` and ``bench/`` never are, and importing them fails the build.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from jobs.audio_job import DEFAULT_JAR
from pipeline.config import MANAGED_FLINK_RUN_OPTIONS as RUN_OPTIONS_GROUP
from pipeline.config import SETTING_BY_KEY

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
FLINK_ENTRY = ROOT / "deploy" / "flink" / "main.py"
FLINK_ZIP = "cresta-pipeline-flink.zip"
LAMBDA_ZIP = "cresta-pipeline-lambdas.zip"
#: Handlers the stack's Lambda functions name (deploy/cloudformation/pipeline.yaml).
LAMBDA_HANDLER_MODULES = ("connectors.connect.handler",)

#: The project's packages a deployment artifact may contain.
SHIPPED_PACKAGES = frozenset({"pipeline", "connectors", "jobs"})
PYTHON_FILES_DIR = "python"
JAR_DIR = "lib"
PROPERTIES_FILE = "application_properties.json"

#: What Managed Flink's FLINK-1_20 runtime provides: PyFlink and everything it requires.
FLINK_RUNTIME_REQUIREMENT = "apache-flink"
#: What the Lambda Python runtime provides besides the standard library.
LAMBDA_RUNTIME_REQUIREMENT = "boto3"
#: The Managed Flink runtime's interpreter and machine: vendored wheels are chosen for
#: them, not for the machine that builds the zip.
TARGET_PYTHON_VERSION = "3.11"
TARGET_PLATFORM = "manylinux2014_x86_64"

#: The job's settings a deployment sets, the keys of the stack's property groups. The
#: value goes into the zip's application_properties.json: a placeholder for what the
#: deployment names, None for the setting's own default.
DEPLOYMENT_SETTINGS: Mapping[str, str | None] = {
    "aws.region": "<region>",
    "kinesis.audio_frames_stream": "<stack>-audio-frames",
    "kinesis.contact_events_stream": "<stack>-contact-events",
    "kinesis.initial_position": None,
    "assembler.chunk_ms": None,
    "cresta.ws_url": "wss://<Cresta Media Streams host>/…",
    "cresta.auth_url": "https://<Cresta OAuth domain>",
    "cresta.oauth_secret_arn": "<ARN of the Cresta credentials secret>",
    "cresta.media_token": "<per-customer Media Streams token, or leave out>",
    "cresta.attribute_allowlist": "<comma-separated attributes sent to Cresta, or leave out>",
    "audit.path": "s3://<audit bucket>/audit",
    "errors.path": "s3://<audit bucket>/errors",
    "flink.checkpoint_interval_ms": None,
}
#: Files keep this time in the zips, so identical content makes an identical zip (and
#: the deployment's content-addressed keys see no change).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class PackagingError(RuntimeError):
    pass


def run_options(jar_name: str = DEFAULT_JAR.name) -> dict[str, str]:
    """The ``kinesis.analytics.flink.run.options`` group for the zip's layout."""
    return {"python": FLINK_ENTRY.name, "jarfile": f"{JAR_DIR}/{jar_name}", "pyFiles": PYTHON_FILES_DIR}


def property_groups_template(jar_name: str = DEFAULT_JAR.name) -> list[dict]:
    """The zip's application_properties.json: run options first, then the job's groups."""
    groups: dict[str, dict[str, str]] = {}
    for key, value in DEPLOYMENT_SETTINGS.items():
        group, name = key.split(".", 1)
        groups.setdefault(group, {})[name] = str(SETTING_BY_KEY[key].default) if value is None else value
    return [{"PropertyGroupId": RUN_OPTIONS_GROUP, "PropertyMap": run_options(jar_name)}] + [
        {"PropertyGroupId": group, "PropertyMap": properties} for group, properties in groups.items()
    ]


# --- what an entry point imports ------------------------------------------------------


@dataclass(frozen=True)
class ImportClosure:
    #: Project source files, relative to the project root.
    modules: frozenset[Path]
    #: Top-level names of the imported modules that are neither the project's nor the
    #: standard library's.
    external: frozenset[str]


def import_closure(entries: Iterable[Path], root: Path = ROOT) -> ImportClosure:
    """Every project module ``entries`` import, following imports in function bodies too
    (the Flink functions import some modules only when a task opens)."""
    local_packages = {path.parent.name for path in root.glob("*/__init__.py")}
    modules: dict[Path, str] = {}
    external: set[str] = set()
    pending = []
    for path in entries:
        relative = path.relative_to(root)
        if relative.parts[0] in SHIPPED_PACKAGES:
            modules[relative] = ".".join(relative.with_suffix("").parts)
        pending.append((path, modules.get(relative, path.stem)))
    while pending:
        path, name = pending.pop()
        tree = ast.parse(path.read_text(), filename=str(path))
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            top = imported.partition(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if top not in local_packages:
                external.add(top)
                continue
            if top not in SHIPPED_PACKAGES:
                raise PackagingError(f"{path.relative_to(root)} imports {imported}: {top}/ is never deployed")
            parts = imported.split(".")
            for depth in range(1, len(parts) + 1):
                module = _module_file(root, parts[:depth])
                if module is not None and module.relative_to(root) not in modules:
                    modules[module.relative_to(root)] = ".".join(parts[:depth])
                    pending.append((module, ".".join(parts[:depth])))
    return ImportClosure(frozenset(modules), frozenset(external))


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Dotted names an ``import`` could load; ``from a import b`` yields ``a`` and ``a.b``
    (b may be a submodule)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def _module_file(root: Path, parts: list[str]) -> Path | None:
    for candidate in (root.joinpath(*parts, "__init__.py"), root.joinpath(*parts[:-1], f"{parts[-1]}.py")):
        if candidate.is_file():
            return candidate
    return None


# --- distributions: what the runtime has, what must be vendored -----------------------


def requirement_closure(requirements: Iterable[str]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions ``requirements`` need, theirs included, by canonical name."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        try:
            found[name] = distribution = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            raise PackagingError(f"{requirement.name} is needed but not installed") from None
        pending.extend(Requirement(text) for text in distribution.requires or ())
    return found


def distributions_of(top_level_names: Iterable[str]) -> set[str]:
    """The installed distributions that provide these top-level modules."""
    provided_by = importlib.metadata.packages_distributions()
    names = set()
    for top in sorted(top_level_names):
        if top not in provided_by:
            raise PackagingError(f"the job imports {top}, which no installed distribution provides")
        names.update(provided_by[top])
    return names


def vendored_requirements(external: Iterable[str], runtime: str) -> list[str]:
    """``name==version`` of every distribution the imports need that the runtime lacks."""
    provided = requirement_closure([runtime])
    needed = requirement_closure(distributions_of(external))
    return sorted(f"{dist.metadata['Name']}=={dist.version}" for name, dist in needed.items() if name not in provided)


def vendor(requirements: list[str], target: Path) -> None:
    """Installs ``requirements`` (pinned, no dependencies) into ``target`` as wheels for the
    Managed Flink runtime's interpreter and machine."""
    if not requirements:
        return
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--no-compile", "--target", str(target), "--platform", TARGET_PLATFORM, "--implementation", "cp",
        "--python-version", TARGET_PYTHON_VERSION, "--only-binary=:all:", *requirements,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise PackagingError(f"pip could not vendor {' '.join(requirements)}:\n{result.stderr.strip()}")
    # Console scripts of the vendored distributions: nothing runs them.
    shutil.rmtree(target / "bin", ignore_errors=True)


# --- the zips -------------------------------------------------------------------------


def _write_tree(archive: zipfile.ZipFile, source: Path, prefix: str) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            _write_file(archive, path, f"{prefix}{path.relative_to(source).as_posix()}")


def _write_file(archive: zipfile.ZipFile, path: Path, name: str) -> None:
    _write_bytes(archive, path.read_bytes(), name)


def _write_bytes(archive: zipfile.ZipFile, data: bytes, name: str) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o644 << 16
    # A jar is compressed already.
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".jar") else zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def build_flink_zip(out_dir: Path, jar: Path = DEFAULT_JAR) -> Path:
    """Writes the Managed Flink application zip; returns its path."""
    if not jar.is_file():
        raise PackagingError(f"no shaded jar at {jar}: `make jar` builds it")
    closure = import_closure([FLINK_ENTRY])
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / FLINK_ZIP
    with tempfile.TemporaryDirectory() as scratch:
        vendored = Path(scratch)
        requirements = vendored_requirements(closure.external, FLINK_RUNTIME_REQUIREMENT)
        log.info("vendoring for %s, Python %s: %s", TARGET_PLATFORM, TARGET_PYTHON_VERSION, " ".join(requirements))
        vendor(requirements, vendored)
        clashes = {path.name for path in vendored.iterdir()} & SHIPPED_PACKAGES
        if clashes:
            raise PackagingError(f"vendored distributions bring top-level {sorted(clashes)}, as the project does")
        with zipfile.ZipFile(target, "w") as archive:
            _write_file(archive, FLINK_ENTRY, FLINK_ENTRY.name)
            _write_bytes(archive, _properties_json(jar.name), PROPERTIES_FILE)
            _write_file(archive, jar, f"{JAR_DIR}/{jar.name}")
            for module in sorted(closure.modules):
                _write_file(archive, ROOT / module, f"{PYTHON_FILES_DIR}/{module.as_posix()}")
            _write_tree(archive, vendored, f"{PYTHON_FILES_DIR}/")
    return target


def build_lambda_zip(out_dir: Path) -> Path:
    """Writes the zip of the Connect-side Lambda handlers; returns its path."""
    closure = import_closure([_module_file(ROOT, name.split(".")) for name in LAMBDA_HANDLER_MODULES])
    missing = set(vendored_requirements(closure.external, LAMBDA_RUNTIME_REQUIREMENT))
    if missing:
        raise PackagingError(f"the Lambda handlers import what the Lambda runtime lacks: {sorted(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / LAMBDA_ZIP
    with zipfile.ZipFile(target, "w") as archive:
        for module in sorted(closure.modules):
            _write_file(archive, ROOT / module, module.as_posix())
    return target


def _properties_json(jar_name: str) -> bytes:
    return (json.dumps(property_groups_template(jar_name), indent=2) + "\n").encode()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cresta-pipeline package",
        description=f"Build the deployment artifacts: {FLINK_ZIP} (Managed Flink) and {LAMBDA_ZIP}.",
    )
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    parser.add_argument("--jar", default=str(DEFAULT_JAR), help="the shaded jar (default: the `make jar` output)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        for path in (build_flink_zip(Path(args.out), Path(args.jar)), build_lambda_zip(Path(args.out))):
            print(f"{path}  {path.stat().st_size:,} bytes  sha256 {sha256_of(path)}")
    except PackagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
