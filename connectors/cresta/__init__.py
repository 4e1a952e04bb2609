"""Cresta at the edge: OAuth client credentials and the Media Streams WebSocket client."""

from connectors.cresta.auth import CrestaAuthError, CrestaTokenProvider
from connectors.cresta.media_streams_client import CrestaDeliveryError, MediaStreamsConnection

__all__ = [
    "CrestaAuthError",
    "CrestaDeliveryError",
    "CrestaTokenProvider",
    "MediaStreamsConnection",
]
