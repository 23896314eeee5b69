"""Progress that shows everywhere: a tqdm bar on a terminal, periodic one-line reports in logs.

tqdm with ``disable=None`` hides itself when stderr is not a terminal, so a run under nohup, SLURM or
CI printed nothing for many minutes; tqdm's bar written to a file is a stream of carriage returns
instead. :func:`progress` keeps the bar for terminals and, elsewhere, prints one plain line after the
first step, then every ``MEDZSAD_PROGRESS_INTERVAL`` seconds (default 30), then a closing line:

    test brainmri: 12/40 (30%) 1.52 it/s, ETA 0:00:18, total=0.532
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

__all__ = ["LineProgress", "progress"]

DEFAULT_INTERVAL_S = 30.0


def progress(
    iterable: Iterable[Any],
    desc: str,
    total: int | None = None,
    enabled: bool = True,
    stream: TextIO | None = None,
) -> Any:
    """Wrap ``iterable`` with progress reporting on ``stream`` (default stderr).

    Args:
        iterable: what the loop runs over.
        desc: what is running (``"test brainmri"``, ``"epoch 2/15"``).
        total: number of steps when ``len(iterable)`` does not give it.
        enabled: ``False`` reports nothing (other processes than rank 0 under torchrun).
        stream: where to write.

    Returns:
        An iterable with ``set_postfix(mapping)`` and ``close()``, like a tqdm bar.
    """
    stream = stream if stream is not None else sys.stderr
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if enabled and _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, file=stream)
    return LineProgress(iterable, desc, total, stream if enabled else None, _interval())


def note(text: str, stream: TextIO | None = None) -> None:
    """Print one line (a skipped sample...) without breaking a progress bar drawn on a terminal."""
    stream = stream or sys.stderr
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        tqdm.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _interval() -> float:
    """Seconds between lines, from ``MEDZSAD_PROGRESS_INTERVAL`` (bad values fall back to the default)."""
    try:
        return max(0.0, float(os.environ.get("MEDZSAD_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class LineProgress:
    """Plain-text progress for logs: a line after the first step, every ``interval`` s, and at the end.

    Args:
        iterable: what the loop runs over.
        desc: label of every line.
        total: number of steps, if known (gives the percentage and ETA).
        stream: where lines go; ``None`` writes nothing.
        interval: seconds between lines.
    """

    def __init__(
        self, iterable: Iterable[Any], desc: str, total: int | None, stream: TextIO | None, interval: float
    ) -> None:
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.stream = stream
        self.interval = interval
        self.count = 0
        self.postfix: dict[str, str] = {}
        self._start = time.monotonic()
        self._last_line = -float("inf")
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        self._start = time.monotonic()
        try:
            for item in self.iterable:
                yield item
                self.count += 1
                now = time.monotonic()
                if self.count == 1 or now - self._last_line >= self.interval:
                    self._write(self.line(now))
                    self._last_line = now
        finally:
            self.close()

    def set_postfix(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Values shown after the rate (losses); same call as tqdm's."""
        self.postfix = {str(k): str(v) for k, v in {**dict(values or {}), **kwargs}.items()}

    def close(self) -> None:
        """Print the closing line once (count, time, rate)."""
        if self._closed:
            return
        self._closed = True
        if self.count:
            elapsed = time.monotonic() - self._start
            extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
            self._write(f"{self.desc}: done {self.count} in {_clock(elapsed)} ({_rate(self.count, elapsed)}){extra}")

    def line(self, now: float) -> str:
        """``desc: n/total (pct%) rate, ETA h:mm:ss, key=value...``"""
        elapsed = max(now - self._start, 1e-9)
        parts = [f"{self.desc}: {self.count}" + (f"/{self.total}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.count / self.total:.0f}%)"
        parts[0] += f" {_rate(self.count, elapsed)}"
        if self.total and self.count < self.total:
            parts.append(f"ETA {_clock(elapsed / self.count * (self.total - self.count))}")
        parts.extend(f"{k}={v}" for k, v in self.postfix.items())
        return ", ".join(parts)

    def _write(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)


def _rate(count: int, seconds: float) -> str:
    per_second = count / max(seconds, 1e-9)
    return f"{per_second:.2f} it/s" if per_second >= 1 else f"{1 / max(per_second, 1e-9):.1f} s/it"


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
