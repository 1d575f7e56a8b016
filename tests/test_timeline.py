from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_dualgpu.timeline import LaneTimeline, overlap, union_length


def test_union_merges_overlapping_and_touching_intervals() -> None:
    assert union_length([(0, 1), (0.5, 2), (2, 3), (5, 6)]) == pytest.approx(4.0)
    assert union_length([]) == 0.0


def test_back_to_back_lanes_do_not_overlap() -> None:
    assert overlap([[(0, 1)], [(1, 2)]]) == 0.0


def test_identical_lanes_overlap_fully() -> None:
    assert overlap([[(0, 1)], [(0, 1)]]) == 1.0


def test_alternating_repetitions_do_not_count_as_overlap() -> None:
    lane_a = [(0, 1), (2, 3), (4, 5)]
    lane_b = [(1, 2), (3, 4), (5, 6)]
    assert overlap([lane_a, lane_b]) == 0.0
    envelopes = [LaneTimeline("a", tuple(lane_a)).envelope, LaneTimeline("b", tuple(lane_b)).envelope]
    assert overlap([[envelopes[0]], [envelopes[1]]]) > 0.5


def test_half_overlap() -> None:
    assert overlap([[(0, 2)], [(1, 3)]]) == pytest.approx(0.5)


def test_a_short_lane_inside_a_long_one_is_full_overlap() -> None:
    assert overlap([[(0, 10)], [(2, 3)]]) == 1.0


intervals = st.lists(
    st.tuples(st.floats(0, 100), st.floats(0, 10)).map(lambda pair: (pair[0], pair[0] + pair[1])),
    min_size=1,
    max_size=8,
)


@given(st.lists(intervals, min_size=2, max_size=4))
def test_overlap_lies_between_zero_and_one(lanes: list[list[tuple[float, float]]]) -> None:
    assert 0.0 <= overlap(lanes) <= 1.0
