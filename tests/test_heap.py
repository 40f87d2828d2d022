"""providers/kit/heap.py: what is kept for good leaves the collector's reach,
and what is let go of later is freed."""

from __future__ import annotations

import gc
import weakref

from providers.kit import heap


class _Kept:
    pass


def test_kept_objects_are_frozen_and_later_ones_are_not() -> None:
    kept = _Kept()
    try:
        heap.keep_for_good()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert not any(o is kept for o in gc.get_objects())
        later = _Kept()
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()


def test_a_frozen_cycle_let_go_of_is_freed_and_the_rest_stays_frozen() -> None:
    cycle = _Kept()
    cycle.me = cycle  # type: ignore[attr-defined]
    gone = weakref.ref(cycle)
    try:
        heap.keep_for_good()
        del cycle
        gc.collect()
        assert gone() is not None  # frozen: the collector never frees it
        heap.let_go()
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
