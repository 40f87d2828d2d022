"""The rules of webhooks and audit events that need no stack: which URLs an
endpoint may have, what it may subscribe to, the relay's settings from the
environment, and what an audit event may hold."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from providers.values import InvalidArgument
from server.events import audit, relay, webhooks
from server.events import types as t


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/identify",
        "https://10.0.0.5:8443/h?x=1",
        "http://localhost:9000/hooks",
        "http://127.0.0.1/hooks",
        "http://[::1]:8080/",
    ],
)
def test_https_anywhere_and_http_to_this_machine_only(url: str) -> None:
    assert webhooks.check_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/identify",
        "http://10.0.0.5/hooks",
        "ftp://example.com/",
        "https://user:pass@example.com/",
        "https:///no-host",
        "not a url",
        "",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        webhooks.check_url(url)
    assert err.value.reason == "INVALID_WEBHOOK_URL"


def test_endpoints_subscribe_to_types_groups_or_everything() -> None:
    assert webhooks.check_event_types(["user.login", "user.*", "user.login"]) == (
        "user.*",
        "user.login",
    )
    for bad in (["user.logged_in"], ["users.*"], []):
        with pytest.raises(InvalidArgument):
            webhooks.check_event_types(bad)
    assert t.matches(("user.*",), t.USER_LOGIN) and t.matches(("*",), t.ADMIN_KEY_REFUSED)
    assert not t.matches(("user.*",), t.ACCOUNT_LOCKED)
    assert not t.matches((t.USER_LOGIN,), t.USER_LOGIN_REFUSED)


def test_a_secret_is_standard_webhooks_base64() -> None:
    import base64

    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == webhooks.SECRET_BYTES
    assert secret != webhooks.new_secret()


def test_relay_settings_come_from_the_environment() -> None:
    default = relay.RelaySettings.from_env({})
    assert default.schedule == relay.DEFAULT_SCHEDULE
    total = sum(default.schedule)
    # About three days of retries, then the endpoint is given up on.
    assert 2.5 * 86400 < total < 3.5 * 86400 and default.max_attempts == 12
    custom = relay.RelaySettings.from_env(
        {
            "IDENTIFY_WEBHOOK_POLL_SECONDS": "0.2",
            "IDENTIFY_WEBHOOK_RETRY_SCHEDULE": "1,2,3",
            "IDENTIFY_WEBHOOK_TIMEOUT_SECONDS": "2",
        }
    )
    assert (custom.poll_seconds, custom.schedule, custom.timeout) == (0.2, (1, 2, 3), 2.0)
    assert custom.max_attempts == 4 and custom.claim_seconds > custom.timeout
    for env in (
        {"IDENTIFY_WEBHOOK_RETRY_SCHEDULE": "1,,3"},
        {"IDENTIFY_WEBHOOK_RETRY_SCHEDULE": "0"},
        {"IDENTIFY_WEBHOOK_POLL_SECONDS": "soon"},
        {"IDENTIFY_WEBHOOK_TIMEOUT_SECONDS": "-1"},
    ):
        with pytest.raises(ValueError, match="IDENTIFY_WEBHOOK_"):
            relay.RelaySettings.from_env(env)


def test_delivery_ids_are_one_per_event_and_endpoint() -> None:
    assert relay.delivery_id("p", "e", "v") == relay.delivery_id("p", "e", "v")
    assert relay.delivery_id("p", "e", "v") != relay.delivery_id("p", "e2", "v")
    assert relay.delivery_id("p", "e", "v") != relay.delivery_id("p2", "e", "v")


def test_event_ids_sort_in_the_order_events_happened() -> None:
    ids = [audit.new_event_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}
    assert {uuid.UUID(i).variant for i in ids} == {uuid.RFC_4122}


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"type": "user.logged_in"}, "unknown audit event type"),
        ({"actor": "root"}, "unknown audit actor"),
        ({"data": {"accessToken": "x"}}, "no secrets"),
        ({"data": {"nested": {"newPassword": "x"}}}, "no secrets"),
        ({"data": {"confirmationCode": "1"}}, "no secrets"),
        ({"data": {"blob": "x" * 2000}}, "longer than"),
    ],
)
def test_an_event_holding_what_it_must_not_is_refused(
    changes: dict[str, object], words: str
) -> None:
    engine = sa.create_engine("sqlite://")
    audit.audit_events.metadata.create_all(engine)
    event = audit.AuditEvent(type=t.USER_LOGIN, project_id="p")
    fields = {**event.__dict__, **changes}
    with engine.begin() as conn, pytest.raises(ValueError, match=words):
        audit.record(conn, audit.AuditEvent(**fields))  # type: ignore[arg-type]
