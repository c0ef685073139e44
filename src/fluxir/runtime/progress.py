"""What the console shows: progress of long loops, without the third-party notices a user cannot act on.

Progress is a tqdm bar when stderr is a terminal, else one log line per 10 % (or per 30 s when the total is
unknown), which CI logs, Slurm files and ``kedro run > log.txt`` can read; ``FLUXIR_PROGRESS=bar|log|off`` forces a
mode. ``fluxir/__init__`` installs the notice filters before any of those packages is imported.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("fluxir.runtime.progress")
MODES = ("auto", "bar", "log", "off")
EVERY_PCT, INTERVAL_S = 10, 30.0


def progress_mode() -> str:
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
    """A tqdm bar, or a :class:`LogProgress` with the part of its API fluxir uses; ``tqdm_kwargs`` reach tqdm only::

    for row in progress(rows, desc="degrade", unit="pair"): ...
    with progress(total=len(todo), desc="generate", unit="img") as bar: bar.update(len(batch))
    """
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


# ------------------------------------------------------------------------------------------------
# Third-party notices a fluxir user cannot act on, each with the release that emits it and why it is noise here.
# The filters match the start of the exact text, so a changed notice (or any other warning) is still shown.


@dataclass(frozen=True)
class Notice:
    source: str  # the logger that logs it, or "warnings" for a warnings.warn
    message: str  # regular expression matched at the start of the message
    emitted_by: str  # the release that prints it
    why: str  # why a fluxir user cannot act on it


NOTICES = (
    Notice(
        "warnings",
        r"register_new_resolver\(\) is deprecated",
        "omegaconf 2.4.0, called by kedro 1.7.0",
        "Kedro's config loader registers its resolvers under the old name; fluxir registers none",
    ),
    Notice(
        "warnings",
        r"(\x1b\[\d+m)?Add type hints to the `predict` method",
        "mlflow 3.17.2, at kedro-mlflow 2.0.3's import",
        "kedro-mlflow's PipelineML model class, not a model of this project",
    ),
    Notice(
        "warnings",
        r"`FluxPosEmbed` is deprecated",
        "diffusers 0.42.1, in its own FluxControlNetModel",
        "diffusers' ControlNet imports the class from its old place; fluxir imports it from the new one",
    ),
    Notice(
        "torch.utils._pytree",
        r"<enum '\w+'> is an Enum subclass and is now natively supported",
        "torch 2.14.1, at torchao 0.18.0's import",
        "torchao registers its enums the old way",
    ),
    Notice(
        "bitsandbytes.backends.cpu.ops",
        r"Failed to load CPU gemm_4bit_forward from kernels-community",
        "bitsandbytes 0.50.2",
        "an optional CPU kernel from the Hub; offline the built-in one runs",
    ),
    Notice(
        "kernels._internals.hf_hub",
        r"Skipping publisher trust check for 'kernels-community/",
        "kernels 0.19.1, asked by bitsandbytes 0.50.2",
        "the same optional kernel, looked up offline",
    ),
    Notice(
        "diffusers.quantizers.torchao.torchao_quantizer",
        r"Unable to import `torchao` Tensor objects",
        "diffusers 0.42.1 with torchao 0.18.0",
        "only checkpoints saved by torchao need them; fluxir quantises at load",
    ),
)


def _keep_record(patterns: list[re.Pattern[str]], record: logging.LogRecord) -> bool:
    return not any(p.match(record.getMessage()) for p in patterns)


# How ``logging.captureWarnings`` (on in every Kedro command) words a warning: "file:line: Category: message".
_CAPTURED_WARNING = r"(?s).*?:\d+: \w+: "


def filter_third_party_notices() -> None:
    """Install the filters of :data:`NOTICES` (a second call adds nothing). A warning is filtered three ways, as
    libraries route around each: a ``warnings`` filter; a filter on ``showwarning`` (mlflow shows its own warnings under
    a ``simplefilter("once")`` that outranks the first); and a filter on the ``py.warnings`` logger, where Kedro's
    ``logging.captureWarnings`` sends them."""
    by_logger: dict[str, list[re.Pattern[str]]] = {}
    shown: list[re.Pattern[str]] = []
    for notice in NOTICES:
        if notice.source == "warnings":
            warnings.filterwarnings("ignore", message=notice.message)
            shown.append(re.compile(notice.message))
            by_logger.setdefault("py.warnings", []).append(re.compile(_CAPTURED_WARNING + notice.message))
        else:
            by_logger.setdefault(notice.source, []).append(re.compile(notice.message))
    for name, patterns in by_logger.items():
        named = logging.getLogger(name)
        if not any(getattr(f, "func", None) is _keep_record for f in named.filters):
            named.addFilter(functools.partial(_keep_record, patterns))
    current = warnings.showwarning
    if getattr(current, "fluxir_notices", False):
        return

    def showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None):
        if any(p.match(str(message)) for p in shown):
            return None
        return current(message, category, filename, lineno, file, line)

    showwarning.fluxir_notices = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
