"""Progress for long-running loops: a tqdm bar on a terminal, plain log lines everywhere else.

A tqdm bar redrawn with carriage returns is unreadable in CI logs, ``kedro run > log.txt``, Slurm output
files and MLflow's captured stderr. ``progress`` gives a bar when stderr is a terminal and otherwise an
object with the same small API that writes one log line every ``every_pct`` percent (or every
``interval_s`` seconds when the total is unknown)::

    from fluxir.runtime.progress import progress

    for row in progress(rows, desc="degrade", unit="pair"):
        ...

    with progress(total=len(todo), desc="generate", unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

Environment variable ``FLUXIR_PROGRESS`` forces a mode: ``bar`` (tqdm even without a terminal), ``log``
(log lines even on a terminal) or ``off`` (nothing). Importing this module is cheap (no tqdm import).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Self

logger = logging.getLogger("fluxir.runtime.progress")

MODES = ("auto", "bar", "log", "off")


def library_bars_follow_mode() -> None:
    """diffusers' and transformers' own tqdm bars ("Loading pipeline components...", checkpoint shards) follow
    this module's mode: drawn only in ``bar`` mode, silent otherwise (no carriage-return lines in logs). Call it
    before loading models; libraries not imported yet are left alone."""
    if progress_mode() == "bar":
        return
    for name in ("diffusers", "transformers"):
        if name in sys.modules:
            __import__(f"{name}.utils.logging", fromlist=["disable_progress_bar"]).disable_progress_bar()


def progress_mode(stream: Any = None) -> str:
    """``bar``, ``log`` or ``off``: ``FLUXIR_PROGRESS`` if set, else ``bar`` when ``stream`` (stderr) is a TTY."""
    mode = os.environ.get("FLUXIR_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"FLUXIR_PROGRESS={mode!r}: use one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # closed or replaced streams
        return "log"


def progress(
    iterable: Iterable[Any] | None = None,
    desc: str = "",
    total: float | None = None,
    *,
    unit: str = "it",
    disable: bool = False,
    initial: float = 0,
    every_pct: float = 10.0,
    interval_s: float = 30.0,
    log: logging.Logger | None = None,
    **tqdm_kwargs: Any,
) -> Any:
    """A tqdm bar (stderr is a TTY) or a :class:`LogProgress` (not a TTY); same use for both.

    Args:
        iterable: what to iterate over; None for a manual bar driven by ``update(n)``.
        desc: label of the bar / log lines.
        total: expected count; taken from ``len(iterable)`` when omitted and available.
        unit: unit name shown in the rate ("img", "step", ...).
        disable: no output at all (e.g. on non-main processes); iteration still works.
        initial: count already done (resumed runs).
        every_pct: log-line mode: one line each time this many percent more are done.
        interval_s: log-line mode without a total: one line at most every this many seconds.
        log: logger for the lines (default ``fluxir.runtime.progress``).
        **tqdm_kwargs: passed to tqdm only (``leave``, ``position``, ``dynamic_ncols`` ...).
    """
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    mode = "off" if disable else progress_mode()
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, **tqdm_kwargs)
    return LogProgress(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        initial=initial,
        every_pct=every_pct,
        interval_s=interval_s,
        log=log or logger,
        silent=mode == "off",
    )


class LogProgress:
    """tqdm's small API (iterate, ``update``, ``set_postfix``, ``close``, context manager) as log lines.

    With a total, a line is logged each time another ``every_pct`` percent is done and once at the end;
    without one, at most every ``interval_s`` seconds and at the end. Lines look like
    ``degrade: 30/120 pair (25%), 4.1 pair/s, eta 0:00:22``.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        desc: str = "",
        total: float | None = None,
        unit: str = "it",
        initial: float = 0,
        every_pct: float = 10.0,
        interval_s: float = 30.0,
        log: logging.Logger | None = None,
        silent: bool = False,
    ) -> None:
        if every_pct <= 0:
            raise ValueError(f"every_pct must be > 0, got {every_pct}")
        self.iterable = iterable
        self.desc = desc
        self.total = total
        self.unit = unit
        self.n = initial
        self.postfix = ""
        self.every_pct = float(every_pct)
        self.interval_s = float(interval_s)
        self.log = log or logger
        self.silent = silent
        self.lines = 0  # log lines written so far
        self._start_n = initial
        self._start = self._last_time = time.monotonic()
        self._last_step = self._step(initial)
        self._closed = False

    # -- tqdm API ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable: call update(n) instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("progress total unknown")
        return int(self.total)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.silent or self._closed:
            return
        now = time.monotonic()
        if self.total:
            step = self._step(self.n)
            if step > self._last_step and self.n < self.total:
                self._last_step = step
                self._emit(now)
        elif now - self._last_time >= self.interval_s:
            self._emit(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={_fmt_value(v)}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def write(self, s: str) -> None:
        if not self.silent:
            self.log.info("%s", s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.silent and (self.n != self._start_n or self.lines == 0):
            self._emit(time.monotonic(), done=True)

    # -- helpers ----------------------------------------------------------------------------------
    def _step(self, n: float) -> int:
        if not self.total:
            return 0
        return math.floor(100.0 * n / self.total / self.every_pct + 1e-9)

    def format_line(self, now: float | None = None, done: bool = False) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        label = f"{self.desc}: " if self.desc else ""
        count = _fmt_count(self.n)
        if self.total:
            text = f"{label}{count}/{_fmt_count(self.total)} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            text = f"{label}{count} {self.unit}"
        if self.n != self._start_n:
            text += f", {_fmt_rate(rate)} {self.unit}/s"
        if done:
            text += f", done in {_fmt_time(elapsed)}"
        elif self.total and rate > 0:
            text += f", eta {_fmt_time((self.total - self.n) / rate)}"
        if self.postfix:
            text += f" [{self.postfix}]"
        return text

    def _emit(self, now: float, done: bool = False) -> None:
        self._last_time = now
        self.lines += 1
        self.log.info("%s", self.format_line(now, done))


def _fmt_count(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.3g}"


def _fmt_rate(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def _fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_time(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"
