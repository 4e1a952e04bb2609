"""Cresta OAuth 2.0 client credentials, as Cresta's own Amazon Connect Lambdas do it.

Source of every detail here: ``cresta/amazon-connect-pstn-transfer``
(``internal/pstntransfercore/auth.go`` and ``httpclient.go``): ``POST
{auth_url}/v1/oauth/regionalToken`` with HTTP Basic ``client_id:client_secret`` and the
JSON body ``{"grant_type":"client_credentials"}``; the token is cached until
``expires_in`` minus 5 minutes (half of ``expires_in`` when that is 5 minutes or less);
an ``expires_in`` of 0 or less is an error; 3 retries with exponential backoff plus up to
25 % jitter on network errors, 5xx, 408 and 429; 10 s timeout per request.

Added here, for secret rotation without a restart: the client credentials come from a
``CredentialsSource`` (Secrets Manager or the environment) and are read again, once,
when the token endpoint answers 401, or when Cresta refuses the token itself
(``renew``).

The client secret and the access token never appear in log records, exception texts or
``repr``; they are held in ``Secret`` wrappers.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from typing import Callable

import httpx

from connectors.cresta.credentials import (
    ClientCredentials,
    CredentialsError,
    CredentialsSource,
    Secret,
)

logger = logging.getLogger(__name__)

TOKEN_PATH = "/v1/oauth/regionalToken"
#: Cresta refreshes this long before expiry so that a token never expires in flight.
REFRESH_MARGIN_S = 5 * 60
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BASE_DELAY_S = 0.1
_RETRYABLE_STATUS = frozenset({408, 429})


class CrestaAuthError(Exception):
    """The access token could not be obtained. The text never contains a credential."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def cache_lifetime_s(expires_in_s: float) -> float:
    """How long a token with ``expires_in`` seconds of validity is served from the cache.

    >>> cache_lifetime_s(3600), cache_lifetime_s(240)
    (3300, 120.0)
    """
    margin = REFRESH_MARGIN_S if expires_in_s > REFRESH_MARGIN_S else expires_in_s / 2
    return expires_in_s - margin


def _is_retryable(status_code: int) -> bool:
    return 500 <= status_code < 600 or status_code in _RETRYABLE_STATUS


class CrestaTokenProvider:
    """Fetches and caches a Cresta access token; safe to share between threads.

    Parameters
    ----------
    auth_url:
        The auth domain without a path, e.g. ``https://auth.us-west-2-prod.cresta.ai``.
    credentials:
        Where the client id and secret come from; read on first use and again after a 401.
    http_client:
        An ``httpx.Client`` to send with (tests pass one on an ``httpx.MockTransport``);
        one is created on first use when omitted.
    clock:
        Monotonic seconds, for the cache expiry.
    sleep, jitter:
        The backoff's wait and its random fraction in [0, 1), injectable for tests.
    """

    def __init__(
        self,
        auth_url: str,
        credentials: CredentialsSource,
        http_client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_base_delay_s: float = DEFAULT_RETRY_BASE_DELAY_S,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.token_url = auth_url.rstrip("/") + TOKEN_PATH
        self._credentials_source = credentials
        self._http_client = http_client
        self._clock = clock
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._retry_base_delay_s = retry_base_delay_s
        self._sleep = sleep
        self._jitter = jitter
        self._lock = threading.Lock()
        self._credentials: ClientCredentials | None = None
        self._token: Secret | None = None
        self._valid_until = 0.0

    def __repr__(self) -> str:
        return f"CrestaTokenProvider(token_url={self.token_url!r}, credentials={self._credentials_source!r})"

    def token(self) -> str:
        """A valid access token, from the cache or freshly fetched."""
        with self._lock:
            if self._token is None or self._clock() >= self._valid_until:
                self._token = None
                if self._credentials is None:
                    self._credentials = self._load_credentials()
                try:
                    self._token, self._valid_until = self._fetch(self._credentials)
                except CrestaAuthError as exc:
                    if exc.status_code != 401:
                        raise
                    logger.warning(
                        "%s refused client %s (HTTP 401); reading the credentials again",
                        self.token_url,
                        self._credentials.client_id,
                    )
                    self._credentials = self._load_credentials()
                    self._token, self._valid_until = self._fetch(self._credentials)
            return self._token.reveal()

    def renew(self, rejected_token: str) -> str:
        """A new token after Cresta refused ``rejected_token``: credentials read again first.

        Many streams may be refused the same token at once; only the first renews it, the
        others get the token it fetched.
        """
        with self._lock:
            if self._token is not None and self._token.reveal() != rejected_token:
                return self._token.reveal()
            self._token = None
            self._credentials = self._load_credentials()
            self._token, self._valid_until = self._fetch(self._credentials)
            return self._token.reveal()

    def _load_credentials(self) -> ClientCredentials:
        try:
            return self._credentials_source.load()
        except CredentialsError as exc:
            raise CrestaAuthError(f"no Cresta client credentials: {exc}") from None

    def _fetch(self, credentials: ClientCredentials) -> tuple[Secret, float]:
        response = self._post_with_retries(credentials)
        if response.status_code != 200:
            raise CrestaAuthError(
                f"token request to {self.token_url} failed: HTTP {response.status_code}",
                response.status_code,
            )
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CrestaAuthError(f"token response from {self.token_url} is not JSON") from None
        if not isinstance(body, dict):
            raise CrestaAuthError(f"token response from {self.token_url} is not a JSON object")
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise CrestaAuthError(f"token response from {self.token_url} lacks access_token")
        expires_in = body.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)):
            raise CrestaAuthError(
                f"token response from {self.token_url} lacks a numeric expires_in"
            )
        if expires_in <= 0:
            raise CrestaAuthError(
                f"token response from {self.token_url} has expires_in {expires_in} (must be > 0)"
            )
        lifetime = cache_lifetime_s(expires_in)
        logger.info(
            "fetched Cresta access token for client %s (expires in %ss, cached for %ss)",
            credentials.client_id,
            expires_in,
            lifetime,
        )
        return Secret(access_token), self._clock() + lifetime

    def _post_with_retries(self, credentials: ClientCredentials) -> httpx.Response:
        client = self._client()
        basic = f"{credentials.client_id}:{credentials.client_secret.reveal()}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(basic).decode("ascii"),
            "Content-Type": "application/json",
        }
        # Serialized by hand so the body is byte-for-byte what Cresta's Go client sends.
        body = json.dumps({"grant_type": "client_credentials"}, separators=(",", ":")).encode()
        attempts = self._max_retries + 1
        failure = ""
        last_status: int | None = None
        for attempt in range(attempts):
            if attempt:
                delay = self._retry_base_delay_s * 2 ** (attempt - 1)
                delay += delay * 0.25 * self._jitter()
                logger.warning(
                    "token request to %s: %s; retry %d/%d in %.3fs",
                    self.token_url,
                    failure,
                    attempt,
                    self._max_retries,
                    delay,
                )
                self._sleep(delay)
            try:
                response = client.post(
                    self.token_url, content=body, headers=headers, timeout=self._timeout_s
                )
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
                last_status = None
                continue
            if not _is_retryable(response.status_code):
                return response
            last_status = response.status_code
            failure = f"HTTP {last_status}"
        raise CrestaAuthError(
            f"token request to {self.token_url} failed after {attempts} attempts: {failure}",
            last_status,
        )

    def _client(self) -> httpx.Client:
        if self._http_client is None:
            self._http_client = httpx.Client(timeout=self._timeout_s)
        return self._http_client
