"""Cresta delivery settings, read from the pipeline config, and what is built from them.

Config keys (group ``cresta``):

- ``ws_url``, ``auth_url``, ``media_token``, ``attribute_allowlist`` (comma-separated);
- ``protocol``: a key of ``connectors.cresta.adapters.PROTOCOLS``, default ``media_streams``;
- ``oauth_secret_arn``: the Secrets Manager secret holding the client credentials
  (``connectors.cresta.credentials``); empty means ``CRESTA_CLIENT_ID`` /
  ``CRESTA_CLIENT_SECRET`` from the environment (local runs);
- ``buffer_ms``, ``burst_ms``, ``stall_ms``, ``close_grace_ms``: the delivery policy's
  per-contact buffers, when Cresta counts as away, and the close grace
  (``pipeline.delivery_policy.PolicySettings``).

The config model rejects keys it does not define; keys other than the first four are read
only when it defines them, and take these defaults otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import httpx

from connectors.cresta.adapters import CrestaStreamAdapter, WebSocketOptions, adapter_factory
from connectors.cresta.auth import CrestaTokenProvider
from connectors.cresta.credentials import (
    CredentialsSource,
    EnvironmentCredentials,
    SecretsManagerCredentials,
)
from connectors.cresta.service import CrestaDeliveryService
from pipeline.delivery_policy import PolicySettings

DEFAULT_PROTOCOL = "media_streams"


def parse_allowlist(text: str) -> frozenset[str]:
    """Attribute names from the comma-separated config value.

    >>> sorted(parse_allowlist(" queue, , language "))
    ['language', 'queue']
    """
    return frozenset(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True)
class CrestaSettings:
    ws_url: str
    auth_url: str
    media_token: str
    attribute_allowlist: frozenset[str] = frozenset()
    protocol: str = DEFAULT_PROTOCOL
    oauth_secret_arn: str = ""
    policy: PolicySettings = field(default_factory=PolicySettings)
    websocket: WebSocketOptions = field(default_factory=WebSocketOptions)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "CrestaSettings":
        policy = PolicySettings()
        policy = replace(
            policy,
            buffer_ms=int(config.get("cresta.buffer_ms", policy.buffer_ms)),
            burst_ms=int(config.get("cresta.burst_ms", policy.burst_ms)),
            stall_ms=int(config.get("cresta.stall_ms", policy.stall_ms)),
            close_grace_ms=int(config.get("cresta.close_grace_ms", policy.close_grace_ms)),
        )
        return cls(
            ws_url=config["cresta.ws_url"],
            auth_url=config["cresta.auth_url"],
            media_token=config["cresta.media_token"],
            attribute_allowlist=parse_allowlist(config["cresta.attribute_allowlist"]),
            protocol=config.get("cresta.protocol", DEFAULT_PROTOCOL),
            oauth_secret_arn=config.get("cresta.oauth_secret_arn", ""),
            policy=policy,
            websocket=WebSocketOptions(compression=None if config.get("cresta.compression") == "none" else "deflate"),
        )

    def credentials(self, secretsmanager_client: Any = None) -> CredentialsSource:
        if self.oauth_secret_arn:
            return SecretsManagerCredentials(self.oauth_secret_arn, secretsmanager_client)
        return EnvironmentCredentials()

    def new_adapter(self, tokens: CrestaTokenProvider) -> Callable[[], CrestaStreamAdapter]:
        return adapter_factory(self.protocol, self.ws_url, self.media_token, tokens, self.websocket)


def create_delivery_service(
    settings: CrestaSettings,
    credentials: CredentialsSource | None = None,
    http_client: httpx.Client | None = None,
) -> CrestaDeliveryService:
    """The delivery service for ``settings``; credentials and HTTP client injectable."""
    tokens = CrestaTokenProvider(settings.auth_url, credentials or settings.credentials(), http_client)
    return CrestaDeliveryService(
        settings.new_adapter(tokens),
        settings.policy,
        attribute_allowlist=settings.attribute_allowlist,
    )
