"""Progress of long loops: a tqdm bar when stderr is a terminal, else one log line per 10 % (or per 30 s when
the total is unknown), which CI logs, Slurm files and ``kedro run > log.txt`` can read::

    for row in progress(rows, desc="degrade", unit="pair"): ...
    with progress(total=len(todo), desc="generate", unit="img") as bar: bar.update(len(batch))

``FLUXIR_PROGRESS=bar|log|off`` forces a mode. Importing this module does not import tqdm.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

logger = logging.getLogger("fluxir.runtime.progress")
MODES = ("auto", "bar", "log", "off")
EVERY_PCT, INTERVAL_S = 10, 30.0


def progress_mode() -> str:
    """``bar``, ``log`` or ``off``: ``FLUXIR_PROGRESS`` if set, else ``bar`` when stderr is a terminal."""
    mode = os.environ.get("FLUXIR_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"FLUXIR_PROGRESS={mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        try:
            return "bar" if sys.stderr.isatty() else "log"
        except (AttributeError, ValueError):  # a closed or replaced stream
            return "log"
    return mode


def library_bars_follow_mode() -> None:
    """diffusers' and transformers' own tqdm bars (loading components, checkpoint shards) are drawn only in
    ``bar`` mode. Call it before loading models; libraries not imported yet are left alone."""
    if progress_mode() != "bar":
        for name in ("diffusers", "transformers"):
            if name in sys.modules:
                __import__(f"{name}.utils.logging", fromlist=["_"]).disable_progress_bar()


def progress(
    iterable: Iterable[Any] | None = None,
    desc: str = "",
    total: float | None = None,
    *,
    unit: str = "it",
    disable: bool = False,
    initial: float = 0,
    **tqdm_kwargs: Any,
) -> Any:
    """A tqdm bar, or a :class:`LogProgress` with the part of its API fluxir uses; ``disable``: no output.
    ``tqdm_kwargs`` (``leave``, ``unit_scale`` ...) reach tqdm only."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    mode = "off" if disable else progress_mode()
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, **tqdm_kwargs)
    return LogProgress(iterable, desc, total, unit, initial, silent=mode == "off")


class LogProgress:
    """Iterate, ``update``, ``set_postfix``, ``close``, ``with``: lines such as
    ``degrade: 30/120 pair (25%), 4.1 pair/s, eta 0:00:22 [loss=0.1]``, the last one ``done in``."""

    def __init__(self, iterable, desc: str, total: float | None, unit: str, initial: float, silent: bool) -> None:
        self.iterable, self.desc, self.total, self.unit, self.silent = iterable, desc, total, unit, silent
        self.n = self._start_n = initial
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._last_step = self._step()
        self._lines = 0
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _step(self) -> int:
        return int(100 * self.n / self.total / EVERY_PCT + 1e-9) if self.total else 0

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.silent or self._closed:
            return
        if self.total:
            if self._step() > self._last_step and self.n < self.total:
                self._last_step = self._step()
                self._emit()
        elif time.monotonic() - self._last_time >= INTERVAL_S:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        if not (self._closed or self.silent) and (self.n != self._start_n or self._lines == 0):
            self._emit(done=True)
        self._closed = True

    def _emit(self, done: bool = False) -> None:
        self._last_time = now = time.monotonic()
        self._lines += 1
        elapsed = max(now - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        text = (f"{self.desc}: " if self.desc else "") + _count(self.n)
        text += (
            f"/{_count(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total else f" {self.unit}"
        )
        if self.n != self._start_n:
            text += f", {rate:.0f} {self.unit}/s" if rate >= 100 else f", {rate:.3g} {self.unit}/s"
        if done:
            text += f", done in {_clock(elapsed)}"
        elif self.total and rate > 0:
            text += f", eta {_clock((self.total - self.n) / rate)}"
        logger.info("%s", f"{text} [{self.postfix}]" if self.postfix else text)


def _count(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.3g}"


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))
