"""The operator docs (``docs/*.md``) against what they describe.

What a doc names must exist, and what it quotes must still be true:

- every configuration key named (``group.key`` in backticks) is a setting of
  ``pipeline.config``, and a default stated as "`key` (default N)" is the setting's;
- every template item named as "resource `X`", "parameter `X`", "output `X`" or
  "alarm `X`" is in ``deploy/cloudformation/pipeline.yaml``; the runbook's alarm table
  covers every alarm of the template, and the security doc's role table every IAM role;
- every "figure | value | source" table row holds the value its source has now: a
  template path (``Parameters.X.Default``, ``Resources.X.Properties.Y``), a setting's
  default, or a Python constant (``package.module.NAME``);
- every ``cresta-pipeline …`` command quoted answers ``--help`` and knows the flags quoted
  with it; every ``make X`` is a Makefile target; every repository path and relative
  link exists;
- every ``$ cresta-pipeline kvs …`` console example prints what the doc shows;
- the runbook's example of stack parameters names those the deployer must give.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import shlex
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from jobs.cli import main as cli_main
from jobs.deploy import ARTIFACT_PARAMETERS
from pipeline.config import SETTING_BY_KEY
from pipeline.mkv import write_connect_fragment

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
TEMPLATE = ROOT / "deploy" / "cloudformation" / "pipeline.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "kvs"
CONFIG_GROUPS = sorted({key.split(".", 1)[0] for key in SETTING_BY_KEY})
#: The folders and files a backticked repository path may start with.
REPO_ROOTS = ("pipeline/", "connectors/", "jobs/", "deploy/", "emulators/", "tests/", "bench/", "docs/", "notebooks/")
REPO_FILES = ("README.md", "BENCHMARKS.md", "Makefile", "pyproject.toml")

#: The Connect-layout GetMedia response of the runbook's examples: two contacts on one
#: pooled stream, fragments of 1 s with the tags GetMedia adds before the Cluster.
CONNECT_SAMPLE = "connect-getmedia.mkv"
CONNECT_SAMPLE_T0_MS = 1_726_677_688_724
CONNECT_SAMPLE_FIRST_FRAGMENT = 91343852333181432392682062607743920146264440000
CONNECT_SAMPLE_CONTACTS = (
    "d111f871-5fe7-40b1-b5f7-6b67060de0c2",
    "d111f871-5fe7-40b1-b5f7-6b67060de0c2",
    "8e3c1c1e-0000-4000-8000-000000000001",
)


def connect_sample() -> bytes:
    def epoch_seconds(ms: int) -> str:
        return f"{ms // 1000}.{ms % 1000:03d}"

    fragments = []
    for index, contact_id in enumerate(CONNECT_SAMPLE_CONTACTS):
        timecode = CONNECT_SAMPLE_T0_MS + index * 1000
        aws_tags = [
            ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", str(CONNECT_SAMPLE_FIRST_FRAGMENT + index)),
            ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", epoch_seconds(timecode + 40)),
            ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", epoch_seconds(timecode)),
        ]
        fragments.append(
            write_connect_fragment(
                contact_id=contact_id,
                instance_id="d5b716a2-0000-4000-8000-000000000001",
                timecode_ms=timecode,
                customer_pcm=bytes(16_000),
                agent_pcm=bytes(16_000),
                extra_tags_before_cluster=[aws_tags],
            )
        )
    return b"".join(fragments)


@cache
def doc_text(path: Path) -> str:
    return path.read_text()


def all_docs() -> str:
    return "\n".join(doc_text(path) for path in DOCS)


def inline_code(text: str) -> list[str]:
    """Backticked spans outside fenced blocks."""
    return re.findall(r"`([^`\n]+)`", fenced_blocks_removed(text))


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return re.findall(r"^```([^\n]*)\n(.*?)^```", text, re.M | re.S)


def fenced_blocks_removed(text: str) -> str:
    return re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)


def table_rows(text: str, header: tuple[str, ...]) -> list[list[str]]:
    """The body rows of every Markdown table whose header row is ``header``."""
    rows, in_table = [], False
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            in_table = False
        elif tuple(c.lower() for c in cells) == header:
            in_table = True
        elif in_table and not set("".join(cells)) <= set("-: "):
            rows.append(cells)
    return rows


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


@pytest.fixture(scope="module")
def template() -> dict:
    return cfn_yaml.load(str(TEMPLATE))


def test_the_docs_exist_and_the_readme_links_them():
    names = {path.name for path in DOCS}
    assert {"runbook.md", "integration-faq.md", "security.md"} <= names
    readme = (ROOT / "README.md").read_text()
    for name in ("runbook.md", "integration-faq.md", "security.md"):
        assert f"(docs/{name})" in readme


# --- configuration keys ---------------------------------------------------------------------


def named_config_keys(text: str) -> set[str]:
    pattern = re.compile(rf"(?:{'|'.join(CONFIG_GROUPS)})\.[a-z0-9_]+")
    return {span for span in inline_code(text) if pattern.fullmatch(span)}


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_configuration_key_named_is_a_setting(path):
    named = named_config_keys(doc_text(path))
    assert named - set(SETTING_BY_KEY) == set()


def as_number(text: str) -> float | None:
    match = re.match(r"\s*(-?[0-9][0-9_,]*(?:\.[0-9]+)?)\b", text)
    return float(match.group(1).replace(",", "").replace("_", "")) if match else None


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_default_stated_is_the_settings_default(path):
    for key, stated in re.findall(r"`([a-z0-9_]+\.[a-z0-9_]+)` \(default ([^)]+)\)", doc_text(path)):
        default = SETTING_BY_KEY[key].default
        if isinstance(default, bool):
            assert stated.split()[0] in (("true", "on") if default else ("false", "off")), key
        elif isinstance(default, (int, float)):
            assert as_number(stated) == default, key
        else:
            assert stated.strip("`\"' ") == default, key


# --- the CloudFormation template ------------------------------------------------------------

SECTIONS = {"resource": "Resources", "parameter": "Parameters", "output": "Outputs", "alarm": "Resources"}


def named_template_items(text: str) -> list[tuple[str, str]]:
    """(kind, name) for "resource `X`", "resources `X`, `Y` and `Z`", "parameter `X`", …
    (a Media Streams "custom parameter" is not the template's)."""
    found = []
    names = r"`\w+`(?:(?:, | and | or )`\w+`)*"
    for kind, listed in re.findall(rf"(?<![Cc]ustom )\b([Rr]esource|[Pp]arameter|[Oo]utput|[Aa]larm)s? ({names})", text):
        found += [(kind.lower(), name) for name in re.findall(r"`(\w+)`", listed)]
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_template_item_named_exists(path, template):
    for kind, name in named_template_items(doc_text(path)):
        assert name in template[SECTIONS[kind]], f"{kind} {name}"
        if kind == "alarm":
            assert template["Resources"][name]["Type"] == "AWS::CloudWatch::Alarm", name


def test_the_runbooks_stack_parameters_are_those_without_a_default(template):
    (example,) = [json.loads(body) for info, body in fenced_blocks(doc_text(ROOT / "docs" / "runbook.md"))
                  if info.strip() == "json" and "ConnectInstanceArn" in body]
    required = {name for name, parameter in template["Parameters"].items() if "Default" not in parameter}
    assert set(example) == required - set(ARTIFACT_PARAMETERS.values())


def of_type(template: dict, resource_type: str) -> set[str]:
    return {name for name, resource in template["Resources"].items() if resource["Type"] == resource_type}


def first_cells(path: Path, header: tuple[str, ...]) -> set[str]:
    return {name for row in table_rows(doc_text(path), header) for name in backticked(row[0])}


def test_the_runbook_says_what_every_alarm_means(template):
    documented = first_cells(ROOT / "docs" / "runbook.md", ("alarm", "fires when", "what to do"))
    assert documented == of_type(template, "AWS::CloudWatch::Alarm")


def test_the_security_doc_lists_every_iam_role(template):
    documented = first_cells(ROOT / "docs" / "security.md", ("role", "assumed by", "may do"))
    assert documented == of_type(template, "AWS::IAM::Role")


def resolve_template_path(template: dict, dotted: str) -> Any:
    node: Any = template
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def resolve_python_name(dotted: str) -> Any:
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            node = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            node = getattr(node, attribute)
        return node
    raise LookupError(dotted)


def source_value(template: dict, source: str) -> Any:
    if source.split(".", 1)[0] in ("Parameters", "Resources", "Outputs"):
        return resolve_template_path(template, source)
    if source in SETTING_BY_KEY:
        return SETTING_BY_KEY[source].default
    return resolve_python_name(source)


def figure_rows() -> list[tuple[str, str, str]]:
    return [
        (path.name, row[1], source)
        for path in DOCS
        for row in table_rows(doc_text(path), ("figure", "value", "source"))
        for source in backticked(row[2])[:1]
    ]


def test_the_docs_have_figure_tables():
    assert {name for name, _, _ in figure_rows()} >= {"security.md"}


@pytest.mark.parametrize("doc, value, source", figure_rows(), ids=lambda item: str(item))
def test_every_figure_is_its_sources_value(doc, value, source, template):
    actual = source_value(template, source)
    stated = value.strip("` ")
    numeric = not isinstance(actual, bool) and as_number(str(actual)) is not None
    matches = as_number(stated) == as_number(str(actual)) if numeric else stated == str(actual)
    assert matches, f"{doc}: {source} is {actual!r}, the doc says {stated!r}"


# --- commands, targets, paths and links -----------------------------------------------------


def quoted_commands(text: str) -> list[list[str]]:
    """Every ``cresta-pipeline …`` invocation, inline or in a fenced block, as words."""
    lines = [span for span in inline_code(text) if span.startswith("cresta-pipeline ")]
    for info, body in fenced_blocks(text):
        for line in body.replace("\\\n", " ").splitlines():
            if info.strip() == "console":
                # Console blocks: commands after "$ ", the rest is output.
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            command = line.split("|")[-1].strip()
            if command.startswith("cresta-pipeline "):
                lines.append(command)
    return [shlex.split(line.split(" #")[0].replace("…", "VALUE")) for line in lines]


def command_path(words: list[str]) -> tuple[str, ...]:
    """The subcommand words: up to the first option, placeholder or argument."""
    path = []
    for word in words[1:]:
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        path.append(word)
    return tuple(path)


@cache
def help_text(path: tuple[str, ...]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main([*path, "--help"])
    assert exit_info.value.code == 0, path
    return out.getvalue()


def commands_and_flags() -> dict[tuple[str, ...], set[str]]:
    found: dict[tuple[str, ...], set[str]] = {}
    for words in quoted_commands(all_docs()):
        path = command_path(words)
        found.setdefault(path, set()).update(w.split("=")[0] for w in words if w.startswith("--"))
    return found


def test_every_command_quoted_names_a_subcommand():
    assert all(command_path(words) for words in quoted_commands(all_docs()))
    assert commands_and_flags()


@pytest.mark.parametrize("path", sorted(commands_and_flags()), ids=" ".join)
def test_every_command_quoted_answers_help_and_knows_its_flags(path):
    text = help_text(path)
    assert commands_and_flags()[path] - set(re.findall(r"--[a-z][a-z-]*", text)) == set()


def test_every_make_target_named_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", all_docs()))
    assert named and named - targets == set()


def repository_paths(text: str) -> set[str]:
    paths = set()
    for span in inline_code(text):
        candidate = span.split()[0].rstrip(".,:;")
        if any(mark in candidate for mark in "<>*…{}$") or "://" in candidate:
            continue
        if candidate.startswith(REPO_ROOTS) or candidate in REPO_FILES:
            paths.add(candidate)
    return paths


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_repository_path_named_exists(path):
    missing = {name for name in repository_paths(doc_text(path)) if not (ROOT / name).exists()}
    assert missing == set()


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", fenced_blocks_removed(path.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("path", [*DOCS, ROOT / "README.md"], ids=lambda path: path.name)
def test_every_relative_link_resolves(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", fenced_blocks_removed(path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part) if file_part else path
        assert linked.exists(), target
        if anchor and linked.suffix == ".md":
            assert anchor in heading_anchors(linked), target


# --- console examples -----------------------------------------------------------------------


def console_examples() -> list[tuple[str, str, str]]:
    """(doc, command line, output shown) of ``$ … cresta-pipeline kvs …`` console blocks."""
    examples = []
    for path in DOCS:
        for info, body in fenced_blocks(doc_text(path)):
            if info.strip() != "console":
                continue
            command, _, output = body.partition("\n")
            if "cresta-pipeline kvs " in command:
                examples.append((path.name, command.removeprefix("$ "), output))
    return examples


def test_the_runbook_shows_kvs_tool_output():
    assert {doc for doc, _, _ in console_examples()} == {"runbook.md"}


@pytest.mark.parametrize("doc, command, shown", console_examples(), ids=lambda item: str(item)[:60])
def test_every_console_example_prints_what_the_doc_shows(doc, command, shown, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests" / "fixtures").mkdir(parents=True)
    (tmp_path / "tests" / "fixtures" / "kvs").symlink_to(FIXTURES)
    (tmp_path / CONNECT_SAMPLE).write_bytes(connect_sample())
    stdin = b""
    if "|" in command:
        # `head -c N FILE | cresta-pipeline …`: the first N bytes of FILE on stdin.
        feeder, command = (part.strip() for part in command.split("|"))
        _, _, count, name = shlex.split(feeder)
        stdin = Path(name).read_bytes()[: int(count)]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    capsys.readouterr()
    cli_main(shlex.split(command)[1:])
    captured = capsys.readouterr()
    assert captured.out + captured.err == shown
