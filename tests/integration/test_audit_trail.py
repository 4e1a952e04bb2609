"""connectors.audit_trail: reading committed audit part files from a folder and from S3
(moto's server over HTTP, reached through ``AWS_ENDPOINT_URL`` as on AWS)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.audit_trail import AuditTrailNotFound, audit_location, read_audit_trail

PARTITION = "dt=2024-09-18/hour=16"


def parquet_bytes(seqs: list[int]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"contact_id": ["c-1"] * len(seqs), "seq": seqs}), sink)
    return sink.getvalue()


def write_local_trail(root: Path) -> None:
    partition = root / PARTITION
    partition.mkdir(parents=True)
    (partition / "audit-0.parquet").write_bytes(parquet_bytes([0, 1]))
    (partition / "audit-1.parquet").write_bytes(parquet_bytes([2]))
    # What Flink's file sink leaves beside committed parts: files in progress, hidden.
    (partition / ".audit-2.parquet.inprogress.5d1c").write_bytes(parquet_bytes([3]))
    (partition / ".audit-3.parquet").write_bytes(parquet_bytes([4]))


def test_a_folder_trail_holds_the_committed_parts_with_their_partition(tmp_path):
    write_local_trail(tmp_path / "audit")
    for location in (str(tmp_path / "audit"), (tmp_path / "audit").as_uri()):
        table = read_audit_trail(location)
        assert sorted(table["seq"].to_pylist()) == [0, 1, 2]
        assert set(table["dt"].to_pylist()) == {"2024-09-18"} and set(table["hour"].to_pylist()) == {16}


def test_a_location_without_committed_parts_is_reported(tmp_path):
    (tmp_path / "audit" / PARTITION).mkdir(parents=True)
    (tmp_path / "audit" / PARTITION / ".audit-0.parquet.inprogress.5d1c").write_bytes(parquet_bytes([0]))
    for location in (str(tmp_path / "audit"), str(tmp_path / "nowhere")):
        with pytest.raises(AuditTrailNotFound, match=f"no audit trail at {location}"):
            read_audit_trail(location)


@pytest.mark.parametrize("location", ["s3:///audit", "https://example.com/audit", "gs://bucket/audit"])
def test_locations_other_than_a_folder_or_s3_are_refused(location):
    with pytest.raises(ValueError, match="s3://BUCKET/PREFIX"):
        audit_location(location)


def test_an_s3_trail_is_read_through_the_endpoint_in_the_environment(make_stack, monkeypatch):
    stack = make_stack()
    s3 = stack.client("s3")
    bucket, prefix = stack.settings.audit_bucket, "cresta/audit"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/{PARTITION}/audit-0.parquet", Body=parquet_bytes([0, 1]))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/{PARTITION}/audit-1.parquet", Body=parquet_bytes([2]))
    s3.put_object(Bucket=bucket, Key=f"other/{PARTITION}/audit-0.parquet", Body=parquet_bytes([9]))
    # A part the job has not committed yet: an S3 multipart upload not completed.
    upload = s3.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/{PARTITION}/audit-2.parquet")
    s3.upload_part(
        Bucket=bucket, Key=f"{prefix}/{PARTITION}/audit-2.parquet", UploadId=upload["UploadId"],
        PartNumber=1, Body=parquet_bytes([3]),
    )
    for name, value in stack.aws_environment().items():
        monkeypatch.setenv(name, value)
    table = read_audit_trail(f"s3://{bucket}/{prefix}/")
    assert sorted(table["seq"].to_pylist()) == [0, 1, 2]
    assert set(table["hour"].to_pylist()) == {16}

    # S3's own endpoint variable wins over the general one, as in boto3.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", stack.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert read_audit_trail(f"s3://{bucket}/{prefix}").num_rows == 3
