"""The FluxIR web app: upload a photo, restore it with Flux + a FluxIR adapter (or, without one, a public
restorer: the Flux ControlNet upscaler or Real-ESRGAN), compare, download the PNG.

    make app                                   # FLUX.1-dev (restore.model), http://127.0.0.1:7860
    .venv/bin/python -m fluxir.app --env tiny  # the tiny random-weight models (machinery only)

The model folder and every default come from the Kedro project's ``restore`` parameters (``--env``); the
adapter is the catalog entry ``fluxir_adapter``: the latest version by default, any version on disk from
the picker (or "none": plain Flux). The method picker is ``restore.method`` (settings of the public ones:
``baselines.*``); the page says which method and weights produced each result. Photos are read by
``fluxir.restoration.files.read_photo`` (any mode, EXIF rotation, 16-bit, alpha kept) and restored by the
same ``Restorer`` as ``kedro run --pipeline=restore`` (tiling included). One job runs at a time (the queue
has concurrency 1: one GPU); the server binds 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from kedro.io.core import DatasetError

from fluxir.io.atomic import write_png_atomic
from fluxir.io.provenance import png_text, restored_fields
from fluxir.parameters.validation import baselines_problems, raise_problems, restore_settings_problems
from fluxir.restoration.colorfix import COLOR_FIX_METHODS
from fluxir.restoration.files import out_of_memory_advice, read_photo, restore_photo, split_params
from fluxir.restoration.lowmem import OFFLOAD_MODES, QUANTIZE_MODES
from fluxir.restoration.methods import (
    RESTORE_METHODS,
    TITLES,
    build_public,
    describe_public,
    output_geometry,
    public_config,
)
from fluxir.restoration.restore_config import RestoreConfig, output_size
from fluxir.restoration.sampler import Restorer, upsample
from fluxir.restoration.work import check_output_size, warm_up_rate

logger = logging.getLogger(__name__)

ADAPTER_ENTRY = "fluxir_adapter"
NO_ADAPTER = "none (plain Flux)"
# RestoreConfig fields that need the models rebuilt (the others are read at every restore)
MODEL_FIELDS = ("dtype", "device", "offload", "quantize", "max_sequence_length")


@dataclass
class ProjectModels:
    """What the app reads from the Kedro project: restore parameters and the adapter catalog entry."""

    project: Path
    params: dict[str, Any]  # restore.* of the chosen env
    catalog: Any  # the env's DataCatalog (fluxir.parameters.config.load_catalog): the fluxir_adapter entry's versions
    baselines: dict[str, Any] = field(default_factory=dict)  # baselines.* of the chosen env (public restorers)
    _restorer: Any = field(default=None, repr=False)
    _key: tuple | None = field(default=None, repr=False)
    seconds_per_pass: dict[str, float] = field(default_factory=dict)  # per method, measured: the next estimate

    @classmethod
    def from_kedro(
        cls, project: str | Path, env: str | None = None, overrides: Iterable[str | Mapping[str, Any]] = ()
    ) -> ProjectModels:
        """Read ``restore`` parameters and the catalog of the project at ``project`` (env None: as kedro run)."""
        from fluxir.parameters.config import default_env, load_catalog, load_params

        project = Path(project).resolve()
        env = env or default_env()  # what `kedro run` without --env reads
        params = load_params(env, overrides, project)
        baselines = dict(params.get("baselines") or {})
        for method in baselines.values():  # the project's relative weight paths, wherever the app was started
            for key in ("weights", "model", "controlnet"):
                if isinstance(method.get(key), str) and (project / method[key]).exists():
                    method[key] = str(project / method[key])
        return cls(project, dict(params["restore"]), load_catalog(env, project, overrides), baselines)

    def adapter_versions(self) -> list[str]:
        """Saved versions of the adapter on disk, newest first."""
        return self.catalog.get(ADAPTER_ENTRY).versions()

    def load_adapter(self, version: str) -> Any:
        """The adapter of ``version`` through the catalog dataset, or None for ``NO_ADAPTER``."""
        from kedro.io import Version

        if version == NO_ADAPTER:
            return None
        return self.catalog.get(ADAPTER_ENTRY, version=Version(version, None)).load()

    def restorer(
        self,
        version: str,
        config: RestoreConfig,
        method: str,
        steps: int | None = None,
        seed: int | None = None,
    ) -> Any:
        """A restorer for this method (and adapter version) and config; models are reloaded only when they must be.

        Public methods take the output size and colour fix from ``config`` and, for the Flux ControlNet, the
        page's ``steps`` / ``seed``; their weights and other settings come from ``baselines.<method>``.
        """
        if method == "fluxir":
            key = (method, version, *(getattr(config, name) for name in MODEL_FIELDS))
        else:
            key = (method,)
        if self._restorer is None or self._key != key:
            self._restorer = None  # free the old models before loading new ones
            if method == "fluxir":
                files, _ = split_params(self.params)
                self._restorer = Restorer.from_source(files["model"], self.load_adapter(version), config)
            else:
                self._restorer = build_public(
                    method,
                    public_config(method, self.baselines),
                    output_geometry(method, config.scale, config.target_size, config.color_fix),
                )
            self._key = key
        if method == "fluxir":
            self._restorer.config = config
        else:
            self._restorer.config = output_geometry(method, config.scale, config.target_size, config.color_fix)
            if method == "flux_controlnet":
                self._restorer.cfg = replace(
                    self._restorer.cfg,
                    steps=steps or self._restorer.cfg.steps,
                    seed=self._restorer.cfg.seed if seed is None else seed,
                )
        return self._restorer

    def method_label(self, method: str, version: str) -> str:
        """What produced a result, in one line for the page."""
        if method == "fluxir":
            return f"Restored with FluxIR: Flux ({self.params.get('model')}) + adapter {version}"
        cfg = (
            self._restorer.cfg
            if self._restorer is not None and self._key == (method,)
            else public_config(method, self.baselines)
        )
        return f"Restored with {TITLES[method]}: {describe_public(method, cfg)}"


def restore_upload(
    models: ProjectModels,
    upload: str | None,
    version: str,
    settings: dict[str, Any],
    on_step: Any = None,
    on_start: Any = None,
) -> tuple[np.ndarray, np.ndarray, Path, str]:
    """Restore the uploaded file: (before = bicubic LQ at the output size, after, PNG path, method label).

    ``settings`` may hold ``method`` (``restore.method``: fluxir, flux_controlnet, realesrgan).
    ``on_start(text)`` gets the output size and the method's work before the models load, then again with the
    estimated time (the first time per method from a warm-up, ``fluxir.restoration.work``) before restoring.
    Raises ValueError naming the file (unreadable, too large an output, out of memory) or the parameter.
    """
    if not upload:
        raise ValueError("upload a photo first (PNG, JPEG, WebP, TIFF, ...)")
    name = Path(upload).name
    try:
        rgb, alpha = read_photo(upload)
    except ValueError as err:
        raise ValueError(f"{name}: {str(err).removeprefix(f'{Path(upload)}: ')}") from err
    restore = {**models.params, **settings}
    public = restore["method"] != "fluxir"  # only a public restorer reads baselines.*
    problems = restore_settings_problems(restore) + (baselines_problems(models.baselines) if public else [])
    raise_problems(problems, "the restoration")
    files, config = split_params(restore)
    method = files["method"]
    if method not in RESTORE_METHODS:
        raise ValueError(f"restore.method must be one of {RESTORE_METHODS}, got {method!r}")
    public = None if method == "fluxir" else public_config(method, models.baselines)
    if method == "flux_controlnet" and settings.get("steps"):
        public = replace(public, steps=settings["steps"])  # the page's steps, as models.restorer sets them
    work = check_output_size(rgb.shape[0], rgb.shape[1], config, name, public)  # before any model is loaded
    rate, basis = models.seconds_per_pass.get(method), "rate of the image before"
    if on_start is not None:
        on_start(f"loading models; {work.describe(rate, basis)}")
    restorer = models.restorer(version, config, method, steps=settings.get("steps"), seed=settings.get("seed"))
    if rate is None:
        rate, basis = warm_up_rate(restorer, work), "timed on a warm-up"
    plan = work.describe(rate, basis)
    logger.info("restoring %s with %s: %s", name, method, plan)
    if on_start is not None:
        on_start(plan)
    start = time.perf_counter()
    try:
        after = restore_photo(restorer, rgb, alpha, progress=False, on_step=on_step)
    except (torch.OutOfMemoryError, MemoryError) as err:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise ValueError(f"{name}: {out_of_memory_advice(err, work)}") from err
    models.seconds_per_pass[method] = (time.perf_counter() - start) / work.passes
    height, width = output_size(rgb.shape[0], rgb.shape[1], config)
    before = upsample(rgb, height, width)
    out = Path(tempfile.mkdtemp(prefix="fluxir-app-")) / f"{Path(name).stem}_{method}.png"
    # the disclosure and the restorer travel with the downloaded file
    write_png_atomic(out, after, png_text(restored_fields(method, **{"Adapter-Version": version})))
    return before, after[..., :3], out, models.method_label(method, version)


def build_app(models: ProjectModels) -> gr.Blocks:
    """The Gradio page: inputs and settings on the left, before/after slider and download on the right."""
    p = models.params
    versions = models.adapter_versions()
    with gr.Blocks(title="FluxIR restoration") as app:
        gr.Markdown(
            "## FluxIR restoration\nUpload a photo, restore it with Flux + the FluxIR adapter (or, without "
            "one, a public restorer), compare, download the PNG. One job at a time."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="photo", type="filepath", elem_id="upload")
                method = gr.Radio(
                    list(RESTORE_METHODS),
                    value=p["method"],
                    elem_id="method",
                    label="method (fluxir: the adapter; flux_controlnet / realesrgan: public weights)",
                )
                version = gr.Dropdown(
                    [*versions, NO_ADAPTER],
                    value=(versions or [NO_ADAPTER])[0],
                    label=f"adapter version ({ADAPTER_ENTRY})",
                    elem_id="version",
                )
                steps = gr.Slider(1, 50, value=p["steps"], step=1, label="steps")
                scale = gr.Slider(1, 8, value=p["scale"], step=0.5, label="scale (output = input x scale)")
                tile = gr.Number(
                    value=p.get("tile_size") or 0,
                    precision=0,
                    label="tile size (output pixels, multiple of 16; 0: no tiling)",
                )
                color = gr.Radio(list(COLOR_FIX_METHODS), value=p["color_fix"], label="colour fix")
                control = gr.Slider(
                    0,
                    2,
                    value=p["control_scale"],
                    step=0.05,
                    label="control scale (0: plain Flux, 1: as trained, >1: closer to the photo)",
                )
                start_t = gr.Slider(
                    0.05,
                    1,
                    value=p["start_t"],
                    step=0.05,
                    label="start t (1: from noise; lower: more fidelity, fewer steps)",
                )
                seed = gr.Number(value=p["seed"], precision=0, label="seed")
                offload = gr.Radio(list(OFFLOAD_MODES), value=p["offload"], label="offload")
                quantize = gr.Radio(list(QUANTIZE_MODES), value=p["quantize"], label="quantize Flux")
                run = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column():
                compare = gr.ImageSlider(label="before / after", type="numpy", elem_id="compare")
                label = gr.Markdown("", elem_id="method_label")
                download = gr.File(label="restored PNG", elem_id="download")

        def on_restore(
            upload_path,
            method_,
            version_name,
            steps_,
            scale_,
            tile_,
            color_,
            control_,
            start_,
            seed_,
            offload_,
            quantize_,
            progress=gr.Progress(),  # noqa: B008 (gradio's way to ask for a progress bar)
        ):
            settings = {
                "method": method_,
                "steps": int(steps_),
                "scale": float(scale_),
                "tile_size": int(tile_ or 0) or None,
                "color_fix": color_,
                "control_scale": float(control_),
                "start_t": float(start_),
                "seed": int(seed_ or 0),
                "offload": offload_,
                "quantize": quantize_,
            }
            progress(0, desc="checking the photo")
            try:
                before, after, png, produced_by = restore_upload(
                    models,
                    upload_path,
                    version_name,
                    settings,
                    on_step=lambda done, total: progress((done, total), desc="denoising", unit="steps"),
                    on_start=lambda plan: progress(0, desc=plan),
                )
            except (ValueError, FileNotFoundError, DatasetError) as err:  # the project's own messages
                raise gr.Error(str(err), print_exception=False) from err
            except Exception as err:  # anything else: our words in the page, the traceback in the server log
                logger.exception("restoration failed")
                raise gr.Error(
                    f"the restoration failed ({type(err).__name__}: {(str(err).splitlines() or [''])[0]}); "
                    "the server log has the details",
                    print_exception=False,
                ) from err
            return (before, after), produced_by, str(png)

        run.click(
            on_restore,
            [upload, method, version, steps, scale, tile, color, control, start_t, seed, offload, quantize],
            [compare, label, download],
            concurrency_limit=1,
        )
    app.queue(default_concurrency_limit=1)
    return app
