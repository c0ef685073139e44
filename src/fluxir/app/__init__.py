"""The FluxIR web app (``python -m fluxir.app``, ``make app``): upload a photo, restore it with Flux + a FluxIR adapter
(or a public restorer), compare, download the PNG. Settings and the adapter's versions come from the Kedro project
(``--env``); each upload goes through ``restore_one`` like the restore pipeline; one job at a time (one GPU).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from kedro.io import Version
from kedro.io.core import DatasetError

from fluxir.io.images import read_image, read_photo
from fluxir.parameters.config import default_env, load_catalog, load_params
from fluxir.parameters.validation import baselines_problems, raise_problems, restore_settings_problems
from fluxir.restoration.files import LazyRestorer, RestoreJob, restore_one, split_params
from fluxir.restoration.methods import RESTORE_METHODS, method_named, restorer_spec, uses_adapter
from fluxir.restoration.restore_config import COLOR_FIX_METHODS, OFFLOAD_MODES, QUANTIZE_MODES, RestoreConfig
from fluxir.restoration.sampler import upsample

logger = logging.getLogger(__name__)

ADAPTER_ENTRY = "fluxir_adapter"
NO_ADAPTER = "none (plain Flux)"
PAGE_SETTINGS = ("steps", "seed")  # the page's values also reach a public method's own settings of that name
NUMBERS = {"steps": int, "scale": float, "tile_size": int, "control_scale": float, "start_t": float, "seed": int}


@dataclass
class ProjectModels:
    """What the app reads from the Kedro project and the restorer it keeps loaded between uploads."""

    project: Path
    params: dict[str, Any]  # restore.* of the chosen env
    catalog: Any  # the env's DataCatalog (fluxir.parameters.config.load_catalog): the fluxir_adapter entry's versions
    baselines: dict[str, Any] = field(default_factory=dict)  # baselines.* of the chosen env (public restorers)
    current: LazyRestorer | None = field(default=None, repr=False)
    _key: tuple | None = field(default=None, repr=False)

    @classmethod
    def from_kedro(
        cls, project: str | Path, env: str | None = None, overrides: Iterable[str | Mapping[str, Any]] = ()
    ) -> ProjectModels:
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
        """Newest first."""
        return self.catalog.get(ADAPTER_ENTRY).versions()

    def load_adapter(self, version: str) -> Any:
        if version == NO_ADAPTER:
            return None
        return self.catalog.get(ADAPTER_ENTRY, version=Version(version, None)).load()

    def restorer(self, job: RestoreJob, config: RestoreConfig, version: str, page: Mapping[str, Any]) -> LazyRestorer:
        """The restorer of ``job.method`` with ``config``, reloaded only when the method, the adapter or one of its
        ``Method.load_fields`` changed; a public method's ``PAGE_SETTINGS`` come from the page."""
        entry = method_named(job.method)
        key = (entry.name, version if entry.needs_adapter else None, *(getattr(config, f) for f in entry.load_fields))
        if self.current is None or self._key != key:
            self.current = None  # free the old models before loading new ones
            adapter = self.load_adapter(version) if entry.needs_adapter else None
            spec = restorer_spec(entry.name, config, self.baselines, job.model, adapter)
            self.current, self._key = LazyRestorer(spec), key
        spec = self.current.spec
        if spec.settings is not None:
            chosen = {k: page[k] for k in PAGE_SETTINGS if page.get(k) is not None and hasattr(spec.settings, k)}
            spec = replace(spec, settings=replace(self.current.spec.settings, **chosen))
        self.current.spec = replace(spec, config=config)
        if self.current.restorer is not None:
            entry.configure(self.current.restorer, self.current.spec)
        return self.current


def restore_upload(
    models: ProjectModels,
    upload: str | None,
    version: str,
    settings: dict[str, Any],
    on_step: Any = None,
    on_start: Any = None,
) -> tuple[np.ndarray, np.ndarray, Path, str]:
    """(before = bicubic LQ at the output size, after, PNG path, method label); ``on_start(text)`` gets the work
    before the models load and the estimated time. ValueError naming the file or the parameter."""
    if not upload:
        raise ValueError("upload a photo first (PNG, JPEG, WebP, TIFF, ...)")
    restore = {**models.params, **settings}
    public = not uses_adapter([restore["method"]])  # only a public restorer reads baselines.*
    problems = restore_settings_problems(restore) + (baselines_problems(models.baselines) if public else [])
    raise_problems(problems, "the restoration")
    job, config = split_params(restore)
    lazy = models.restorer(job, config, version, settings)
    out = Path(tempfile.mkdtemp(prefix="fluxir-app-")) / f"{Path(upload).stem}_{job.method}.png"
    # the disclosure and the restorer travel with the downloaded file
    result = restore_one(lazy, upload, out, on_step=on_step, on_plan=on_start)
    before = upsample(read_photo(upload)[0], result.out_size[1], result.out_size[0])
    m, model = lazy.spec.method, models.params.get("model")
    what = f"Flux ({model}) + adapter {version}" if m.needs_adapter else m.describe(lazy.spec.settings)
    return before, read_image(out), out, f"Restored with {m.title}: {what}"


def build_app(models: ProjectModels) -> gr.Blocks:
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
                page = {  # restore.* values set on the page, by name
                    "steps": gr.Slider(1, 50, value=p["steps"], step=1, label="steps"),
                    "scale": gr.Slider(1, 8, value=p["scale"], step=0.5, label="scale (output = input x scale)"),
                    "tile_size": gr.Number(
                        value=p.get("tile_size") or 0,
                        precision=0,
                        label="tile size (output pixels, multiple of 16; 0: no tiling)",
                    ),
                    "color_fix": gr.Radio(list(COLOR_FIX_METHODS), value=p["color_fix"], label="colour fix"),
                    "control_scale": gr.Slider(
                        0,
                        2,
                        value=p["control_scale"],
                        step=0.05,
                        label="control scale (0: plain Flux, 1: as trained, >1: closer to the photo)",
                    ),
                    "start_t": gr.Slider(
                        0.05,
                        1,
                        value=p["start_t"],
                        step=0.05,
                        label="start t (1: from noise; lower: more fidelity, fewer steps)",
                    ),
                    "seed": gr.Number(value=p["seed"], precision=0, label="seed"),
                    "offload": gr.Radio(list(OFFLOAD_MODES), value=p["offload"], label="offload"),
                    "quantize": gr.Radio(list(QUANTIZE_MODES), value=p["quantize"], label="quantize Flux"),
                }
                run = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column():
                compare = gr.ImageSlider(label="before / after", type="numpy", elem_id="compare")
                label = gr.Markdown("", elem_id="method_label")
                download = gr.File(label="restored PNG", elem_id="download")

        def on_restore(values, progress=gr.Progress()):  # noqa: B008 (gradio's way to ask for a progress bar)
            # values: {component: value}; a number left empty reads as 0, a tile size 0 as null (no tiling)
            settings = {k: NUMBERS[k](values[c] or 0) if k in NUMBERS else values[c] for k, c in page.items()}
            settings["method"] = values[method]
            progress(0, desc="checking the photo")
            try:
                before, after, png, produced_by = restore_upload(
                    models,
                    values[upload],
                    values[version],
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
            on_restore, {upload, method, version, *page.values()}, [compare, label, download], concurrency_limit=1
        )
    app.queue(default_concurrency_limit=1)
    return app
