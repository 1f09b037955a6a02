"""Unit tests of RestartIntensity: OTP's ``add_restart`` on a ManualClock, at the window's edges.

The rule (supervisor.erl): time is whole seconds of a monotonic clock; keep the restarts at or
after ``now - max_seconds``, add ``now``, give up when more than ``max_restarts`` remain.
"""

from __future__ import annotations

import pytest

from mailman.supervisor import ManualClock, RestartIntensity


def window(max_restarts: int, max_seconds: int, start: float = 0.0) -> tuple[RestartIntensity, ManualClock]:
    clock = ManualClock(start)
    return RestartIntensity(max_restarts, max_seconds, clock), clock


class TestAddRestart:
    def test_allows_max_restarts_within_the_window(self) -> None:
        """Exactly ``max_restarts`` restarts at the same instant are tolerated."""
        intensity, _ = window(3, 5)
        assert [intensity.add_restart() for _ in range(3)] == [True, True, True]

    def test_one_more_than_max_restarts_is_too_many(self) -> None:
        """The restart that makes ``max_restarts + 1`` inside the window is refused."""
        intensity, _ = window(3, 5)
        for _ in range(3):
            intensity.add_restart()
        assert intensity.add_restart() is False

    def test_restart_is_counted_before_it_is_attempted(self) -> None:
        """With ``max_restarts=0`` the very first restart already exceeds the intensity."""
        intensity, _ = window(0, 5)
        assert intensity.add_restart() is False

    def test_restart_exactly_max_seconds_old_still_counts(self) -> None:
        """A restart at second ``s`` is still in the window at ``s + max_seconds`` (inclusive)."""
        intensity, clock = window(1, 5)
        assert intensity.add_restart() is True
        clock.advance(5)
        assert intensity.add_restart() is False

    def test_restart_one_second_past_the_window_is_forgotten(self) -> None:
        """At ``s + max_seconds + 1`` the restart at ``s`` has left the window."""
        intensity, clock = window(1, 5)
        assert intensity.add_restart() is True
        clock.advance(6)
        assert intensity.add_restart() is True
        assert len(intensity) == 1

    def test_current_time_is_floored_to_whole_seconds(self) -> None:
        """5.999 s after a restart at 0 floors to second 5: still inside a 5 s window."""
        intensity, clock = window(1, 5)
        assert intensity.add_restart() is True
        clock.advance(5.999)
        assert intensity.add_restart() is False

    def test_stored_restart_time_is_floored_to_whole_seconds(self) -> None:
        """A restart at 0.9 s counts as second 0, so at 6.0 s it is out of a 5 s window."""
        intensity, clock = window(1, 5, start=0.9)
        assert intensity.add_restart() is True
        clock.advance(5.1)
        assert intensity.add_restart() is True

    def test_window_slides(self) -> None:
        """Old restarts leave one by one: 0 and 3 are tolerated, 6 drops 0, 8 still sees 3 and 6."""
        intensity, clock = window(2, 5)
        assert intensity.add_restart() is True  # t=0
        clock.advance(3)
        assert intensity.add_restart() is True  # t=3: [3, 0]
        clock.advance(3)
        assert intensity.add_restart() is True  # t=6: 0 < 1 dropped -> [6, 3]
        clock.advance(2)
        assert intensity.add_restart() is False  # t=8: [8, 6, 3], 3 >= 3 kept

    def test_len_counts_restarts_in_the_window_as_last_counted(self) -> None:
        """``len()`` is the size of the history after the last ``add_restart``, refused one included."""
        intensity, clock = window(2, 5)
        assert len(intensity) == 0
        for _ in range(3):
            intensity.add_restart()
        assert len(intensity) == 3
        clock.advance(100)
        intensity.add_restart()
        assert len(intensity) == 1

    def test_attributes_keep_the_flags(self) -> None:
        """The flags given are readable back, as the supervisor reports them when it gives up."""
        intensity, _ = window(4, 10)
        assert (intensity.max_restarts, intensity.max_seconds) == (4, 10)


class TestValidation:
    @pytest.mark.parametrize(
        ("max_restarts", "max_seconds", "error"),
        [
            pytest.param(-1, 5, ValueError, id="negative-max-restarts"),
            pytest.param(3, 0, ValueError, id="zero-max-seconds"),
            pytest.param(3, -5, ValueError, id="negative-max-seconds"),
            pytest.param("3", 5, TypeError, id="str-max-restarts"),
            pytest.param(True, 5, TypeError, id="bool-max-restarts"),
            pytest.param(3.0, 5, TypeError, id="float-max-restarts"),
            pytest.param(3, 1.5, TypeError, id="fractional-max-seconds"),
            pytest.param(3, True, TypeError, id="bool-max-seconds"),
            pytest.param(3, float("inf"), TypeError, id="infinite-max-seconds"),
        ],
    )
    def test_invalid_flags_are_rejected(self, max_restarts: object, max_seconds: object, error: type) -> None:
        """Flags OTP rejects (invalid_intensity / invalid_period) raise at construction."""
        with pytest.raises(error):
            RestartIntensity(max_restarts, max_seconds, ManualClock())  # type: ignore[arg-type]

    def test_zero_max_restarts_is_valid(self) -> None:
        """``max_restarts=0`` is a legal flag (every failure escalates), not an error."""
        intensity, _ = window(0, 1)
        assert intensity.max_restarts == 0


class TestManualClock:
    def test_clock_moves_only_when_advanced(self) -> None:
        """A ManualClock reads the same until ``advance`` moves it by exactly that much."""
        clock = ManualClock(10.0)
        assert clock.monotonic() == 10.0
        clock.advance(2.5)
        assert clock.monotonic() == 12.5

    def test_clock_cannot_go_back(self) -> None:
        """A monotonic clock refuses a negative advance."""
        with pytest.raises(ValueError, match="cannot go back"):
            ManualClock().advance(-1)
