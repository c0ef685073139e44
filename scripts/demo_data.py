"""Demo benchmark folders for the tiny environment: small degraded crops of scikit-image's bundled photos.

    python scripts/demo_data.py --env tiny

(``make demo`` runs it before ``kedro run --env=tiny``.) Every benchmark of ``evaluate.benchmarks`` whose catalog
entry ``<key>_benchmark`` points at folders without images gets a few demo images there, degraded with the
training degradation (``degrade.config``, ``degrade.seed``); a marker file labels them as demo data, so the
evaluate pipeline says so in its report. Folders that hold images already are left untouched, so real
benchmark folders are never written into; an environment with real models (``evaluate.tiny_models: false``)
is refused.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data

from fluxir.evaluation.testsets import DEMO_MARKER, DOCS, FOLDERS_ENTRY, BenchmarkSpec, missing_files
from fluxir.fluxgen.degrade import DegradationConfig, degrade_pair
from fluxir.io.atomic import write_png_atomic

log = logging.getLogger(__name__)

# scikit-image's bundled colour photos (no download needed), by benchmark kind.
DEMO_PHOTOS = {
    "synthetic": ("astronaut", "coffee", "chelsea"),
    "paired": ("rocket", "immunohistochemistry", "hubble_deep_field"),
    "lq_only": ("retina", "cat", "astronaut"),
}


def _photo(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"skimage.data.{name} is not an RGB photo")
    return np.ascontiguousarray(image)


def _demo_config(size: int, degradation: Mapping[str, Any]) -> Any:
    return DegradationConfig.from_params({**dict(degradation), "crop_sizes": [[size, size]], "crop_position": "center"})


def write_demo_benchmarks(
    specs: Mapping[str, BenchmarkSpec], degradation: Mapping[str, Any], count: int = 3, seed: int = 0
) -> dict[str, list[str]]:
    """Fill the folders of every benchmark that has no image yet with ``count`` small demo images.

    Sources are scikit-image's bundled photos degraded with the training degradation: the synthetic
    source folder gets whole photos; paired folders get ``<photo>_HR.png`` / ``<photo>_LR4.png`` pairs
    slightly larger than the crops (so centre cropping is exercised); LQ-only folders get LQ images.
    Folders that already hold images are left untouched. Returns ``{benchmark: [folders written]}``.
    """
    written: dict[str, list[str]] = {}
    for spec in specs.values():
        spec.check_folders()
        if missing_files(spec) is None:
            continue
        photos = DEMO_PHOTOS[spec.kind][:count]
        scale = spec.scale or degradation["scale"]
        if spec.kind == "synthetic":
            folder = Path(spec.hq_dir)
            for name in photos:
                photo = _photo(name)
                if min(photo.shape[:2]) < spec.hq_size:
                    raise ValueError(
                        f"demo benchmarks are for small sizes: {name} is smaller than hq_size {spec.hq_size}"
                    )
                write_png_atomic(folder / f"{name}.png", photo)
            folders = [folder]
        else:
            lq_side = spec.lq_size + max(4, spec.lq_size // 2)  # larger than the crop, a multiple of 4
            lq_side += (-lq_side) % 4
            hq_side = math.lcm(16, scale) * math.ceil(lq_side * scale / math.lcm(16, scale))
            config = _demo_config(hq_side, degradation)
            hq_folder, lq_folder = Path(spec.hq_dir or spec.lq_dir), Path(spec.lq_dir)
            for name in photos:
                hq, lq, _ = degrade_pair(_photo(name), f"demo-{spec.name}-{name}", seed, config)
                if spec.kind == "paired":
                    write_png_atomic(hq_folder / f"{name}_HR.png", hq)
                    write_png_atomic(lq_folder / f"{name}_LR{scale}.png", lq)
                else:
                    write_png_atomic(lq_folder / f"{name}.png", lq)
            folders = [hq_folder, lq_folder] if spec.kind == "paired" else [lq_folder]
        for folder in folders:
            (folder / DEMO_MARKER).write_text(
                "Demo data written by fluxir for the tiny environment: degraded crops of scikit-image's sample\n"
                f"photos, NOT the {spec.name} benchmark. Delete this folder and put the real files here ({DOCS}).\n"
            )
        written[spec.name] = sorted({str(f) for f in folders})
        log.info("%s: wrote %d demo images into %s", spec.name, len(photos), ", ".join(written[spec.name]))
    return written


def write_env_demo(env: str, project: str | Path = ".", overrides: list[Any] | None = None) -> dict[str, list[str]]:
    """``write_demo_benchmarks`` for the benchmarks of a Kedro environment: settings from its parameters, folders
    from its catalog (relative to ``project``)."""
    from fluxir.parameters.config import catalog_config, load_params

    params = load_params(env, overrides or [], project)
    if not params["evaluate"].get("tiny_models"):
        raise ValueError(
            f"environment {env!r} evaluates real models (evaluate.tiny_models is false): demo images are for the "
            "tiny environment only (--env tiny); put the real benchmarks in place instead (python -m fluxir.fetch)"
        )
    catalog = catalog_config(env, project, overrides or [])
    specs = {}
    for key, settings in (params["evaluate"].get("benchmarks") or {}).items():
        entry = FOLDERS_ENTRY.format(key=key)
        if entry not in catalog:
            raise ValueError(
                f"evaluate.benchmarks.{key} has no catalog entry {entry} (conf/{env}/catalog_evaluate.yml)"
            )
        folders = {side: catalog[entry].get(f"{side}_path") for side in ("hq", "lq")}
        specs[key] = BenchmarkSpec.from_params(settings, folders, entry)
    return write_demo_benchmarks(specs, params["degrade"]["config"], seed=params["degrade"]["seed"])


def main(argv: list[str] | None = None) -> None:
    """Write the tiny environment's demo benchmark images into its empty benchmark folders."""
    from fluxir.parameters.config import cli_parser

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = cli_parser("python scripts/demo_data.py", main.__doc__, "degrade.seed=1")
    args = parser.parse_args(argv)
    print(json.dumps(write_env_demo(args.env, args.project, args.params)))


if __name__ == "__main__":
    main()
