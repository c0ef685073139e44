"""FluxIR training settings (``train.*`` in conf/base/parameters_train.yml): fields, checks, run key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxir.io.provenance import hash_json
from fluxir.parameters.config import Config, ConfigError, Rule

TIMESTEP_SAMPLERS = ("clamped_uniform", "logit_normal")
PIXEL_LOSS_FORMS = ("paper", "x0")

# Fields that do not change what is learned: excluded from the run key, so changing them (or raising max_steps)
# resumes the same run. batch_size is one: the global batch and its randomness are the same however it is split.
_NON_SEMANTIC = (
    "max_steps",
    "max_epochs",
    "checkpoint_every",
    "keep_checkpoints",
    "resume",
    "log_every",
    "validate_every",
    "validation_steps",
    "cache_latents",
    "device",
    "decoder_gradient_checkpointing",
    "gradient_checkpointing",
    "batch_size",
    "compile",
)


# Runtime params the catalog's train_checkpoints / train_latent_cache read; Kedro merges them into the parameters
# too, but they are not settings.
FOLDER_PARAMS = ("checkpoint_dir", "latent_cache_dir")


@dataclass(frozen=True)
class TrainFolders:
    """The catalog's ``train_checkpoints`` (a sub-folder per run key) and ``train_latent_cache``."""

    checkpoints: Path
    latent_cache: Path


TRAIN_RULES = (
    *(
        Rule(name, "positive_int", must="an integer >= 1")
        for name in (
            "max_steps",
            "global_batch",
            "batch_size",
            "max_sequence_length",
            "lq_scale",
            "validation_steps",
            "validate_every",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
        )
    ),
    *(Rule(name, "nonneg_int") for name in ("lr_warmup_steps", "num_validation_pairs", "seed")),
    Rule(
        "timestep_sampler",
        "choice",
        TIMESTEP_SAMPLERS,
        must="'clamped_uniform' (paper Eq. 5-6) or 'logit_normal' (SD3, the Table 3 ablation)",
    ),
    Rule("timestep_eps", "interval", "[0, 1)", must="in [0, 1) (paper: 0.05)"),
    Rule("logit_normal_std", "positive_number", must="> 0 (SD3: 1.0)"),
    Rule("learning_rate", "positive_number", must="> 0 (paper: 1e-5)"),
    Rule("pixel_loss_weight", "number_at_least", 0, must=">= 0 (alpha of Eq. 10, paper: 1)"),
    Rule(
        "pixel_loss_form",
        "choice",
        PIXEL_LOSS_FORMS,
        must="'paper' (Eq. 9 as written: V_d(z_0 + t v_p) vs V_d(z_t)) or 'x0' (V_d(z_t - t v_p) vs V_d(z_0))",
    ),
    Rule(
        "pixel_loss_crop",
        "multiple_of",
        8,
        nullable=True,
        must="null or a positive multiple of 8 (pixels; the VAE downsamples by 8)",
    ),
    Rule("max_grad_norm", "positive_number", nullable=True, must="null or > 0"),
    Rule("max_epochs", "positive_number", nullable=True, must="null (no limit) or > 0 epochs"),
    Rule("mixed_precision", "choice", ("no", "bf16"), must="'no' or 'bf16' (paper: bf16)"),
    Rule("dtype", "choice", ("float32", "bfloat16", "float16"), must="float32, bfloat16 or float16"),
)


@dataclass
class TrainConfig(Config):
    """Parameters ``train.*``: their values (defaults included) live in conf/base/parameters_train.yml only."""

    model: str
    dtype: str  # frozen Flux + VAE weights; the adapter's master weights are float32
    mixed_precision: str  # accelerate autocast: "bf16" or "no"
    device: str  # auto: accelerate's device (cuda if present); "cpu" forces CPU
    seed: int
    max_steps: int  # optimizer steps (conf/run_paper.yml: the paper's 14 GPU-days at 40% MFU)
    max_epochs: float | None  # a guard: max_steps x global_batch may not exceed this many epochs; None: no limit
    global_batch: int  # pairs per optimizer step, over all processes (the paper: 64)
    batch_size: int  # per process and micro-step: what fits in memory; accumulation makes up the rest
    learning_rate: float  # paper Sec. 4.1
    weight_decay: float  # torch's AdamW default (the paper does not say)
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    lr_warmup_steps: int
    max_grad_norm: float | None  # None: no clipping (the norm is still checked and logged)
    timestep_sampler: str  # Eq. 5-6; "logit_normal" is SD3's (Table 3 ablation)
    timestep_eps: float  # epsilon of Eq. 6
    logit_normal_mean: float
    logit_normal_std: float
    pixel_loss_weight: float  # alpha of Eq. 10; 0 switches L_P (and its decoder passes) off
    pixel_loss_form: str  # Eq. 9 as written ("paper") or its clean-estimate reading ("x0")
    pixel_loss_crop: int | None  # decode a random crop of this many pixels square (multiple of 8)
    decoder_gradient_checkpointing: bool
    gradient_checkpointing: bool  # Flux blocks and the adapter block
    adapter: dict[str, Any]  # FluxIRConfig overrides, (rank, guidance, ...)
    max_sequence_length: int  # T5 tokens of the (empty) training prompt
    lq_scale: int
    num_validation_pairs: int  # held out of training, restored every validate_every steps
    validation_steps: int  # sampling steps of the validation restorations (paper: 20)
    validate_every: int
    log_every: int
    cache_latents: bool
    checkpoint_every: int
    keep_checkpoints: int
    resume: bool
    compile: bool  # torch.compile Flux's blocks and the adapter block (fluxir.models.flux.compile_blocks)

    PREFIX, RULES, NOT_FIELDS = "train.", TRAIN_RULES, FOLDER_PARAMS

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> dict[str, Any]:
        if params["mixed_precision"] is False:  # YAML 1.1 reads an unquoted `no` as false
            params["mixed_precision"] = "no"
        return {**params, "adapter": dict(params["adapter"] or {})}

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # YAML 1.1 reads `1e-5` (no dot) as a string
            value = getattr(self, field.name)
            if field.type.startswith("float") and isinstance(value, str):
                try:
                    setattr(self, field.name, float(value))
                except ValueError:
                    raise ConfigError([f"train.{field.name} must be a number, got {value!r}"]) from None
        super().__post_init__()

    def joint_problems(self, failed: set[str]) -> list[str]:
        if failed & {"global_batch", "batch_size"} or self.global_batch % self.batch_size == 0:
            return []
        return [
            f"train.global_batch={self.global_batch} is not a multiple of train.batch_size={self.batch_size}: choose "
            "a batch_size that divides it"
        ]

    def check_epoch_budget(self, num_pairs: int) -> None:
        """Refuse a run of more than ``max_epochs`` passes over the training pairs: a budget meant for more data
        than there is. Checked before any model loads."""
        train_pairs = num_pairs - self.num_validation_pairs
        if self.max_epochs is None or train_pairs < 1:  # no pair to train on: the pair table's own check says so
            return
        samples, allowed = self.max_steps * self.global_batch, self.max_epochs * train_pairs
        if samples <= allowed:
            return
        epochs = f"{samples / train_pairs:,.1f} epochs"
        raise ValueError(
            f"train.max_steps x train.global_batch = {self.max_steps:,} x {self.global_batch:,} = {samples:,} samples "
            f"is more than train.max_epochs x training pairs = {self.max_epochs:g} x {train_pairs:,} = "
            f"{allowed:,.0f} ({epochs}; {num_pairs:,} pairs minus train.num_validation_pairs="
            f"{self.num_validation_pairs}): raise train.max_epochs (null = no limit), lower train.max_steps, "
            "or generate more pairs (fluxgen.num_images)"
        )

    def run_key(self, data_key: str) -> str:
        """Hash of everything that changes what is learned: the checkpoint sub-folder of this run."""
        semantic = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NON_SEMANTIC}
        return hash_json({"config": semantic, "data": data_key})


def accumulation_steps(global_batch: int, batch_size: int, num_processes: int) -> int:
    """Micro-steps per optimizer step so that batch_size x num_processes x accumulation = global_batch exactly
    (the paper's 64 on 4 GPUs at batch_size 1: 16)."""
    per_micro_step = batch_size * num_processes
    if global_batch % per_micro_step == 0:
        return global_batch // per_micro_step
    fitting = [b for b in range(1, global_batch + 1) if global_batch % (b * num_processes) == 0]
    fix = (
        f"use train.batch_size in {fitting}"
        if fitting
        else f"use a number of processes that divides {global_batch}, or change train.global_batch"
    )
    raise ValueError(
        f"train.global_batch={global_batch} cannot be split into train.batch_size={batch_size} x "
        f"{num_processes} process(es) x whole accumulation steps ({global_batch} is not a multiple of "
        f"{per_micro_step}): {fix}"
    )
