"""The progress of a letter being sent: a bar redrawn in place on a terminal, plain lines otherwise.

The drawing is pure functions of a :class:`Progress` snapshot (:func:`render_bar`, :func:`render_line`,
:func:`render_summary`), tested as such; :class:`RateMeter` turns successive counts into a recent rate;
:func:`follow_letter` polls the daemon's ``letter.status`` and draws until the letter is done.

On a terminal (stderr is a TTY) one line is redrawn in place::

    sending  [████████████░░░░░░░░]  62%  6,200/10,000  delivered 6,150 · failed 20 · skipped 30 · 4,812/s

(then `` · ETA 0:01``, as wide as the terminal allows). Elsewhere (a log, a pipe) a plain line is
written every few seconds, and at each change of state::

    letter 7: sending 6,200/10,000 (62%): delivered 6,150, failed 20, skipped 30; 4,812/s, ETA 1s
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TextIO

__all__ = [
    "FINAL_STATES",
    "Progress",
    "RateMeter",
    "StatusSource",
    "follow_letter",
    "format_duration",
    "render_bar",
    "render_line",
    "render_summary",
]

FINAL_STATES: Final = frozenset({"sent", "failed", "cancelled"})
"""States a letter does not leave by itself: following it ends there."""

_MIN_BAR: Final = 10
_MAX_BAR: Final = 40


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """A letter's counts at one moment, with the time since following began and the recent rate."""

    letter_id: int
    state: str
    audience: int
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0
    elapsed: float = 0.0
    rate: float | None = None
    """Recipients finished per second, lately; None until two samples are apart in time."""

    @classmethod
    def from_status(cls, status: Mapping[str, Any], *, elapsed: float, rate: float | None) -> Progress:
        """From a ``letter.status`` result."""
        counts = status.get("counts", {})
        audience = status.get("audience")
        if not isinstance(audience, int):
            audience = sum(value for value in counts.values() if isinstance(value, int))
        return cls(
            letter_id=int(status["letter_id"]),
            state=str(status["state"]),
            audience=audience,
            delivered=int(counts.get("delivered", 0)),
            failed=int(counts.get("failed", 0)),
            skipped=int(counts.get("skipped", 0)),
            uncertain=int(status.get("uncertain", 0) or 0),
            elapsed=elapsed,
            rate=rate,
        )

    @property
    def done(self) -> int:
        """Recipients with a final outcome."""
        return self.delivered + self.failed + self.skipped + self.uncertain

    @property
    def fraction(self) -> float:
        """How much of the audience is done, from 0.0 to 1.0 (1.0 for an empty audience)."""
        if self.audience <= 0:
            return 1.0
        return min(1.0, self.done / self.audience)

    @property
    def eta(self) -> float | None:
        """Seconds left at the recent rate; None when it cannot be told (no rate, not sending)."""
        if self.state != "sending" or not self.rate or self.rate <= 0:
            return None
        return max(0, self.audience - self.done) / self.rate


class RateMeter:
    """The recent rate of a growing count: over the samples of the last ``window`` seconds."""

    def __init__(self, window: float = 5.0) -> None:
        if window <= 0:
            raise ValueError(f"expected a window of more than 0 seconds, got {window!r}")
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, count: int) -> float | None:
        """Record ``count`` at time ``now`` (seconds, monotonic); the rate per second, or None."""
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()  # keep one sample at least `window` old, as the base
        first_time, first_count = self._samples[0]
        if now <= first_time:
            return None
        return max(0, count - first_count) / (now - first_time)


def format_duration(seconds: float) -> str:
    """``42s`` under a minute, ``3:07`` under an hour, ``1:02:03`` beyond."""
    whole = max(0, math.ceil(seconds)) if seconds < 60 else max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}:{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _rate(rate: float | None) -> str:
    return "-/s" if rate is None else f"{rate:,.0f}/s"


def render_bar(progress: Progress, width: int = 100, *, unicode: bool = True) -> str:
    """One terminal line: state, bar, percentage, counts, rate and ETA, at most ``width`` characters."""
    full, empty, dot = ("█", "░", "·") if unicode else ("#", "-", "|")
    percent = math.floor(progress.fraction * 100)
    counts = (
        f"delivered {progress.delivered:,} {dot} failed {progress.failed:,} {dot} "
        f"skipped {progress.skipped:,}"
    )
    if progress.uncertain:
        counts += f" {dot} uncertain {progress.uncertain:,}"
    eta = progress.eta
    tail = f"{counts} {dot} {_rate(progress.rate)}"
    if eta is not None:
        tail += f" {dot} ETA {format_duration(eta)}"
    head = f"{progress.state:<9}"
    middle = f" {percent:3d}%  {progress.done:,}/{progress.audience:,}  "
    bar_width = max(_MIN_BAR, min(_MAX_BAR, width - len(head) - len(middle) - len(tail) - 3))
    filled = math.floor(progress.fraction * bar_width)
    line = f"{head}[{full * filled}{empty * (bar_width - filled)}]{middle}{tail}"
    return line[:width]


def render_line(progress: Progress) -> str:
    """One plain line, for logs and pipes."""
    line = (
        f"letter {progress.letter_id}: {progress.state} {progress.done:,}/{progress.audience:,} "
        f"({math.floor(progress.fraction * 100)}%): delivered {progress.delivered:,}, failed "
        f"{progress.failed:,}, skipped {progress.skipped:,}"
    )
    if progress.uncertain:
        line += f", uncertain {progress.uncertain:,}"
    line += f"; {_rate(progress.rate)}"
    eta = progress.eta
    if eta is not None:
        line += f", ETA {format_duration(eta)}"
    return line


def render_summary(progress: Progress) -> str:
    """The closing line: the outcome, the time it took and the average rate."""
    average = progress.done / progress.elapsed if progress.elapsed > 0 else None
    text = (
        f"letter {progress.letter_id} {progress.state}: {progress.delivered:,} delivered, "
        f"{progress.failed:,} failed, {progress.skipped:,} skipped"
    )
    if progress.uncertain:
        text += f", {progress.uncertain:,} uncertain"
    text += f" of {progress.audience:,} in {progress.elapsed:.1f}s"
    if average is not None:
        text += f" ({average:,.0f} recipients/s)"
    return text


class StatusSource(Protocol):
    """Where :func:`follow_letter` reads a letter's status: a :class:`mailman.client.Client`."""

    async def letter_status(self, letter_id: int) -> dict[str, Any]: ...


async def follow_letter(
    source: StatusSource,
    letter_id: int,
    *,
    stream: TextIO,
    tty: bool,
    poll_interval: float = 0.2,
    line_interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, Any], Progress]:
    """Draw the letter's progress on ``stream`` until it is sent, failed or cancelled.

    Returns the last ``letter.status`` result and the last :class:`Progress` (for the summary). A
    paused letter is followed on: someone may resume it.
    """
    started = clock()
    meter = RateMeter()
    unicode = (getattr(stream, "encoding", None) or "").lower().replace("-", "") == "utf8"
    last_line_at = -math.inf
    last_state = None
    while True:
        status = await source.letter_status(letter_id)
        now = clock()
        counts = Progress.from_status(status, elapsed=now - started, rate=None)
        progress = Progress.from_status(status, elapsed=now - started, rate=meter.update(now, counts.done))
        final = progress.state in FINAL_STATES
        if tty:
            width = shutil.get_terminal_size(fallback=(100, 24)).columns - 1
            stream.write(
                "\r" + render_bar(progress, width, unicode=unicode) + "\x1b[K" + ("\n" if final else "")
            )
            stream.flush()
        elif final or progress.state != last_state or now - last_line_at >= line_interval:
            stream.write(render_line(progress) + "\n")
            stream.flush()
            last_line_at = now
        last_state = progress.state
        if final:
            return status, progress
        await asyncio.sleep(poll_interval)
