"""FluxIR adapter size on the real FLUX.1-dev config vs the paper's Table 2 (counted on the meta device).

    .venv/bin/python benchmarks/adapter_size.py [--json]

Prints Flux's parameter count, the adapter without SE layers (paper: 387M) and the SE layers for
r = 16 / 32 / 64 / 128 / full (paper: 11.6 / 22.8 / 45.2 / 90.0 / 1076.2M), with relative errors.
Nothing is allocated and no weights are needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fluxir.models.adapter import FluxIRConfig, adapter_parameter_breakdown, count_parameters
from fluxir.models.flux import build_transformer
from fluxir.parameters.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PAPER_ADAPTER = 387e6  # Table 2 caption
PAPER_SE = {"16": 11.6e6, "32": 22.8e6, "64": 45.2e6, "128": 90.0e6, "full": 1076.2e6}  # Table 2


def measure() -> dict:
    flux = build_transformer("flux1_dev_transformer", device="meta")
    base = FluxIRConfig.from_flux(flux, **load_params("base", [], ROOT)["train"]["adapter"])  # rank is set below
    se, parts = {}, None
    for key in PAPER_SE:
        rank = None if key == "full" else int(key)
        sizes = adapter_parameter_breakdown(FluxIRConfig.from_params({**base.to_dict(), "rank": rank}))
        se[key] = sizes["se"]
        parts = sizes
    adapter = parts["without_se"]
    return {
        "flux_params": count_parameters(flux),
        "adapter_params": adapter,
        "adapter_params_paper": PAPER_ADAPTER,
        "adapter_params_rel_error": adapter / PAPER_ADAPTER - 1,
        "adapter_parts": {k: parts[k] for k in ("block", "embedders", "input_proj", "text_embeddings")},
        "se_params": se,
        "se_params_paper": PAPER_SE,
        "se_params_rel_error": {k: se[k] / PAPER_SE[k] - 1 for k in se},
        "total_params_r32": adapter + se["32"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = measure()
    if args.json:
        print(json.dumps(result))
        return
    print(f"FLUX.1-dev transformer: {result['flux_params'] / 1e9:.3f}B parameters")
    print(
        f"adapter without SE:     {result['adapter_params'] / 1e6:.2f}M (paper 387M, "
        f"{100 * result['adapter_params_rel_error']:+.2f}%)"
    )
    for key, n in result["se_params"].items():
        print(
            f"SE layers, rank {key:>4}:  {n / 1e6:8.2f}M (paper {PAPER_SE[key] / 1e6:.1f}M, "
            f"{100 * result['se_params_rel_error'][key]:+.2f}%)"
        )


if __name__ == "__main__":
    main()
