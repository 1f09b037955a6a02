"""The progress bar and its lines: pure functions of a snapshot; following a scripted letter."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from mailman.cli.progress import (
    Progress,
    RateMeter,
    follow_letter,
    format_duration,
    render_bar,
    render_line,
    render_summary,
)


def status(
    state: str = "sending", *, delivered: int = 0, failed: int = 0, skipped: int = 0, audience: int = 100
) -> dict[str, Any]:
    pending = audience - delivered - failed - skipped
    return {
        "letter_id": 7,
        "state": state,
        "counts": {
            "pending": pending,
            "sending": 0,
            "delivered": delivered,
            "failed": failed,
            "skipped": skipped,
        },
        "uncertain": 0,
        "audience": audience,
    }


HALF = Progress(
    letter_id=7,
    state="sending",
    audience=10_000,
    delivered=4_900,
    failed=60,
    skipped=40,
    elapsed=2.0,
    rate=2_500.0,
)


class TestProgress:
    def test_from_status(self) -> None:
        """A letter.status result becomes a snapshot: counts, audience, state."""
        progress = Progress.from_status(status(delivered=50, failed=2, skipped=3), elapsed=1.5, rate=10.0)
        assert (progress.done, progress.audience, progress.fraction) == (55, 100, 0.55)
        assert progress.eta == pytest.approx(4.5)

    def test_audience_defaults_to_the_sum_of_counts(self) -> None:
        """Without an audience key, the counts add up to it."""
        document = status(delivered=5)
        del document["audience"]
        assert Progress.from_status(document, elapsed=0, rate=None).audience == 100

    def test_no_eta_without_a_rate_or_when_not_sending(self) -> None:
        """The ETA needs a rate, and only a sending letter has one."""
        assert Progress(letter_id=1, state="sending", audience=10, rate=None).eta is None
        assert Progress(letter_id=1, state="paused", audience=10, rate=5.0).eta is None

    def test_an_empty_audience_is_complete(self) -> None:
        """Nobody to send to is 100%, not a division by zero."""
        assert Progress(letter_id=1, state="sent", audience=0).fraction == 1.0


class TestRenderBar:
    def test_a_half_done_letter(self) -> None:
        """State, bar, percentage, done of audience, each count, rate and ETA, in one line."""
        line = render_bar(HALF, width=140)
        assert line == (
            "sending  [████████████████████░░░░░░░░░░░░░░░░░░░░]  50%  5,000/10,000  "
            "delivered 4,900 · failed 60 · skipped 40 · 2,500/s · ETA 2s"
        )

    def test_the_bar_shrinks_to_the_width(self) -> None:
        """On a narrow terminal the bar is shorter, and the line never wider than asked."""
        wide, narrow = render_bar(HALF, width=140), render_bar(HALF, width=100)
        assert len(narrow) <= 100
        assert narrow.count("█") + narrow.count("░") < wide.count("█") + wide.count("░")

    def test_ascii_fallback(self) -> None:
        """Where the stream cannot show block characters the bar uses # and -."""
        line = render_bar(HALF, width=140, unicode=False)
        assert "[####################--------------------]" in line
        assert "█" not in line
        assert "·" not in line

    def test_unknown_rate(self) -> None:
        """Before two samples the rate shows as -/s and there is no ETA."""
        line = render_bar(Progress(letter_id=7, state="sending", audience=10), width=120)
        assert line.endswith("skipped 0 · -/s")

    def test_a_sent_letter_is_full(self) -> None:
        """100% fills the bar; a finished letter has no ETA."""
        done = Progress(letter_id=7, state="sent", audience=4, delivered=4, rate=3.0)
        line = render_bar(done, width=120)
        assert "░" not in line
        assert " 100%  4/4 " in line
        assert "ETA" not in line

    def test_uncertain_recipients_are_shown_when_there_are_some(self) -> None:
        """Recipients left uncertain by a crash (hold policy) are counted as done and shown."""
        held = Progress(letter_id=7, state="sent", audience=4, delivered=3, uncertain=1)
        assert "uncertain 1" in render_bar(held, width=140)
        assert held.fraction == 1.0


class TestRenderLine:
    def test_plain_line_for_logs(self) -> None:
        """Without a terminal: one self-contained line naming the letter."""
        assert render_line(HALF) == (
            "letter 7: sending 5,000/10,000 (50%): delivered 4,900, failed 60, skipped 40; 2,500/s, ETA 2s"
        )

    def test_summary(self) -> None:
        """The closing line: outcome, time and average rate."""
        done = Progress(letter_id=7, state="sent", audience=10_000, delivered=9_990, failed=10, elapsed=4.0)
        assert render_summary(done) == (
            "letter 7 sent: 9,990 delivered, 10 failed, 0 skipped of 10,000 in 4.0s (2,500 recipients/s)"
        )


class TestFormatDuration:
    @pytest.mark.parametrize(
        ("seconds", "text"), [(0, "0s"), (0.2, "1s"), (42, "42s"), (187, "3:07"), (3723, "1:02:03")]
    )
    def test_formats(self, seconds: float, text: str) -> None:
        """Seconds under a minute (rounded up), m:ss under an hour, h:mm:ss beyond."""
        assert format_duration(seconds) == text


class TestRateMeter:
    def test_no_rate_from_one_sample(self) -> None:
        """One sample has no rate."""
        assert RateMeter().update(10.0, 100) is None

    def test_rate_over_the_window(self) -> None:
        """The rate is the growth over the last window, not since the start."""
        meter = RateMeter(window=5.0)
        meter.update(0.0, 0)
        meter.update(5.0, 50)  # 10/s
        assert meter.update(10.0, 550) == pytest.approx(100.0)  # 500 in the last 5 s
        assert meter.update(11.0, 650) == pytest.approx(100.0)

    def test_refuses_a_non_positive_window(self) -> None:
        """A window must be positive."""
        with pytest.raises(ValueError, match="expected a window of more than 0 seconds"):
            RateMeter(window=0)


class ScriptedDaemon:
    """Answers letter.status from a script, one answer per call; advances a fake clock by 1 s a call."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self._answers: Iterator[dict[str, Any]] = iter(answers)
        self.now = 0.0
        self.calls = 0

    async def letter_status(self, letter_id: int) -> dict[str, Any]:
        self.calls += 1
        self.now += 1.0
        return next(self._answers)

    def clock(self) -> float:
        return self.now


class TestFollowLetter:
    async def test_plain_lines_until_sent(self) -> None:
        """Off a terminal: a line per state change and per interval, the last one final."""
        daemon = ScriptedDaemon(
            [status(delivered=0), status(delivered=30), status(delivered=60), status("sent", delivered=100)]
        )
        stream = io.StringIO()
        final, progress = await follow_letter(
            daemon, 7, stream=stream, tty=False, poll_interval=0, line_interval=2.0, clock=daemon.clock
        )
        assert final["state"] == "sent"
        assert (progress.delivered, progress.elapsed) == (100, 4.0)
        lines = stream.getvalue().splitlines()
        assert lines == [
            "letter 7: sending 0/100 (0%): delivered 0, failed 0, skipped 0; -/s",
            "letter 7: sending 60/100 (60%): delivered 60, failed 0, skipped 0; 30/s, ETA 2s",
            "letter 7: sent 100/100 (100%): delivered 100, failed 0, skipped 0; 33/s",
        ]

    async def test_redraws_in_place_on_a_terminal(self) -> None:
        """On a terminal each poll redraws the one line (carriage return, clear to end); a newline ends it."""
        daemon = ScriptedDaemon([status(delivered=10), status("failed", delivered=20, failed=80)])
        stream = io.StringIO()
        final, _ = await follow_letter(
            daemon, 7, stream=stream, tty=True, poll_interval=0, clock=daemon.clock
        )
        assert final["state"] == "failed"
        output = stream.getvalue()
        assert output.count("\r") == 2
        assert output.count("\x1b[K") == 2
        assert output.endswith("\n")
        assert output.count("\n") == 1
        assert "failed   [" in output

    async def test_a_paused_letter_is_followed_on(self) -> None:
        """Paused is not the end: following goes on until the letter is resumed and done."""
        daemon = ScriptedDaemon(
            [
                status("paused", delivered=10),
                status("paused", delivered=10),
                status("cancelled", delivered=10),
            ]
        )
        final, _ = await follow_letter(
            daemon, 7, stream=io.StringIO(), tty=False, poll_interval=0, clock=daemon.clock
        )
        assert (final["state"], daemon.calls) == ("cancelled", 3)
