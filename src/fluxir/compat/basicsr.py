"""Import basicsr on current torchvision.

basicsr 1.4.2 (the last release) imports ``torchvision.transforms.functional_tensor``, a module
torchvision removed in 0.17 (Real-ESRGAN#768, BasicSR#649). The function it needs,
``rgb_to_grayscale``, still lives in ``torchvision.transforms._functional_tensor``. Registering that
module under the old name before the first basicsr import is the smallest fix that leaves the
installed package untouched; if the old module exists (old torchvision, or the ``basicsr-fixed`` fork)
nothing is changed.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from fluxir.compat import require

require("basicsr", "==1.4.2", __name__)
require("torchvision", ">=0.17,<0.30", __name__)  # where the renamed _functional_tensor is checked to exist

_OLD = "torchvision.transforms.functional_tensor"


def import_basicsr() -> ModuleType:
    """Return the ``basicsr`` package, aliasing torchvision's renamed module first if needed."""
    try:
        importlib.import_module(_OLD)
    except ModuleNotFoundError:
        sys.modules[_OLD] = importlib.import_module("torchvision.transforms._functional_tensor")
    return importlib.import_module("basicsr")
