"""KVS at the connector's edge: GetMedia behind ``MediaSource`` and the worker that
turns queued contacts into AudioFrame records."""

from connectors.kvs.media import KvsMediaSource, MediaSource, MediaSourceError
from connectors.kvs.worker import ConnectorWorker, ContactReadResult, read_contact, start_selector_for

__all__ = [
    "ConnectorWorker",
    "ContactReadResult",
    "KvsMediaSource",
    "MediaSource",
    "MediaSourceError",
    "read_contact",
    "start_selector_for",
]
