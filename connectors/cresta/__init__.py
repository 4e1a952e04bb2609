"""Cresta at the edge: credentials, OAuth, stream adapters and the delivery service."""

from connectors.cresta.adapters import (
    PROTOCOLS,
    CrestaDeliveryError,
    CrestaStreamAdapter,
    StreamContact,
    WebSocketOptions,
    WebSocketStreamAdapter,
    adapter_factory,
)
from connectors.cresta.auth import CrestaAuthError, CrestaTokenProvider
from connectors.cresta.credentials import (
    CredentialsError,
    EnvironmentCredentials,
    SecretsManagerCredentials,
    StaticCredentials,
)
from connectors.cresta.service import CrestaDeliveryService, Delivered

__all__ = [
    "PROTOCOLS",
    "CredentialsError",
    "CrestaAuthError",
    "CrestaDeliveryError",
    "CrestaDeliveryService",
    "CrestaStreamAdapter",
    "CrestaTokenProvider",
    "Delivered",
    "EnvironmentCredentials",
    "SecretsManagerCredentials",
    "StaticCredentials",
    "StreamContact",
    "WebSocketOptions",
    "WebSocketStreamAdapter",
    "adapter_factory",
]
