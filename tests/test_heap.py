"""providers/kit/heap.py: what is kept for good leaves the collector's reach."""

from __future__ import annotations

import gc

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
