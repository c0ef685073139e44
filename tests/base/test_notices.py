"""Third-party notices a user cannot act on are filtered in one place (fluxir.runtime.progress); other warnings pass."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest

from fluxir.runtime import progress as notices

from conftest import REPO


def _stderr_of(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    return result.stderr


@pytest.mark.e2e  # what a fresh process prints at import
def test_torchao_import_notice_is_gone_once_fluxir_is_imported():
    """torch's pytree notices at torchao's import: printed without fluxir, not after ``import fluxir``."""
    marker = "is an Enum subclass and is now natively supported"
    assert marker in _stderr_of("import torchao")  # the notice exists in the installed versions
    assert marker not in _stderr_of("import fluxir, torchao")


def test_each_listed_notice_is_dropped_and_other_messages_pass(caplog):
    notices.filter_third_party_notices()
    samples = {
        "torch.utils._pytree": "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by ...",
        "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community: offline",
        "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/x' because ...",
        "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects. This may ...",
    }
    assert set(samples) == {n.source for n in notices.NOTICES if n.source != "warnings"}
    with caplog.at_level(logging.WARNING):
        for name, text in samples.items():
            logging.getLogger(name).warning(text)
            logging.getLogger(name).warning("a real problem: disk full")
    assert [r.getMessage() for r in caplog.records] == ["a real problem: disk full"] * len(samples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        notices.filter_third_party_notices()  # catch_warnings reset the filters: install them again
        warnings.warn("register_new_resolver() is deprecated and will be removed in a future release.", stacklevel=1)
        warnings.warn("some other deprecation", stacklevel=1)
    assert [str(w.message) for w in caught] == ["some other deprecation"]
    assert all(n.emitted_by and n.why for n in notices.NOTICES)
