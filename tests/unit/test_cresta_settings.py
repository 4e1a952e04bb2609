"""Cresta settings from the pipeline config, and the objects they build."""

import doctest

import pytest

import connectors.cresta.settings
from connectors.cresta.adapters import WebSocketStreamAdapter
from connectors.cresta.credentials import EnvironmentCredentials, SecretsManagerCredentials, StaticCredentials
from connectors.cresta.settings import CrestaSettings, create_delivery_service
from pipeline.config import ConfigError, load_config
from pipeline.delivery_policy import PolicySettings
from pipeline.l16_stream import L16Sender
from pipeline.media_streams import MediaStreamsSender

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:cresta-AbCdEf"
CORE = {
    "cresta.ws_url": "wss://cresta.example/stream",
    "cresta.auth_url": "https://auth.example",
    "cresta.media_token": "media-token",
    "cresta.attribute_allowlist": "queue, language",
}


def test_the_pipeline_config_s_keys_with_defaults_for_the_rest():
    settings = CrestaSettings.from_config(load_config(env={}, overrides=CORE))
    assert settings == CrestaSettings(
        ws_url="wss://cresta.example/stream",
        auth_url="https://auth.example",
        media_token="media-token",
        attribute_allowlist=frozenset({"queue", "language"}),
        protocol="media_streams",
        oauth_secret_arn="",
        policy=PolicySettings(),
    )


def test_the_delivery_keys_once_the_config_model_has_them():
    settings = CrestaSettings.from_config(
        {
            **CORE,
            "cresta.protocol": "l16",
            "cresta.oauth_secret_arn": ARN,
            "cresta.buffer_ms": 2000,
            "cresta.close_grace_ms": 100,
        }
    )
    assert (settings.protocol, settings.oauth_secret_arn) == ("l16", ARN)
    assert (settings.policy.buffer_ms, settings.policy.close_grace_ms) == (2000, 100)


def test_credentials_come_from_secrets_manager_when_a_secret_is_named():
    with_secret = CrestaSettings.from_config({**CORE, "cresta.oauth_secret_arn": ARN})
    assert isinstance(with_secret.credentials(secretsmanager_client=object()), SecretsManagerCredentials)
    assert isinstance(CrestaSettings.from_config(CORE).credentials(), EnvironmentCredentials)


@pytest.mark.parametrize(("protocol", "sender"), [("media_streams", MediaStreamsSender), ("l16", L16Sender)])
def test_the_protocol_picks_the_adapter_s_wire_format(protocol, sender):
    settings = CrestaSettings.from_config({**CORE, "cresta.protocol": protocol})
    adapter = settings.new_adapter(tokens=None)()
    assert isinstance(adapter, WebSocketStreamAdapter) and adapter._new_sender is sender


def test_an_unknown_protocol_is_refused():
    settings = CrestaSettings.from_config({**CORE, "cresta.protocol": "carrier-pigeon"})
    with pytest.raises(ValueError, match="unknown Cresta protocol 'carrier-pigeon'"):
        settings.new_adapter(tokens=None)


def test_a_service_is_built_with_the_settings_policy_and_allowlist():
    settings = CrestaSettings.from_config({**CORE, "cresta.buffer_ms": 1234})
    service = create_delivery_service(settings, StaticCredentials("id", "secret"))
    try:
        assert service.settings.buffer_ms == 1234
        assert service.attribute_allowlist == frozenset({"queue", "language"})
    finally:
        service.close()


def test_docstring_examples_run():
    assert doctest.testmod(connectors.cresta.settings).failed == 0


def test_websocket_compression_is_offered_unless_turned_off():
    assert CrestaSettings.from_config(load_config(env={}, overrides=CORE)).websocket.compression == "deflate"
    off = CrestaSettings.from_config(load_config(env={}, overrides={**CORE, "cresta.compression": "none"}))
    assert off.websocket.compression is None


def test_an_unknown_compression_names_the_key():
    with pytest.raises(ConfigError, match="cresta.compression"):
        load_config(env={}, overrides={**CORE, "cresta.compression": "gzip"})
