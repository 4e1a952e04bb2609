"""Cresta client credentials from Secrets Manager (stubbed: the exact requests) and the environment."""

import doctest
import json
import logging

import boto3
import pytest
from botocore.stub import Stubber

import connectors.cresta.credentials
from connectors.cresta.credentials import (
    CredentialsError,
    EnvironmentCredentials,
    SecretsManagerCredentials,
    StaticCredentials,
    region_of_secret_arn,
)

ARN = "arn:aws:secretsmanager:us-west-2:123456789012:secret:cresta-oauth-AbCdEf"
CLIENT_ID = "client-id-1"
CLIENT_SECRET = "s3cr3t-from-secrets-manager"


def secretsmanager():
    return boto3.client(
        "secretsmanager",
        region_name="us-west-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def secret_response(text: str | None, version: str = "1" * 32) -> dict:
    response = {"ARN": ARN, "Name": "cresta-oauth", "VersionId": version, "VersionStages": ["AWSCURRENT"]}
    if text is not None:
        response["SecretString"] = text
    return response


def credentials_json(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) -> str:
    return json.dumps({"oauthClientId": client_id, "oauthClientSecret": client_secret})


def test_the_secret_is_read_with_exactly_one_get_secret_value_per_load():
    client = secretsmanager()
    with Stubber(client) as stub:
        stub.add_response("get_secret_value", secret_response(credentials_json()), {"SecretId": ARN})
        stub.add_response(
            "get_secret_value",
            secret_response(credentials_json(client_secret="rotated"), "2" * 32),
            {"SecretId": ARN},
        )
        source = SecretsManagerCredentials(ARN, client)
        first, second = source.load(), source.load()
        stub.assert_no_pending_responses()
    assert (first.client_id, first.client_secret.reveal()) == (CLIENT_ID, CLIENT_SECRET)
    assert second.client_secret.reveal() == "rotated"


@pytest.mark.parametrize(
    ("secret_string", "message"),
    [
        (None, "has no SecretString"),
        (f"{CLIENT_SECRET} is not json", "is not JSON"),
        (json.dumps([CLIENT_SECRET]), "must be a JSON object"),
        (json.dumps({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}), "oauthClientId and oauthClientSecret"),
        (json.dumps({"oauthClientId": CLIENT_ID, "oauthClientSecret": ""}), "non-empty string"),
        (json.dumps({"oauthClientId": CLIENT_ID, "oauthClientSecret": 7}), "non-empty string"),
    ],
)
def test_a_malformed_secret_is_an_error_that_does_not_quote_it(secret_string, message):
    client = secretsmanager()
    with Stubber(client) as stub:
        stub.add_response("get_secret_value", secret_response(secret_string), {"SecretId": ARN})
        with pytest.raises(CredentialsError, match=message) as raised:
            SecretsManagerCredentials(ARN, client).load()
    assert CLIENT_SECRET not in printed_chain(raised.value)


def printed_chain(error: BaseException | None) -> str:
    """What a traceback shows of ``error`` and the exceptions it chains (a JSON decode
    error would carry the secret's text in ``doc``)."""
    shown = []
    while error is not None:
        shown.append(f"{error} {error!r} {getattr(error, 'doc', '')}")
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return " ".join(shown)


@pytest.mark.parametrize("code", ["ResourceNotFoundException", "AccessDeniedException", "DecryptionFailure"])
def test_a_refused_read_is_an_error_naming_the_code(code):
    client = secretsmanager()
    with Stubber(client) as stub:
        stub.add_client_error("get_secret_value", code, "the message", expected_params={"SecretId": ARN})
        with pytest.raises(CredentialsError, match=f"GetSecretValue {ARN} failed: {code}"):
            SecretsManagerCredentials(ARN, client).load()


def test_nothing_secret_reaches_logs_or_reprs(caplog):
    caplog.set_level(logging.DEBUG)
    client = secretsmanager()
    with Stubber(client) as stub:
        stub.add_response("get_secret_value", secret_response(credentials_json()), {"SecretId": ARN})
        source = SecretsManagerCredentials(ARN, client)
        loaded = source.load()
    visible = " ".join([caplog.text, repr(source), repr(loaded), str(loaded), repr(vars(source))])
    assert "read Cresta client credentials from" in caplog.text
    assert CLIENT_SECRET not in visible


def test_a_client_is_created_in_the_secret_s_region_when_none_is_given():
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    source = SecretsManagerCredentials(ARN, boto3_session=session)
    assert source._secretsmanager().meta.region_name == "us-west-2"


@pytest.mark.parametrize(
    "arn", ["", "cresta-oauth", "arn:aws:s3:::bucket", "arn:aws:secretsmanager::123:secret:x"]
)
def test_a_name_that_is_not_a_secret_arn_is_refused(arn):
    with pytest.raises(CredentialsError, match="not a Secrets Manager secret ARN"):
        region_of_secret_arn(arn)


def test_environment_credentials_are_read_on_every_load():
    env = {"CRESTA_CLIENT_ID": CLIENT_ID, "CRESTA_CLIENT_SECRET": CLIENT_SECRET}
    source = EnvironmentCredentials(env)
    assert source.load().client_secret.reveal() == CLIENT_SECRET
    env["CRESTA_CLIENT_SECRET"] = "rotated"
    assert source.load().client_secret.reveal() == "rotated"
    assert CLIENT_SECRET not in repr(source) + repr(source.load())


@pytest.mark.parametrize("env", [{}, {"CRESTA_CLIENT_ID": CLIENT_ID}, {"CRESTA_CLIENT_SECRET": CLIENT_SECRET}])
def test_missing_environment_credentials_are_an_error(env):
    with pytest.raises(CredentialsError, match="must both be set") as raised:
        EnvironmentCredentials(env).load()
    assert CLIENT_SECRET not in str(raised.value)


def test_static_credentials_hide_the_secret():
    source = StaticCredentials(CLIENT_ID, CLIENT_SECRET)
    assert source.load().client_secret.reveal() == CLIENT_SECRET
    assert CLIENT_SECRET not in repr(source) + repr(source.load())


def test_docstring_examples_run():
    assert doctest.testmod(connectors.cresta.credentials).failed == 0
