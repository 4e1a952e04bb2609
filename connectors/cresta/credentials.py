"""Where the Cresta OAuth client id and secret come from: AWS Secrets Manager or the environment.

Production reads a Secrets Manager secret, named by its ARN, whose ``SecretString`` is a
JSON object with the same two keys Cresta's own Amazon Connect Lambdas read
(``cresta/amazon-connect-pstn-transfer``, ``internal/pstntransfercore/secretsmanager.go``),
so one secret serves both::

    {"oauthClientId": "…", "oauthClientSecret": "…"}

Local runs read ``CRESTA_CLIENT_ID`` and ``CRESTA_CLIENT_SECRET`` from the environment.

A source is read again whenever the token provider is told the credentials it holds were
refused (HTTP 401), so a rotated secret takes effect without a restart. The secret never
appears in a log record, an exception text or a ``repr``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import boto3
from botocore.exceptions import BotoCoreError, ClientError

logger = logging.getLogger(__name__)

SECRET_CLIENT_ID_KEY = "oauthClientId"
SECRET_CLIENT_SECRET_KEY = "oauthClientSecret"
CLIENT_ID_ENV = "CRESTA_CLIENT_ID"
CLIENT_SECRET_ENV = "CRESTA_CLIENT_SECRET"


class CredentialsError(Exception):
    """The client credentials could not be read. The text never contains a credential."""


class Secret:
    """A credential that only ``reveal()`` shows; every other rendering is masked, so even a
    traceback with locals shows ``Secret('***')``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: Secret


class CredentialsSource(Protocol):
    def load(self) -> ClientCredentials:
        """The current credentials, read afresh; raises ``CredentialsError``."""


class StaticCredentials:
    """Fixed credentials, for tests and callers that manage rotation themselves."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self._credentials = ClientCredentials(client_id, Secret(client_secret))

    def __repr__(self) -> str:
        return f"StaticCredentials(client_id={self._credentials.client_id!r})"

    def load(self) -> ClientCredentials:
        return self._credentials


class EnvironmentCredentials:
    """``CRESTA_CLIENT_ID`` and ``CRESTA_CLIENT_SECRET``, read on every ``load``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env

    def __repr__(self) -> str:
        return f"EnvironmentCredentials({CLIENT_ID_ENV}, {CLIENT_SECRET_ENV})"

    def load(self) -> ClientCredentials:
        client_id = self._env.get(CLIENT_ID_ENV, "")
        client_secret = self._env.get(CLIENT_SECRET_ENV, "")
        if not client_id or not client_secret:
            raise CredentialsError(f"{CLIENT_ID_ENV} and {CLIENT_SECRET_ENV} must both be set")
        return ClientCredentials(client_id, Secret(client_secret))


def region_of_secret_arn(secret_arn: str) -> str:
    """The region in ``arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME``.

    >>> region_of_secret_arn("arn:aws:secretsmanager:us-west-2:123456789012:secret:cresta-AbCdEf")
    'us-west-2'
    """
    parts = secret_arn.split(":")
    if len(parts) < 7 or parts[0] != "arn" or parts[2] != "secretsmanager" or not parts[3]:
        raise CredentialsError(f"not a Secrets Manager secret ARN: {secret_arn!r}")
    return parts[3]


class _SecretValueRedactor(logging.Filter):
    """botocore logs every response body at DEBUG (``botocore.parsers``), so a
    GetSecretValue answer would put the secret in the logs of anyone debugging boto3;
    this filter replaces such bodies with a marker and lets every other record through."""

    MARKERS = (b'"SecretString"', b'"SecretBinary"')

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if any(isinstance(arg, bytes) and any(m in arg for m in self.MARKERS) for arg in args):
            record.args = tuple(
                b"<Secrets Manager secret value redacted>" if isinstance(arg, bytes) else arg
                for arg in args
            )
        return True


_REDACTOR = _SecretValueRedactor()


class SecretsManagerCredentials:
    """The JSON secret at ``secret_arn``, read with ``GetSecretValue`` on every ``load``.

    Parameters
    ----------
    secret_arn:
        The secret's ARN; its region is the client's when one is created here.
    boto3_client:
        A ``secretsmanager`` client (tests pass one under ``botocore.stub.Stubber``);
        created on first use when omitted.
    boto3_session:
        The session to create the client from; the default session when omitted.
    """

    def __init__(
        self,
        secret_arn: str,
        boto3_client: Any = None,
        boto3_session: boto3.session.Session | None = None,
    ) -> None:
        self.secret_arn = secret_arn
        self._client = boto3_client
        self._session = boto3_session
        # addFilter ignores a filter already added, so every instance may ask.
        logging.getLogger("botocore.parsers").addFilter(_REDACTOR)

    def __repr__(self) -> str:
        return f"SecretsManagerCredentials({self.secret_arn!r})"

    def load(self) -> ClientCredentials:
        try:
            response = self._secretsmanager().get_secret_value(SecretId=self.secret_arn)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            raise CredentialsError(f"GetSecretValue {self.secret_arn} failed: {code}") from None
        except BotoCoreError as exc:
            raise CredentialsError(
                f"GetSecretValue {self.secret_arn} failed: {type(exc).__name__}"
            ) from None
        text = response.get("SecretString")
        if not isinstance(text, str):
            raise CredentialsError(f"secret {self.secret_arn} has no SecretString")
        try:
            secret = json.loads(text)
        except json.JSONDecodeError:
            # Not chained: the decode error carries the secret's text.
            raise CredentialsError(f"secret {self.secret_arn} is not JSON") from None
        client_id = secret.get(SECRET_CLIENT_ID_KEY) if isinstance(secret, dict) else None
        client_secret = secret.get(SECRET_CLIENT_SECRET_KEY) if isinstance(secret, dict) else None
        if not (isinstance(client_id, str) and client_id and isinstance(client_secret, str) and client_secret):
            raise CredentialsError(
                f"secret {self.secret_arn} must be a JSON object with non-empty string "
                f"{SECRET_CLIENT_ID_KEY} and {SECRET_CLIENT_SECRET_KEY}"
            )
        logger.info(
            "read Cresta client credentials from %s (version %s)",
            self.secret_arn,
            response.get("VersionId", "?"),
        )
        return ClientCredentials(client_id, Secret(client_secret))

    def _secretsmanager(self) -> Any:
        if self._client is None:
            session = self._session or boto3.session.Session()
            self._client = session.client(
                "secretsmanager", region_name=region_of_secret_arn(self.secret_arn)
            )
        return self._client
