"""Hugging Face cards (YAML header + sections from the run) of a FluxGen export and of a FluxIR adapter, and the
licence they carry: the generator's, not this project's (pointers to it, restating the sections that bind).

Nothing here invents a number or a licence: a figure the run does not have is "n/a"; an unknown model's licence
must be set in ``export.license``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fluxir.preflight import BUDGET_GB, train_memory_table

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
FLUX_DEV_LICENSE_LINK = "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"


@dataclass(frozen=True)
class LicenseInfo:
    license: str  # Hugging Face licence id: "apache-2.0", or "other" with a name and link
    license_name: str | None = None
    license_link: str | None = None
    title: str = ""  # the licence's own title and version, for people
    non_commercial: bool = False  # the FLUX.1 [dev] terms: no commercial or production use (4(a))

    def card_fields(self) -> dict[str, str]:
        fields = {"license": self.license, "license_name": self.license_name, "license_link": self.license_link}
        return {key: value for key, value in fields.items() if value}

    @property
    def label(self) -> str:
        return f"{self.title or self.license} ({self.license_link or self.license})"


GENERATOR_LICENSES: dict[str, LicenseInfo] = {
    FLUX_DEV: LicenseInfo(
        license="other",
        license_name="flux-1-dev-non-commercial-license",
        license_link=FLUX_DEV_LICENSE_LINK,
        title="FLUX.1 [dev] Non-Commercial License v1.1.1",
        non_commercial=True,
    ),
    FLUX_SCHNELL: LicenseInfo(
        license="apache-2.0",
        license_link="https://huggingface.co/black-forest-labs/FLUX.1-schnell/blob/main/README.md",
        title="Apache License 2.0",
    ),
}


def generator_license(model: str, license_model: str | None, override: Mapping[str, Any] | None) -> LicenseInfo:
    """``override`` (``export.license``) wins; else the known licence of ``license_model`` or, when null, ``model``."""
    if override:
        unknown = set(override) - {"license", "license_name", "license_link", "title"}
        if unknown or "license" not in override:
            raise ValueError(
                f"export.license {dict(override)!r} must be a mapping with `license` (a Hugging Face licence id "
                "such as apache-2.0, or `other`) and, for `other`, `license_name` and `license_link`; "
                f"unknown keys: {sorted(unknown)}"
            )
        return LicenseInfo(
            license=str(override["license"]),
            license_name=override.get("license_name"),
            license_link=override.get("license_link"),
            title=str(override.get("title") or override.get("license_name") or override["license"]),
            non_commercial=str(override.get("license_name") or "") == GENERATOR_LICENSES[FLUX_DEV].license_name,
        )
    key = license_model or model
    if key in GENERATOR_LICENSES:
        return GENERATOR_LICENSES[key]
    raise ValueError(
        f"the licence of generator {key!r} is unknown to fluxir (known: {sorted(GENERATOR_LICENSES)}): set "
        "export.license to {license: <Hugging Face licence id or other>, license_name: ..., license_link: ...} "
        "as the model's own card states (FluxIRAdapter.save_pretrained: license={...}), or export.license_model "
        "to the hub id the model is a copy of"
    )


def attribution_notice(info: LicenseInfo, modified: str) -> str:
    """The NOTICE file of a Derivative: the Attribution Notice (FLUX.1 [dev] 3(b)) and that it was modified (3(c))."""
    if info.non_commercial:
        return _template("flux_dev_notice.txt").format(modified=modified)
    where = info.license_link or info.license
    return f"The base model is licensed under {info.title or info.license} ({where}).\n\n{modified}\n"


def license_file_text(info: LicenseInfo, base_model: str) -> str:
    """The LICENSE file: a pointer to the generator's licence and, for FLUX.1 [dev], its binding sections."""
    head = (
        f"This folder is bound by the licence of its base model {base_model}: {info.title or info.license}.\n"
        f"Full text: {info.license_link or 'see the base model card'}\n\n"
        "This file is a pointer to that licence, not its text: read and accept the licence at the link above.\n"
    )
    return head + _template("flux_dev_license.txt") if info.non_commercial else head


FILTER_CLASSIFIER = "Falconsai/nsfw_image_detection"
# the FLUX.1 [dev] terms a card restates (the licence's own words govern)
NON_COMMERCIAL = (
    " Its terms bind {subject}: no commercial or production use of data produced by the model (4(a)); it "
    "may not train, fine-tune or distill a model competitive with FLUX.1 [dev] (2(d)); output may be "
    "distributed only after a content filter or a review, with an AI-generated disclosure (2(e))."
)
INTENDED_USE = (
    " Under the FLUX.1 [dev] licence: not for training a model competitive with FLUX.1 [dev] (2(d)); no "
    "commercial or production use of this data (4(a))."
)
TINY_ADAPTER_NOTE = (
    "\n**Trained on tiny random-weight models** (fluxir's `tiny` environment): this adapter proves the machinery "
    "(training, evaluation, export); its `base_model` is the model the tiny one stands in for, and its numbers "
    "say nothing about quality.\n"
)
TINY_NOTE = (
    "\n**Made by tiny random-weight models** (fluxir's `tiny` environment): this export proves the machinery "
    "(generation, scoring, selection, degradation, export); its images are noise-like and not for training.\n"
)


def _template(name: str) -> str:
    """A card template shipped as package data (pyproject.toml), like huggingface_hub's modelcard_template.md."""
    return (resources.files("fluxir.export") / "templates" / name).read_text()


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    for bound, name in bounds:
        if n < bound:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def yaml_header(fields: Mapping[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(dict(fields), sort_keys=False, allow_unicode=True) + "---\n"


def read_card_header(text: str) -> dict[str, Any]:
    if not text.startswith("---\n"):
        raise ValueError("a card starts with a YAML header between two '---' lines")
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0])


def one_key_per_line(d: Mapping[str, Any]) -> str:
    items = [f"  {json.dumps(k)}: {json.dumps(v, default=str)}" for k, v in sorted(d.items())]
    return "{\n" + ",\n".join(items) + "\n}"


def content_filter_text(fluxgen: Mapping[str, Any], flagged: int | None) -> str:
    """What the run did against unlawful content (FLUX.1 [dev] licence 2(e)); never claims a filter that did not
    run."""
    cfg = fluxgen.get("content_filter")
    review = "reviewing every image before distribution is the publisher's duty (FLUX.1 [dev] licence 2(e)(i)(B))."
    if not isinstance(cfg, Mapping):
        return f"This run's FluxGen had no content filter stage (no `fluxgen.content_filter` parameters): {review}"
    if cfg.get("enabled") is False:
        return f"The content filter was turned off (`fluxgen.content_filter.enabled: false`): {review}"
    classifier = cfg.get("classifier") or cfg.get("model") or FILTER_CLASSIFIER
    count = "n/a" if flagged is None else str(flagged)
    return (
        f"FluxGen's `content_filter` node scores every generated image with `{classifier}` and drops those whose "
        f"`nsfw` score is above `fluxgen.content_filter.threshold` {cfg.get('threshold')}, as Black Forest Labs' "
        f"reference code does. Images flagged and dropped in this run: {count}."
    )


def dataset_card(
    *,
    export: Mapping[str, Any],
    license_info: LicenseInfo,
    shards: Sequence[str],
    n_pairs: int,
    selection: Any,
    metric_names: Sequence[str],
    fluxgen: Mapping[str, Any],
    select: Mapping[str, Any],
    degrade: Mapping[str, Any],
    histograms: str | None,
) -> str:
    """The README.md of an export; ``export`` is the ``export.*`` parameter group."""
    from fluxir.io.provenance import model_revision

    title, fmt, generator = export["title"], export["format"], str(fluxgen.get("model"))
    pattern = f"data/train-*.{'parquet' if fmt == 'parquet' else 'tar'}"
    header = {
        **license_info.card_fields(),
        "pretty_name": title,
        "task_categories": ["image-to-image"],
        "tags": ["image-restoration", "super-resolution", "synthetic", "ai-generated", "flux", "fluxgen"],
        "size_categories": [size_category(n_pairs)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": pattern}]}],
    }
    n_scored, n_kept = len(selection), int(selection["keep"].sum())
    rate = f"{n_kept / n_scored:.1%}" if n_scored else "n/a"
    # fluxgen.select.apply_content_filter's column; absent when no filter ran
    flagged = int(selection["nsfw_flagged"].astype(bool).sum()) if "nsfw_flagged" in selection.columns else None
    thresholds = "\n".join(
        f"| `{m}` | {float(selection[f'{m}_threshold'].iloc[0]):.4g} | {float(selection[m].min()):.4g} | "
        f"{float(selection[m].median()):.4g} | {float(selection[m].max()):.4g} |"
        for m in metric_names
        if f"{m}_threshold" in selection.columns and n_scored
    )
    if Path(generator).exists():
        revision = f"local folder `{generator}` (no hub revision)"
    elif (commit := model_revision(generator)) == "unknown":
        revision = "unknown (not in this machine's Hugging Face cache)"
    else:
        revision = f"`{commit}` (hub commit in the local cache)"
    seeds = (
        f"image i has seed `fluxgen.base_seed + i` = {fluxgen.get('base_seed')} + i "
        f"(ids 0..{int(fluxgen.get('num_images', 0)) - 1})"
    )
    prompts = fluxgen.get("prompts") or []
    prompt_text = (
        "the empty prompt (the paper's setting)" if not prompts else f"{len(prompts)} prompts, cycled over ids"
    )
    loader = f'ds = load_dataset("{fmt}", data_files="{pattern}", split="train")'
    if fmt == "parquet":
        loader += (
            f'\n# or, from the Hub: load_dataset("{export["repo_id"] or "<user>/<repo>"}")\n'
            'pair = ds[0]  # pair["hq"], pair["lq"]: PIL images; pair["iqa_<metric>"]: scores'
        )
    degrade_cfg = dict(degrade.get("config") or {})
    body = _template("dataset_card.md").format(
        title=title,
        n_pairs=n_pairs,
        n_shards=len(shards),
        shard_kind="parquet" if fmt == "parquet" else "WebDataset tar",
        generator=generator,
        tiny_note=TINY_NOTE if export["tiny_models"] else "",
        license=license_info.label,
        license_model=export["license_model"] or generator,
        non_commercial=NON_COMMERCIAL.format(subject="this data") if license_info.non_commercial else "",
        revision=revision,
        fluxgen=defaultdict(lambda: None, fluxgen),
        prompt_text=prompt_text,
        seeds=seeds,
        content_filter=content_filter_text(fluxgen, flagged),
        metrics=", ".join(f"`{m}`" for m in metric_names),
        kept_percent=100 - float(select["percentile"]),
        percentile=select["percentile"],
        n_kept=n_kept,
        n_scored=n_scored,
        rate=rate,
        thresholds=thresholds,
        histograms=f"![IQA histograms with the cuts]({histograms})"
        if histograms
        else "No histogram image was available.",
        degrade_cfg=defaultdict(lambda: None, degrade_cfg),
        degrade_seed=degrade.get("seed"),
        degrade_json=one_key_per_line(degrade_cfg),
        columns="`image_id`, `hq`, `lq`" + (", `generated`" if export["include_generated"] else ""),
        loader=loader,
        intended_use=INTENDED_USE if license_info.non_commercial else "",
    )
    return yaml_header(header) + "\n" + body


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    table = train_memory_table()
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


def model_card(
    *,
    base_model: str,
    license_info: LicenseInfo,
    config: Mapping[str, Any],
    parameters: int,
    weights_bytes: int,
    training_record: Mapping[str, Any],
    evaluation: str,
    memory: str,
    load_path: str,
    note: str,
) -> str:
    header = {
        "base_model": base_model,
        "base_model_relation": "adapter",
        **license_info.card_fields(),
        "library_name": "fluxir",
        "pipeline_tag": "image-to-image",
        "tags": ["image-restoration", "super-resolution", "flux", "fluxir", "adapter"],
    }
    training = (
        "\n".join(f"| {k} | {v} |" for k, v in training_record.items()) if training_record else "| trained | no |"
    )
    body = _template("model_card.md").format(
        base_model=base_model,
        weights_mb=weights_bytes / 1e6,
        parameters_m=parameters / 1e6,
        license=license_info.label,
        non_commercial=NON_COMMERCIAL.format(subject="this adapter and what it produces")
        if license_info.non_commercial
        else "",
        note=note,
        rank="full" if config.get("rank") is None else config["rank"],
        config=defaultdict(lambda: None, config),
        training=training,
        evaluation=evaluation,
        memory=memory,
        load_path=load_path,
    )
    return yaml_header(header) + "\n" + body
