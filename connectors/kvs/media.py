"""GetMedia behind one small interface, so the worker never touches boto3 directly.

``MediaSource.open(stream_arn, start_selector)`` returns the response body as an
iterator of byte chunks. ``KvsMediaSource`` is the real one (GetDataEndpoint cached per
stream, then a ``kinesis-video-media`` client on that endpoint); tests can pass any
object with the same ``open`` — e.g. a fake that injects faults.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

#: GetDataEndpoint allows 5 calls/s per stream; the endpoint is stable, and AWS's own
#: consumers refresh it around the 45-minute GetMedia session limit.
ENDPOINT_TTL_S = 45 * 60

#: Errors after which the same request may succeed later: KVS throttling and limits, and
#: a stale cached data endpoint (forgotten, so the retry asks GetDataEndpoint again).
#: Server-side (5xx) errors are retryable too; anything else will not heal by waiting.
RETRYABLE_ERROR_CODES = frozenset(
    {
        "ClientLimitExceededException",
        "ConnectionLimitExceededException",
        "ThrottlingException",
        "InvalidEndpointException",
    }
)


#: One pooled connection per concurrently read contact (the target is 300 per worker);
#: a GetMedia body that stays silent much longer than KVS's ~3 s end-of-data timeout
#: means a dead connection.
DEFAULT_MEDIA_CLIENT_CONFIG = Config(max_pool_connections=512, read_timeout=20, connect_timeout=5)
#: Reads return each HTTP chunk as it lands (KVS's reach 16 KiB), so a read size above
#: that costs no latency; botocore's 1,024 bytes cut a chunk into up to 16 reads, each
#: a trip through urllib3, the parser and the worker's loop.
DEFAULT_CHUNK_SIZE = 64 * 1024


class MediaSourceError(Exception):
    """GetMedia could not be opened or read. ``code`` is the AWS error code or a short
    reason; ``retryable`` says whether trying again later can help."""

    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.retryable = retryable


class MediaSource(Protocol):
    def open(self, stream_arn: str, start_selector: dict[str, Any]) -> Iterator[bytes]:
        """Start GetMedia; the returned iterator yields the body and may raise
        ``MediaSourceError``. Closing it ends the connection."""
        ...


def _available_chunks(body: Any, chunk_size: int) -> Iterator[bytes]:
    """Body bytes as soon as they arrive, at most ``chunk_size`` at a time.

    ``StreamingBody.iter_chunks`` calls ``read(chunk_size)``, which blocks until that many
    bytes have arrived. A fragment's tail (its ContactId tag among it) then waits for the
    next fragment, about a second with Connect, and the last fragment for the end of the
    response: measured in the demo, fragments reached KDS one fragment late. GetMedia
    answers with chunked transfer encoding, and urllib3's ``read_chunked`` yields each
    HTTP chunk as it lands while still raising on a response cut short. botocore exposes
    the urllib3 response only as ``_raw_stream``; without it (another HTTP stack) the
    blocking iterator is the fallback.
    """
    raw = getattr(body, "_raw_stream", None)
    if raw is None or not getattr(raw, "chunked", False):
        yield from body.iter_chunks(chunk_size)
        return
    yield from raw.read_chunked(chunk_size, decode_content=False)


class KvsMediaSource:
    """GetMedia through boto3: one HTTP connection per call, both tracks in it.

    Parameters
    ----------
    kinesisvideo_client:
        A boto3 ``kinesisvideo`` (control plane) client, used for GetDataEndpoint.
    media_endpoint_override:
        Use this endpoint instead of the one GetDataEndpoint returns (the local stack:
        moto answers with a host that does not exist, the emulator serves GetMedia).
    session:
        boto3 session that creates the ``kinesis-video-media`` clients; defaults to a
        new one with the standard credential chain.
    chunk_size:
        The most bytes one read of the response body returns. Over an HTTP stack that
        cannot read chunk by chunk, also how many bytes a read waits for.
    media_client_config:
        botocore ``Config`` of the ``kinesis-video-media`` clients.
    """

    def __init__(
        self,
        kinesisvideo_client: Any,
        media_endpoint_override: str | None = None,
        session: boto3.session.Session | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        endpoint_ttl_s: float = ENDPOINT_TTL_S,
        media_client_config: Config = DEFAULT_MEDIA_CLIENT_CONFIG,
    ) -> None:
        self._control = kinesisvideo_client
        self.media_endpoint_override = media_endpoint_override
        self._session = session or boto3.session.Session()
        self.chunk_size = chunk_size
        self.endpoint_ttl_s = endpoint_ttl_s
        self._media_client_config = media_client_config
        self._lock = threading.Lock()
        self._endpoints: dict[str, tuple[str, float]] = {}
        self._media_clients: dict[str, Any] = {}

    def open(self, stream_arn: str, start_selector: dict[str, Any]) -> Iterator[bytes]:
        client = self._media_client(self.endpoint_for(stream_arn))
        try:
            response = client.get_media(StreamARN=stream_arn, StartSelector=start_selector)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("InvalidEndpointException", "NotAuthorizedException"):
                self.forget_endpoint(stream_arn)
            raise _media_source_error(exc) from exc
        except BotoCoreError as exc:
            raise MediaSourceError(type(exc).__name__, str(exc), retryable=True) from exc
        return self._read(response["Payload"])

    def _read(self, body: Any) -> Iterator[bytes]:
        try:
            yield from _available_chunks(body, self.chunk_size)
        # urllib3's errors come unwrapped from read_chunked (botocore wraps them only in
        # its own read path).
        except (BotoCoreError, OSError, urllib3.exceptions.HTTPError) as exc:
            raise MediaSourceError("read_failed", str(exc), retryable=True) from exc
        finally:
            body.close()

    def endpoint_for(self, stream_arn: str) -> str:
        """The GET_MEDIA data endpoint of a stream (cached for ``endpoint_ttl_s``)."""
        now = time.monotonic()
        with self._lock:
            cached = self._endpoints.get(stream_arn)
            if cached is not None and now - cached[1] < self.endpoint_ttl_s:
                return cached[0]
        try:
            response = self._control.get_data_endpoint(StreamARN=stream_arn, APIName="GET_MEDIA")
            endpoint = response["DataEndpoint"]
        except ClientError as exc:
            raise _media_source_error(exc) from exc
        except BotoCoreError as exc:
            raise MediaSourceError(type(exc).__name__, str(exc), retryable=True) from exc
        with self._lock:
            self._endpoints[stream_arn] = (endpoint, now)
        return endpoint

    def forget_endpoint(self, stream_arn: str) -> None:
        with self._lock:
            self._endpoints.pop(stream_arn, None)

    def _media_client(self, endpoint: str) -> Any:
        url = self.media_endpoint_override or endpoint
        with self._lock:
            client = self._media_clients.get(url)
            if client is None:
                client = self._session.client(
                    "kinesis-video-media",
                    endpoint_url=url,
                    region_name=self._control.meta.region_name,
                    config=self._media_client_config,
                )
                self._media_clients[url] = client
            return client


def _media_source_error(exc: ClientError) -> MediaSourceError:
    code = exc.response["Error"]["Code"]
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return MediaSourceError(code, str(exc), code in RETRYABLE_ERROR_CODES or status >= 500)
