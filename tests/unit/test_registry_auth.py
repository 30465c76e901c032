"""Parsing WWW-Authenticate challenges and token answers; the token cache (pure parts)."""

from __future__ import annotations

import pytest

from trustd.net.credentials import Credentials
from trustd.registry.auth import (
    basic_authorization,
    credential_fingerprint,
    parse_challenges,
    parse_token_response,
)
from trustd.registry.tokens import TokenCache


def test_bearer_challenge() -> None:
    (challenge,) = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert challenge.scope == "repository:library/ubuntu:pull"


def test_several_challenges_and_quoted_commas() -> None:
    challenges = parse_challenges(
        'Basic realm="a, b", charset="UTF-8", BEARER  Realm = "https://t/x?a=1,2" ,'
        ' error="insufficient_scope", scope="repository:a:pull,push", Negotiate'
    )
    assert [c.scheme for c in challenges] == ["basic", "bearer", "negotiate"]
    assert challenges[0].params == {"realm": "a, b", "charset": "UTF-8"}
    assert challenges[1].realm == "https://t/x?a=1,2"
    assert challenges[1].scope == "repository:a:pull,push"
    assert challenges[1].params["error"] == "insufficient_scope"
    assert challenges[2].params == {}


def test_challenge_edge_cases() -> None:
    assert parse_challenges("") == ()
    assert parse_challenges("Bearer")[0].params == {}
    (escaped,) = parse_challenges(r'Bearer realm="a\"b\\c"')
    assert escaped.realm == 'a"b\\c'
    (unquoted,) = parse_challenges("Bearer realm=https, service=svc")
    assert (unquoted.realm, unquoted.service) == ("https", "svc")
    # A token68 credential-like value is skipped, the next challenge still read.
    schemes = [c.scheme for c in parse_challenges("Foo abc123==, Basic realm=x")]
    assert schemes == ["foo", "basic"]
    # A repeated parameter keeps its first value.
    assert parse_challenges('Bearer realm="one", realm="two"')[0].realm == "one"
    # Garbage ends parsing without an exception.
    assert [c.scheme for c in parse_challenges('Basic realm=x, "junk')] == ["basic"]


def test_token_answers() -> None:
    assert parse_token_response(b'{"token": "abc", "expires_in": 300}') == ("abc", 300.0)
    assert parse_token_response(b'{"access_token": "xyz"}') == ("xyz", 60.0)
    assert parse_token_response(b'{"token": "abc", "expires_in": -5}') == ("abc", 60.0)
    assert parse_token_response(b'{"token": "abc", "expires_in": true}') == ("abc", 60.0)
    for bad in (b"[]", b"{}", b'{"token": ""}', b'{"token": "a\\nb"}', b'{"token": 5}', b"x"):
        with pytest.raises(ValueError):
            parse_token_response(bad)


def test_token_cache_expires_early_and_evicts() -> None:
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0], size=2)
    key = ("https://realm", "svc", "repository:a:pull", "")
    cache.put(key, "t1", 60.0)
    assert cache.get(key) == "t1"
    now[0] += 54.0
    assert cache.get(key) == "t1"
    now[0] += 1.5  # within the renewal margin before expiry
    assert cache.get(key) is None
    cache.put(("r", "s", "a", ""), "a", 60.0)
    cache.put(("r", "s", "b", ""), "b", 60.0)
    cache.put(("r", "s", "c", ""), "c", 60.0)
    assert cache.get(("r", "s", "a", "")) is None  # the oldest went
    assert cache.get(("r", "s", "c", "")) == "c"
    cache.forget(("r", "s", "c", ""))
    assert cache.get(("r", "s", "c", "")) is None


def test_fingerprints_tell_credentials_apart_and_hide_them() -> None:
    alice = Credentials("alice", "pw1")
    assert credential_fingerprint(None) == credential_fingerprint(Credentials()) == ""
    assert credential_fingerprint(alice) == credential_fingerprint(Credentials("alice", "pw1"))
    assert credential_fingerprint(alice) != credential_fingerprint(Credentials("alice", "pw2"))
    assert credential_fingerprint(alice) != credential_fingerprint(
        Credentials("alice", "", identity_token="pw1")
    )
    assert "pw1" not in credential_fingerprint(alice)


def test_basic_authorization() -> None:
    assert basic_authorization("user", "pass") == "Basic dXNlcjpwYXNz"
