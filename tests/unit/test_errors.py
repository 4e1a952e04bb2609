import base64
import json

import pytest

from pipeline.config import errors_path, load_config
from pipeline.errors import ERROR_SCHEMA, PipelineError


def test_error_line_carries_reason_message_and_raw_bytes():
    raw = bytes(range(256))
    line = PipelineError(1_700_000_000_000, "audio-frames", "bad_magic", "magic b'xxxx'", raw=raw).to_json()
    body = json.loads(line)
    assert "\n" not in line
    assert body == {
        "schema": ERROR_SCHEMA,
        "at_ms": 1_700_000_000_000,
        "source": "audio-frames",
        "reason": "bad_magic",
        "message": "magic b'xxxx'",
        "contact_id": "",
        "raw_base64": base64.b64encode(raw).decode(),
    }


@pytest.mark.parametrize(
    ("audit_path", "expected"),
    [
        ("file:///data/out/audit", "file:///data/out/errors"),
        ("file:///data/out/audit/", "file:///data/out/errors"),
        ("s3://bucket/prefix/audit", "s3://bucket/prefix/errors"),
    ],
)
def test_errors_default_to_a_folder_beside_the_audit_trail(audit_path, expected):
    assert errors_path(load_config(env={}, overrides={"audit.path": audit_path})) == expected


def test_an_explicit_errors_path_wins():
    config = load_config(env={}, overrides={"audit.path": "s3://a/audit", "errors.path": "s3://b/errs"})
    assert errors_path(config) == "s3://b/errs"
