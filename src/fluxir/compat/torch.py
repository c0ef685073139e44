"""torch 2.14: fake tensors, storage identity and in-place parameter replacement for the memory model.

``benchmarks/train_memory.py`` runs training's step on fake CUDA tensors (shapes, dtypes and devices, no
data) so that CUDA autocast's own kernels pick every op's dtype on a machine without a GPU. That needs
``FakeTensorMode`` (``torch._subclasses``), the identity of a tensor's storage (``UntypedStorage._cdata``;
views share it) and replacing a module's parameters without ``Module.to``, whose ``swap_tensors`` refuses
fake tensors (each carries a weak reference).
"""

from __future__ import annotations

from typing import Any

from fluxir.compat import require

require("torch", ">=2.4,<2.15", __name__)


def fake_tensor_mode() -> Any:
    """A ``FakeTensorMode`` that also accepts real tensors as inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def storage_id(tensor: Any) -> int:
    """The same number for every view of one storage (fake or real), for as long as it lives."""
    return tensor.untyped_storage()._cdata


def replace_tensors(module: Any, make: Any) -> None:
    """Every parameter and buffer ``t`` of ``module`` becomes ``make(t)`` in place (``requires_grad`` kept)."""
    from torch import nn

    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(make(p), requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = make(b)
