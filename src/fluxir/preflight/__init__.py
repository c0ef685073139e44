"""The preflight checks of a real run, one module per area; ``python -m fluxir.preflight`` runs them all.

- ``findings``: one report line (``Finding``), reading a nested parameter, the memory budgets;
- ``models``: diffusers pipeline folders (meta-device builds against safetensors headers) and the trained adapter;
- ``data``: public restorers' weights, IQA weight files, benchmark folders, free disk;
- ``machine``: accelerator memory, processes per stage, installed package versions.

Every check returns a list of findings and never raises for a problem it finds.
"""
