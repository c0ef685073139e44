"""The memory figures of a model card, from what the code computes: the adapter's own bytes, the training
memory model's table (``fluxir/configs/train_memory.json``, written by ``benchmarks/train_memory.py``) and the
restoration budget of the preflight check. The table is for FLUX.1-dev's sizes and says so."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from fluxir.preflight.budget import BUDGET_GB, TRAIN_MEMORY

FLUX_DEV_SHAPE = {"num_layers": 19, "num_single_layers": 38, "num_attention_heads": 24, "attention_head_dim": 128}


def memory_text(config: Mapping[str, Any], weights_bytes: int) -> str:
    """Markdown: the adapter's size and, for a FLUX.1-dev adapter, the computed training memory per GPU."""
    lines = [f"- Adapter weights: {weights_bytes / 1e6:.1f} MB (the file; add Flux itself, loaded separately)."]
    if any(config.get(k) != v for k, v in FLUX_DEV_SHAPE.items()):
        lines.append(
            "- Training and restoration figures: n/a for this base model (the memory model covers FLUX.1-dev's "
            "sizes only)."
        )
        return "\n".join(lines)
    table = json.loads((resources.files("fluxir") / "configs" / TRAIN_MEMORY).read_text())
    rows = [r for r in table["rows"] if r["batch_size"] == 1 and r["gradient_checkpointing"]]
    lines.append(
        f"- Training one micro-batch of 1 per GPU with gradient checkpointing ({table['dtype']}; computed with "
        "CUDA autocast's dtype rules by `benchmarks/train_memory.py`, not measured):"
    )
    lines += [f"  - {r['size']}, pixel loss {r['pixel_loss']}: {r['total']:.1f} GiB" for r in rows]
    lines.append(
        f"- Restoration: the preflight check budgets {BUDGET_GB['restoration']} GB per GPU for bf16 FLUX.1-dev + "
        "adapter; `restore.quantize=int8` and `restore.offload` lower it (fluxir's docs/restoration.md, "
        "Low-memory modes)."
    )
    return "\n".join(lines)
