"""The one settings rule every provider reads its block with
(providers/kit/settings.py), and that every built-in provider really uses it."""

from __future__ import annotations

from typing import Any

import pytest

from providers.kit.settings import SettingsError, SettingsReader, check_url
from providers.registry import Registry


def reader(**raw: Any) -> SettingsReader:
    return SettingsReader(raw, owner="demo")


@pytest.mark.parametrize(
    ("url", "base", "parsed"),
    [
        ("https://idp.example.com/keys", False, "https://idp.example.com/keys"),
        ("https://idp.example.com/keys?p=B2C_1_signin", False, None),
        ("https://graph.example.com/v1/", True, "https://graph.example.com/v1"),
        ("http://127.0.0.1:5000/", True, "http://127.0.0.1:5000"),
        ("http://localhost:8080/jwks", False, "http://localhost:8080/jwks"),
        ("http://[::1]:9/x", False, "http://[::1]:9/x"),
    ],
)
def test_urls_that_pass_the_rule(url: str, base: bool, parsed: str | None) -> None:
    assert check_url(url, "someUrl", base=base) == (parsed or url)


@pytest.mark.parametrize(
    ("url", "base", "words"),
    [
        ("http://graph.example.com", True, "https:// URL \\(http:// only for localhost\\)"),
        ("http://10.0.0.5:4566", True, "only for localhost"),
        ("ftp://x.example.com", False, "must be an https:// URL"),
        ("https://", False, "must be an https:// URL"),
        ("https://user:pw@idp.example.com/", False, "must not carry credentials"),
        ("https://idp.example.com/#frag", False, "must not carry a fragment"),
        ("https://api.example.com/?a=1", True, "must not carry a query or fragment"),
        ("https://idp.example.com:99999/", False, "is not a valid URL"),
        ("", False, "must be a URL"),
        (42, False, "must be a URL"),
    ],
)
def test_urls_that_fail_the_rule_name_the_setting(url: Any, base: bool, words: str) -> None:
    with pytest.raises(SettingsError, match=f"^someUrl .*{words}|^someUrl {words}"):
        check_url(url, "someUrl", base=base)


def test_unknown_keys_are_refused_by_name_with_the_known_ones() -> None:
    s = reader(region="eu", reigon="typo", extra=1)
    assert s.string("region") == "eu"
    s.timeout()
    with pytest.raises(SettingsError) as err:
        s.finish()
    assert str(err.value) == (
        "unknown demo setting(s): extra, reigon; known: region, timeoutSeconds"
    )


def test_absent_null_and_empty_all_mean_not_set() -> None:
    s = reader(a=None, b="", c="  x  ")
    assert s.string("a", default="d") == "d"
    assert s.string("b") is None
    assert s.string("c") == "x"
    assert s.url("missing") is None
    assert s.url("missing", default="https://d.example.com/", base=True) == "https://d.example.com"
    assert s.strings("none", default=("RS256",)) == ("RS256",)
    assert s.flag("f", default=True) is True
    s.finish()


@pytest.mark.parametrize(
    ("raw", "value"), [({}, 5.0), ({"timeoutSeconds": 0.5}, 0.5), ({"timeoutSeconds": 30}, 30.0)]
)
def test_the_timeout_rule(raw: dict[str, Any], value: float) -> None:
    assert SettingsReader(raw, owner="demo").timeout() == value


@pytest.mark.parametrize("bad", [0, -1, 31, True, "5"])
def test_the_timeout_rule_refuses(bad: Any) -> None:
    with pytest.raises(SettingsError, match=r"^timeoutSeconds"):
        SettingsReader({"timeoutSeconds": bad}, owner="demo").timeout()


def test_readers_check_types_and_ranges() -> None:
    assert reader(ids=["a", "b"]).strings("ids") == ("a", "b")
    assert reader(ids="a").strings("ids") == ("a",)
    assert reader(n=3).number("n", default=1, low=0, high=5) == 3.0
    assert reader(n=7).integer("n", default=1, low=0, high=10) == 7
    assert reader(app=1234).string("app", numbers=True) == "1234"
    for bad_read in (
        lambda: reader(ids=[]).strings("ids"),
        lambda: reader(ids=["a", 3]).strings("ids"),
        lambda: reader().strings("ids", required=True),
        lambda: reader(n=9).number("n", default=1, low=0, high=5),
        lambda: reader(n=1.5).integer("n", default=1, low=0, high=5),
        lambda: reader(f="yes").flag("f", default=False),
        lambda: reader(s=5).string("s"),
        lambda: reader().required_string("s"),
        lambda: reader(m=[1]).mapping("m"),
    ):
        with pytest.raises(SettingsError):
            bad_read()


MINIMAL_SETTINGS: dict[str, dict[str, Any]] = {
    "anonymous": {},
    "noLogin": {},
    "awsCognito": {"region": "eu-west-1", "userPoolId": "eu-west-1_AbC", "clientId": "c1"},
    "authZero": {"domain": "tenant.eu.auth0.com", "audience": "api"},
    "oidc": {"issuer": "https://login.example.com/", "audience": "api"},
    "google": {"clientIds": "web.apps.googleusercontent.com"},
    "facebook": {"appId": "123", "appSecret": "s"},
    "twitter": {},
}


def test_every_builtin_provider_is_listed_here() -> None:
    assert sorted(MINIMAL_SETTINGS) == Registry.discover().names()


@pytest.mark.parametrize("name", sorted(MINIMAL_SETTINGS))
def test_every_builtin_provider_refuses_an_unknown_key_by_name(name: str) -> None:
    cls = Registry.discover().get(name)
    assert cls is not None
    parsed = cls.validate_settings(MINIMAL_SETTINGS[name])
    # Providers without settings parse to None; the others to their typed value.
    assert (parsed is None) == (name == "noLogin"), parsed
    with pytest.raises(ValueError, match=f"^unknown {name} setting\\(s\\): notASetting;"):
        cls.validate_settings({**MINIMAL_SETTINGS[name], "notASetting": 1})
