"""Third-party notices a user of fluxir cannot act on, filtered in this one place.

Each entry names the release that emits it and why it is noise here. The filters match the start of the
exact text, so a changed notice (or any other warning) is still shown. They are installed when ``fluxir``
is imported, before any of these packages is, so the first screen of every command is the project's own.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any


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


class _DropNotices(logging.Filter):
    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(p.match(text) for p in self.patterns)


# How ``logging.captureWarnings`` (on in every Kedro command) words a warning: "file:line: Category: message".
_CAPTURED_WARNING = r"(?s).*?:\d+: \w+: "


def filter_third_party_notices() -> None:
    """Install the filters of :data:`NOTICES` (a second call adds nothing).

    A warning is filtered three ways, as libraries can route around each: a ``warnings`` filter; a filter on
    ``showwarning`` (mlflow shows its own warnings under a ``simplefilter("once")`` that outranks the first);
    and a filter on the ``py.warnings`` logger, where Kedro's ``logging.captureWarnings`` sends them."""
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
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(patterns))
    _filter_showwarning(shown)


def _filter_showwarning(patterns: list[re.Pattern[str]]) -> None:
    current = warnings.showwarning
    if getattr(current, "fluxir_notices", False):
        return

    def showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None):
        if any(p.match(str(message)) for p in patterns):
            return None
        return current(message, category, filename, lineno, file, line)

    showwarning.fluxir_notices = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
