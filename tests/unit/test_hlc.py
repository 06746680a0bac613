from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import hlcs, u64

from ping_web.core.codec import U32_MAX, U64_MAX
from ping_web.core.hlc import MAX_AHEAD_MS, Hlc
from ping_web.errors import InvalidInput

clock_times = st.integers(0, 2**48)


@given(hlcs.filter(lambda h: h.wall_ms < U64_MAX), u64)
def test_tick_moves_forward_and_keeps_up_with_wall_time(hlc: Hlc, now: int) -> None:
    ticked = hlc.tick(now)
    assert ticked > hlc
    assert ticked.wall_ms >= now


@given(hlcs.filter(lambda h: h.wall_ms < U64_MAX), hlcs.filter(lambda h: h.wall_ms < U64_MAX), u64)
def test_merge_is_after_both_clocks(local: Hlc, remote: Hlc, now: int) -> None:
    merged = local.merge(remote, now)
    assert merged > local
    assert merged.wall_ms >= now
    assert merged == local.merge(remote, now)
    if remote.wall_ms <= now + MAX_AHEAD_MS:
        assert merged > remote
    else:  # a stamp too far ahead is not merged: the clock only ticks
        assert merged == local.tick(now)


def test_a_far_future_stamp_cannot_push_the_clock_to_the_end_of_its_range() -> None:
    now = 1_700_000_000_000
    forged = Hlc(U64_MAX, U32_MAX)
    clock = Hlc(now, 0).merge(forged, now)
    assert clock == Hlc(now, 1)
    for _ in range(3):  # and it keeps working
        clock = clock.tick(now)
    assert clock == Hlc(now, 4)
    assert Hlc(now, 0).merge(Hlc(now + MAX_AHEAD_MS, 0), now) == Hlc(now + MAX_AHEAD_MS, 1)


@given(st.lists(st.tuples(st.booleans(), clock_times, st.builds(Hlc, clock_times, st.integers(0, 3))), max_size=50))
def test_never_goes_back_under_any_event_sequence(events: list[tuple[bool, int, Hlc]]) -> None:
    clock = Hlc.ZERO
    for is_receive, now, remote in events:
        after = clock.merge(remote, now) if is_receive else clock.tick(now)
        assert after > clock
        clock = after


def test_tick_and_merge_rules() -> None:
    assert Hlc(10, 4).tick(20) == Hlc(20, 0)
    assert Hlc(10, 4).tick(5) == Hlc(10, 5)
    assert Hlc(10, 4).merge(Hlc(10, 7), 3) == Hlc(10, 8)
    assert Hlc(10, 4).merge(Hlc(12, 7), 3) == Hlc(12, 8)
    assert Hlc(12, 4).merge(Hlc(10, 7), 3) == Hlc(12, 5)
    assert Hlc(10, 4).merge(Hlc(12, 7), 30) == Hlc(30, 0)


def test_counter_overflow_carries_into_wall_time() -> None:
    full = Hlc(10, U32_MAX)
    assert full.tick(0) == Hlc(11, 0)
    assert full.merge(Hlc(10, U32_MAX), 0) == Hlc(11, 0)
    assert Hlc(3, 0).merge(full, 0) == Hlc(11, 0)
    with pytest.raises(InvalidInput):
        Hlc(U64_MAX, U32_MAX).tick(0)


def test_total_order_and_zero() -> None:
    assert Hlc(0, 0) == Hlc.ZERO
    assert sorted([Hlc(2, 0), Hlc(1, 9), Hlc(1, 0)]) == [Hlc(1, 0), Hlc(1, 9), Hlc(2, 0)]


@pytest.mark.parametrize("args", [(-1, 0), (0, -1), (U64_MAX + 1, 0), (0, U32_MAX + 1), (True, 0), (1.0, 0)])
def test_rejects_out_of_range(args: tuple[Any, Any]) -> None:
    with pytest.raises(InvalidInput):
        Hlc(*args)


@pytest.mark.parametrize("now", [-1, U64_MAX + 1, 1.5, None])
def test_rejects_bad_now(now: Any) -> None:
    with pytest.raises(InvalidInput):
        Hlc.ZERO.tick(now)
    with pytest.raises(InvalidInput):
        Hlc.ZERO.merge(Hlc.ZERO, now)


@given(hlcs)
def test_cbor_form(hlc: Hlc) -> None:
    assert Hlc.from_cbor(hlc.to_cbor()) == hlc


@pytest.mark.parametrize("value", [[1], [1, 2, 3], "12", [1, "2"], [1, -2], None])
def test_from_cbor_rejects(value: Any) -> None:
    with pytest.raises(InvalidInput):
        Hlc.from_cbor(value)
