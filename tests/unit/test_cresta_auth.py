import base64
import logging
import socket

import httpx
import pytest

from connectors.cresta.auth import CrestaAuthError, CrestaTokenProvider, cache_lifetime_s
from connectors.cresta.credentials import (
    ClientCredentials,
    CredentialsError,
    Secret,
    StaticCredentials,
)

AUTH_URL = "https://auth.us-west-2-prod.cresta.ai"
CLIENT_ID = "client-id-1"
CLIENT_SECRET = "s3cr3t-client-secret"
ACCESS_TOKEN = "eyJ-access-token-value"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TokenServer:
    """An httpx transport answering from a script of responses, recording the requests."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.script = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(response, Exception):
            raise response
        return response


def ok(token: str = ACCESS_TOKEN, expires_in=3600) -> httpx.Response:
    return httpx.Response(
        200, json={"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
    )


class RotatingCredentials:
    """A credentials source whose secret a test replaces, counting the reads."""

    def __init__(self, *secrets: str | Exception) -> None:
        self.secrets = list(secrets)
        self.loads = 0

    def load(self) -> ClientCredentials:
        self.loads += 1
        secret = self.secrets.pop(0) if len(self.secrets) > 1 else self.secrets[0]
        if isinstance(secret, Exception):
            raise secret
        return ClientCredentials(CLIENT_ID, Secret(secret))


def basic(secret: str = CLIENT_SECRET) -> str:
    return "Basic " + base64.b64encode(f"{CLIENT_ID}:{secret}".encode()).decode()


def provider_for(server: TokenServer, clock=None, sleeps=None, credentials=None) -> CrestaTokenProvider:
    return CrestaTokenProvider(
        AUTH_URL,
        credentials or StaticCredentials(CLIENT_ID, CLIENT_SECRET),
        http_client=httpx.Client(transport=httpx.MockTransport(server)),
        clock=clock or FakeClock(),
        sleep=(sleeps.append if sleeps is not None else lambda _: None),
        jitter=lambda: 0.5,
    )


def test_the_token_request_is_exactly_cresta_s():
    server = TokenServer(ok())
    assert provider_for(server).token() == ACCESS_TOKEN
    (request,) = server.requests
    assert request.method == "POST"
    assert str(request.url) == "https://auth.us-west-2-prod.cresta.ai/v1/oauth/regionalToken"
    expected_basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected_basic}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == b'{"grant_type":"client_credentials"}'
    assert set(request.extensions["timeout"].values()) == {10.0}


def test_a_trailing_slash_on_the_auth_url_is_tolerated():
    server = TokenServer(ok())
    client = httpx.Client(transport=httpx.MockTransport(server))
    credentials = StaticCredentials(CLIENT_ID, CLIENT_SECRET)
    CrestaTokenProvider(AUTH_URL + "/", credentials, http_client=client).token()
    assert server.requests[0].url.path == "/v1/oauth/regionalToken"


def test_the_token_is_cached_until_five_minutes_before_expiry():
    clock = FakeClock()
    server = TokenServer(ok("first"), ok("second"))
    provider = provider_for(server, clock)
    assert provider.token() == "first"
    clock.now += 3600 - 300 - 0.001
    assert provider.token() == "first"
    assert len(server.requests) == 1
    clock.now += 0.001
    assert provider.token() == "second"
    assert len(server.requests) == 2


def test_a_short_lived_token_is_cached_for_half_its_life():
    clock = FakeClock()
    server = TokenServer(ok("first", expires_in=200), ok("second"))
    provider = provider_for(server, clock)
    provider.token()
    clock.now += 99.9
    assert provider.token() == "first"
    clock.now += 0.1
    assert provider.token() == "second"


@pytest.mark.parametrize(
    ("expires_in", "cached_for"), [(3600, 3300), (301, 1), (300, 150), (1, 0.5)]
)
def test_cache_lifetime(expires_in, cached_for):
    assert cache_lifetime_s(expires_in) == cached_for


def test_a_401_from_the_token_endpoint_reads_the_credentials_again_once():
    credentials = RotatingCredentials("old-secret", "rotated-secret")
    server = TokenServer(httpx.Response(401, json={"error": "invalid_client"}), ok("fresh"))
    provider = provider_for(server, credentials=credentials)
    assert provider.token() == "fresh"
    assert credentials.loads == 2
    assert [r.headers["Authorization"] for r in server.requests] == [
        basic("old-secret"),
        basic("rotated-secret"),
    ]


def test_a_second_401_after_reading_the_credentials_again_is_an_error():
    credentials = RotatingCredentials("old-secret", "still-wrong")
    server = TokenServer(httpx.Response(401))
    with pytest.raises(CrestaAuthError, match="HTTP 401") as raised:
        provider_for(server, credentials=credentials).token()
    assert raised.value.status_code == 401
    assert credentials.loads == 2 and len(server.requests) == 2


def test_credentials_are_read_once_while_they_work():
    clock = FakeClock()
    credentials = RotatingCredentials(CLIENT_SECRET)
    server = TokenServer(ok("first"), ok("second"))
    provider = provider_for(server, clock, credentials=credentials)
    provider.token()
    clock.now += 3600
    assert provider.token() == "second"
    assert credentials.loads == 1


def test_renew_reads_the_credentials_again_and_fetches_a_new_token():
    credentials = RotatingCredentials("old-secret", "rotated-secret")
    server = TokenServer(ok("refused-by-cresta"), ok("renewed"))
    provider = provider_for(server, credentials=credentials)
    assert provider.token() == "refused-by-cresta"
    assert provider.renew("refused-by-cresta") == "renewed"
    assert provider.token() == "renewed"
    assert credentials.loads == 2
    assert server.requests[1].headers["Authorization"] == basic("rotated-secret")


def test_renew_of_a_token_already_replaced_returns_the_replacement():
    server = TokenServer(ok("first"), ok("second"), ok("third"))
    provider = provider_for(server)
    provider.token()
    assert provider.renew("first") == "second"
    assert provider.renew("first") == "second"
    assert len(server.requests) == 2


def test_unreadable_credentials_are_an_auth_error():
    credentials = RotatingCredentials(CredentialsError("GetSecretValue arn:… failed: AccessDeniedException"))
    with pytest.raises(CrestaAuthError, match="no Cresta client credentials: GetSecretValue"):
        provider_for(TokenServer(ok()), credentials=credentials).token()


@pytest.mark.parametrize("expires_in", [0, -5])
def test_a_non_positive_expires_in_is_an_error(expires_in):
    with pytest.raises(CrestaAuthError, match="must be > 0"):
        provider_for(TokenServer(ok(expires_in=expires_in))).token()


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(200, content=b"<html>"), "not JSON"),
        (httpx.Response(200, json=["x"]), "not a JSON object"),
        (httpx.Response(200, json={"expires_in": 60}), "lacks access_token"),
        (httpx.Response(200, json={"access_token": "t", "expires_in": "60"}), "numeric expires_in"),
        (httpx.Response(200, json={"access_token": "t", "expires_in": True}), "numeric expires_in"),
    ],
)
def test_malformed_responses_are_errors(response, message):
    with pytest.raises(CrestaAuthError, match=message):
        provider_for(TokenServer(response)).token()


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_retryable_statuses_are_retried_with_exponential_backoff(status):
    sleeps: list[float] = []
    server = TokenServer(httpx.Response(status), httpx.Response(status), ok())
    assert provider_for(server, sleeps=sleeps).token() == ACCESS_TOKEN
    assert len(server.requests) == 3
    # base 0.1 s doubling, plus jitter 0.5 × 25 %.
    assert sleeps == pytest.approx([0.1125, 0.225])


def test_network_errors_are_retried():
    server = TokenServer(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok())
    assert provider_for(server).token() == ACCESS_TOKEN
    assert len(server.requests) == 3


def test_three_retries_then_give_up():
    sleeps: list[float] = []
    server = TokenServer(httpx.Response(503))
    with pytest.raises(CrestaAuthError, match="failed after 4 attempts: HTTP 503") as raised:
        provider_for(server, sleeps=sleeps).token()
    assert raised.value.status_code == 503
    assert len(server.requests) == 4
    assert sleeps == pytest.approx([0.1125, 0.225, 0.45])


# 401 is retried once, with the credentials read again: see the rotation tests above.
@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_not_retried(status):
    server = TokenServer(httpx.Response(status, json={"error": "invalid_client"}))
    with pytest.raises(CrestaAuthError, match=f"HTTP {status}") as raised:
        provider_for(server).token()
    assert raised.value.status_code == status
    assert len(server.requests) == 1


ROTATED_SECRET = "r0tated-client-secret"
RENEWED_TOKEN = "eyJ-renewed-token-value"


def test_neither_secret_nor_token_reaches_logs_errors_or_repr(caplog):
    caplog.set_level(logging.DEBUG)
    echoing_server = TokenServer(
        httpx.Response(503, text=CLIENT_SECRET),
        httpx.Response(401, json={"error": "invalid_client", "client_secret": CLIENT_SECRET}),
        ok(),
        ok(token=RENEWED_TOKEN),
    )
    credentials = RotatingCredentials(CLIENT_SECRET, ROTATED_SECRET)
    provider = provider_for(echoing_server, credentials=credentials)
    assert provider.token() == ACCESS_TOKEN
    assert provider.renew(ACCESS_TOKEN) == RENEWED_TOKEN
    failures = []
    for response in (
        httpx.Response(401, json={"error": "invalid_client", "client_secret": CLIENT_SECRET}),
        httpx.Response(503, text=ACCESS_TOKEN),
        httpx.Response(200, text=f"not json {ACCESS_TOKEN}"),
        ok(token=ACCESS_TOKEN, expires_in=0),
        ok(token=ACCESS_TOKEN, expires_in="soon"),
        httpx.ConnectError("refused"),
    ):
        with pytest.raises(CrestaAuthError) as raised:
            provider_for(TokenServer(response)).token()
        failures.append(raised.value)
        failures.append(raised.value.__cause__)
    visible = " ".join(
        [caplog.text, repr(provider), str(provider), repr(credentials.load())]
        + [f"{error!s} {error!r}" for error in failures if error is not None]
        + [repr(vars(provider))]
    )
    assert "fetched Cresta access token" in caplog.text
    assert "retry 1/3" in caplog.text
    assert "reading the credentials again" in caplog.text
    for credential in (
        CLIENT_SECRET,
        ROTATED_SECRET,
        ACCESS_TOKEN,
        RENEWED_TOKEN,
        basic(CLIENT_SECRET).split()[1],
        basic(ROTATED_SECRET).split()[1],
    ):
        assert credential not in visible


def test_an_http_client_is_created_when_none_is_given():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    provider = CrestaTokenProvider(
        f"http://127.0.0.1:{port}", StaticCredentials(CLIENT_ID, CLIENT_SECRET), max_retries=0
    )
    with pytest.raises(CrestaAuthError, match="ConnectError"):
        provider.token()
