"""Accelerator memory figures shared by the preflight check and the model card (a module with no imports, so
both can read it).

``BUDGET_GB``: GB per GPU (of the card's label) a real run needs, from docs/full_scale.md "Memory";
training's comes from the memory model's table ``TRAIN_MEMORY`` in ``fluxir/configs`` (written by
``benchmarks/train_memory.py --write``).
"""

BUDGET_GB = {"generation": 40, "restoration": 32}
TRAIN_MEMORY = "train_memory.json"
