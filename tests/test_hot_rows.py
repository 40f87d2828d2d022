"""server/store/hot.py: what is served, for how long, and what a write drops."""

from __future__ import annotations

import pytest

from server.store.hot import SPREAD, HotRows, activity, ttl_from


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


ALICE = ("p", "alice")


def test_an_entry_is_served_until_its_ttl_then_read_again() -> None:
    clock = Clock()
    hot = HotRows(1.0, clock=clock, spread=lambda: 0.0)  # the longest life: ttl
    hot.put("k", ALICE, hot.begin(), "rows")
    clock.now += 0.9
    assert hot.get("k") == "rows"
    clock.now += 0.2
    assert hot.get("k") is None


def test_entries_read_together_expire_apart_and_never_after_the_ttl() -> None:
    clock = Clock()
    cuts = iter([0.0, 0.5, 0.999])
    hot = HotRows(1.0, clock=clock, spread=lambda: next(cuts))
    stamp = hot.begin()
    for key in "abc":
        hot.put(key, ALICE, stamp, key)
    clock.now += 1 - SPREAD + 0.001  # the shortest life is over
    assert [hot.get(k) for k in "abc"] == ["a", "b", None]
    clock.now = stamp + 1 - SPREAD / 2 + 0.001
    assert [hot.get(k) for k in "ab"] == ["a", None]
    clock.now = stamp + 1.001
    assert hot.get("a") is None


def test_by_default_lives_are_spread_within_the_ttl() -> None:
    clock = Clock()
    hot = HotRows(1.0, clock=clock)
    stamp = hot.begin()
    for key in range(200):
        hot.put(key, ALICE, stamp, key)
    clock.now += 1 - SPREAD / 2
    alive = sum(hot.get(k) is not None for k in range(200))
    assert 20 < alive < 180  # about half; all or none would mean no spread
    clock.now = stamp + 1.001
    assert all(hot.get(k) is None for k in range(200))


def test_a_write_drops_what_was_read_before_it() -> None:
    clock = Clock()
    hot = HotRows(1.0, clock=clock)
    hot.put("k", ALICE, hot.begin(), "old")
    clock.now += 0.1
    hot.written("p", "alice")
    assert hot.get("k") is None
    # Another user's entries stay.
    hot.put("b", ("p", "bob"), hot.begin(), "bob's")
    hot.written("p", "alice")
    assert hot.get("b") == "bob's"


def test_a_read_that_began_before_a_write_is_not_kept() -> None:
    clock = Clock()
    hot = HotRows(1.0, clock=clock)
    stamp = hot.begin()  # the read starts, sees the old rows...
    clock.now += 0.01
    hot.written("p", "alice")  # ...a write commits meanwhile...
    clock.now += 0.01
    hot.put("k", ALICE, stamp, "old")  # ...and the read ends: not kept
    assert hot.get("k") is None
    later = hot.begin()
    hot.put("k", ALICE, later, "new")
    assert hot.get("k") == "new"


def test_entries_are_bounded_least_recently_used_first() -> None:
    hot = HotRows(60.0, max_entries=3, clock=Clock())
    for key in "abc":
        hot.put(key, ALICE, hot.begin(), key)
    assert hot.get("a") == "a"  # a is now the most recent
    hot.put("d", ALICE, hot.begin(), "d")
    assert len(hot) == 3
    assert hot.get("b") is None and hot.get("a") == "a" and hot.get("d") == "d"


def test_off_keeps_nothing() -> None:
    hot = HotRows(0)
    hot.put("k", ALICE, hot.begin(), "rows")
    assert not hot.on and hot.get("k") is None and len(hot) == 0


@pytest.mark.parametrize(("raw", "ttl"), [("", 1.0), ("0", 0.0), ("2.5", 2.5)])
def test_the_setting(raw: str, ttl: float) -> None:
    assert ttl_from({"IDENTIFY_HOT_CACHE_SECONDS": raw}) == ttl


@pytest.mark.parametrize("raw", ["-1", "61", "soon"])
def test_bad_settings_are_refused_by_name(raw: str) -> None:
    with pytest.raises(ValueError, match="IDENTIFY_HOT_CACHE_SECONDS"):
        ttl_from({"IDENTIFY_HOT_CACHE_SECONDS": raw})


def test_a_login_drops_the_profile_rows_but_not_the_user() -> None:
    clock = Clock()
    hot = HotRows(1.0, clock=clock)
    hot.put("user", ALICE, hot.begin(), "user row")
    hot.put("profile", activity(*ALICE), hot.begin(), "devices")
    clock.now += 0.1
    hot.written("p", "alice", activity_only=True)
    assert hot.get("user") == "user row" and hot.get("profile") is None
    hot.put("profile", activity(*ALICE), hot.begin(), "devices")
    clock.now += 0.1
    hot.written("p", "alice")  # a user-level write drops both
    assert hot.get("user") is None and hot.get("profile") is None


def test_a_revocation_drops_the_answer_kept_for_its_token() -> None:
    clock = Clock()
    hot = HotRows(1.0, clock=clock)
    key = ("p", "revoked", "hash-of-the-token")
    hot.put(key, key, hot.begin(), False)
    assert hot.get(key) is False  # kept: the next read asks nothing
    clock.now += 0.1
    hot.owner_written(key)
    assert hot.get(key) is None
    # A read that began before the revocation is not kept either.
    stamp = hot.begin() - 0.05
    hot.put(key, key, stamp, False)
    assert hot.get(key) is None
