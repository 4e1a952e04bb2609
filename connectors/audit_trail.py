"""Reading the audit trail back from where the job wrote it: a local folder or S3.

The notebook and `cresta-pipeline report` read through here. On S3 the endpoint comes
from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (as boto3 does), so the same code
reads the local stack's S3 and AWS; credentials come from the AWS SDK's default chain
(the ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` environment, a profile, or the
instance role) and are never passed around here.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs


class AuditTrailNotFound(Exception):
    """The location holds no committed audit Parquet file."""


def audit_location(location: str) -> tuple[pafs.FileSystem, str]:
    """The file system and root of ``location``: a path, ``file:///PATH`` or ``s3://BUCKET/PREFIX``.

    The root is a local path, or ``bucket/prefix`` on S3.
    """
    parts = urlsplit(location)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"{location!r}: an S3 location needs a bucket, s3://BUCKET/PREFIX")
        return _s3_filesystem(), parts.netloc + parts.path.rstrip("/")
    if parts.scheme == "file":
        return pafs.LocalFileSystem(), url2pathname(parts.path)
    if parts.scheme:
        raise ValueError(f"{location!r}: the audit trail is read from a folder, file:///PATH or s3://BUCKET/PREFIX")
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def _s3_filesystem() -> pafs.S3FileSystem:
    options: dict[str, str] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlsplit(endpoint)
        options.update(endpoint_override=url.netloc, scheme=url.scheme or "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def committed_parts(root: str | Path, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """The committed audit Parquet files under ``root``: a local folder, or ``bucket/prefix`` on S3.

    Part files in progress are left out: locally they are hidden ``.audit-….inprogress``
    files, on S3 unfinished multipart uploads.
    """
    filesystem = filesystem or pafs.LocalFileSystem()
    selector = pafs.FileSelector(str(root), recursive=True, allow_not_found=True)
    return [
        info.path
        for info in filesystem.get_file_info(selector)
        if info.is_file and info.base_name.endswith(".parquet") and not info.base_name.startswith((".", "_"))
    ]


def read_audit(root: str | Path, filesystem: pafs.FileSystem | None = None) -> pa.Table | None:
    """All committed audit rows under ``root`` (see ``committed_parts``); None when there are none."""
    filesystem = filesystem or pafs.LocalFileSystem()
    parts = committed_parts(root, filesystem)
    if not parts:
        return None
    return ds.dataset(
        parts, filesystem=filesystem, format="parquet", partitioning="hive", partition_base_dir=str(root)
    ).to_table()


def read_audit_trail(location: str) -> pa.Table:
    """The committed audit rows at ``location`` (see ``audit_location``)."""
    filesystem, root = audit_location(location)
    table = read_audit(root, filesystem)
    if table is None:
        raise AuditTrailNotFound(f"no audit trail at {location}: no committed .parquet file under it")
    return table
