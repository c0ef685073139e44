"""Where models come from and where they run: a diffusers pipeline (or its VAE) from a hub id or a local folder,
the ``device`` parameters.

A local folder is checked before anything loads (``folder_problems``), so a bad download fails naming the files
to fix.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fluxir.runtime.progress import library_bars_follow_mode

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Autocast off on every device type where it is on: the frozen VAE runs in its own dtype, as diffusers runs it.

    Under CUDA autocast ``group_norm`` runs in float32 (CPU autocast has no such rule), so a bf16 VAE decode with
    gradient would save float32 norm outputs for backward: ~1.6x the activations of the same decode in bf16.
    """
    with contextlib.ExitStack() as stack:
        for kind in ("cpu", "cuda"):
            if torch.is_autocast_enabled(kind):
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def resolve_device(device: str, process_device: Any = None) -> str:
    """``auto``: this process's accelerate device when it is not the CPU, else cuda when available, else cpu."""
    if device != "auto":
        return device
    if process_device is not None and str(process_device) != "cpu":
        return str(process_device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def accelerate_cpu(device: str) -> bool:
    """The ``cpu=`` argument of accelerate's ``PartialState`` / ``Accelerator`` for a ``device`` setting.

    Without ``cpu=True`` accelerate ignores ``WORLD_SIZE`` on a CPU-only machine, so every process of a
    multi-process (gloo) launch would think it is alone and do all the work.
    """
    return device == "cpu" or not torch.cuda.is_available()


def resolve_source(source: str) -> str:
    """An existing local folder with ``model_index.json``, or a hub id; ValueError naming the source otherwise."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").exists():
            raise ValueError(
                f"model folder {str(path)!r} has no model_index.json: point fluxgen.model at a diffusers "
                "pipeline folder (the output of save_pretrained or a hub snapshot) or give a hub id "
                "such as 'black-forest-labs/FLUX.1-dev'"
            )
        return str(path)
    if source.count("/") != 1 or source.startswith((".", "/")) or " " in source:
        raise ValueError(
            f"model source {source!r} is neither an existing local folder nor a hub id of the form "
            "'owner/name' (e.g. 'black-forest-labs/FLUX.1-dev')"
        )
    return source


def folder_problems(folder: str | Path) -> list[str]:
    """Every problem a loader would hit in the local pipeline ``folder``, each naming its path (empty: none).

    Checked without loading weights: a listed component without its sub-folder; a tokenizer of another class
    than model_index.json lists (it would load silently and tokenize wrongly); a truncated ``.safetensors``.
    """
    import transformers

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    problems = []
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry == [None, None]:
            continue
        library, class_name = entry
        sub = folder / name
        if not sub.is_dir():
            problems.append(
                f"{sub}: missing, but {folder / 'model_index.json'} lists component {name!r} ({library}.{class_name}); "
                "copy the complete snapshot (huggingface-cli download <repo> --local-dir <folder>) or set the "
                f"entry to [null, null] if the pipeline should load without it"
            )
            continue
        tokenizer_config = sub / "tokenizer_config.json"
        if library == "transformers" and "Tokenizer" in class_name and tokenizer_config.is_file():
            saved = json.loads(tokenizer_config.read_text()).get("tokenizer_class")
            expected, found = getattr(transformers, class_name, None), getattr(transformers, saved or "", None)
            if saved and expected is not found:
                problems.append(
                    f"{tokenizer_config}: tokenizer_class {saved!r}, but model_index.json lists {name!r} as "
                    f"{class_name!r}; put the {class_name} files in {sub} (or fix the entry in model_index.json)"
                )
        for weights in sorted(sub.glob("*.safetensors")):
            if problem := _safetensors_problem(weights):
                problems.append(f"{weights}: {problem}; download this file again")
    return problems


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"not a safetensors file ({size} bytes)"
        header_len = int.from_bytes(head, "little")
        if header_len > size - 8:
            return f"truncated or not a safetensors file (header of {header_len} bytes in a {size}-byte file)"
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            return "corrupt safetensors header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        return f"truncated: the header needs {8 + header_len + end} bytes, the file has {size}"
    return None


TEXT_COMPONENTS = ("text_encoder", "tokenizer")  # prefixes of the prompt-side components of a pipeline


def load_pipeline(source: str, dtype: str, device: str = "cpu", text_encoders: bool = True):
    """A diffusers text-to-image pipeline from a hub id or a local folder (checked first, every problem at once).

    ``text_encoders=False`` never instantiates the text encoders and tokenizers: for callers that have the
    prompt embeddings already.
    """
    from diffusers import DiffusionPipeline  # here, not above: scoring and checks import this module, 4 s faster

    source = resolve_source(source)
    # Components listed as [null, null] (tiny folders have no text encoders) must be passed as None.
    index_file = Path(source) / "model_index.json"
    absent = {}
    if index_file.exists():
        if problems := folder_problems(source):
            raise ValueError(f"model folder {source!r} cannot be loaded:\n- " + "\n- ".join(problems))
        index = json.loads(index_file.read_text())
        absent = {k: None for k, v in index.items() if v == [None, None]}
    if not text_encoders:
        index = DiffusionPipeline.load_config(source)
        absent.update({k: None for k in index if k.startswith(TEXT_COMPONENTS)})
    library_bars_follow_mode()
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=getattr(torch, dtype), **absent)
    except OSError as err:
        raise ValueError(
            f"could not load model {source!r}: {err}. Download it first (huggingface-cli download "
            f"{source}) or point fluxgen.model at a local diffusers folder."
        ) from err
    return pipe.to(device)


def load_vae(source: str, dtype: str, device: str = "cpu") -> AutoencoderKL:
    """Only the VAE of a pipeline, with the weights and dtype ``load_pipeline`` would give it (same latents)."""
    from diffusers import AutoencoderKL

    source = resolve_source(source)
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", dtype=getattr(torch, dtype))
    except OSError as err:
        raise ValueError(f"could not load the VAE of {source!r} (sub-folder vae): {err}") from err
    return vae.to(device)
