"""The commands README.md and docs/*.md tell a user to type, and where each one is run.

``documented_commands()`` reads every line of every ```bash block (``\\`` continuations joined, the
trailing ``# comment`` cut) whose program is one a user runs against this project: ``kedro``,
``python -m ...`` / ``python <script>``, ``accelerate``, ``make``, ``hf``/``huggingface-cli``, ``mlflow``,
``curl``, ``scripts/...`` (a leading ``VAR=value`` is kept: it is part of what is typed).
``tests/pipelines/test_docs.py::test_every_documented_command_is_run_or_skipped`` fails for any such
command that is neither

- in ``RUN``: ``{command as documented: "tests/<file>.py::<test>"}``; that test runs it through
  ``run_documented`` (which first checks the text is still documented) or quotes it verbatim; or
- matched by ``SKIP``: ``(regular expression, reason)``, for commands a test cannot run here (a GPU, a
  download, a server that does not stop, an install), each with its reason.

To cover a command you add to the docs: run it from a test (on tiny settings: the base end-to-end project
in tests/pipelines/test_base_end_to_end.py has FLUX.1-dev in a hub cache, IQA files in TORCH_HOME and
``conf/run_small.yml``) and add it to ``RUN`` with that test's name, or add a ``SKIP`` pattern whose reason
says why it cannot run in a test. Entries that no longer match a documented command fail too.
"""

from __future__ import annotations

import re

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = re.compile(
    r"^(?:[A-Z_]+=\S*\s+)*(kedro|python|\.venv/bin/python|accelerate|make|hf|huggingface-cli|mlflow|"
    r"curl|scripts/\S+)\b"
)

E2E = "tests/pipelines/test_base_end_to_end.py::"
RUN: dict[str, str] = {
    # docs/sharing.md: the export pipeline after a tiny fluxgen run, in-process with the same parameters
    "kedro run --pipeline=export": "tests/pipelines/test_export.py::exported",
    'kedro run --pipeline=export --params="export.format=webdataset,export.include_generated=true"': (
        "tests/pipelines/test_export.py::exported"
    ),
    # full_scale.md, section 4: the FluxGen stages by hand, with 2 CPU processes where it says N and
    # fluxgen.num_images=4 where it says 350000, degradation on M = 2 "machines"
    "accelerate launch --multi_gpu --num_processes N -m fluxir.fluxgen generate --params fluxgen.num_images=350000": E2E
    + "test_full_scale_fluxgen_commands",
    "kedro run --pipeline=fluxgen --to-nodes=fluxgen.generate_images --params=fluxgen.num_images=350000": E2E
    + "test_full_scale_fluxgen_commands",
    "accelerate launch --multi_gpu --num_processes N -m fluxir.fluxgen score": E2E + "test_full_scale_fluxgen_commands",
    "kedro run --pipeline=fluxgen --params=fluxgen.num_images=350000": E2E + "test_full_scale_fluxgen_commands",
    "kedro run --pipeline=fluxgen --to-nodes=fluxgen.select_by_iqa --params=fluxgen.num_images=350000": E2E
    + "test_full_scale_fluxgen_commands",
    "python -m fluxir.fluxgen pairs --params degrade.rank=k,degrade.world_size=M": E2E
    + "test_full_scale_fluxgen_commands",
    # the README's real run, in order (the base configuration's models as a hub-cache snapshot, run_small sizes)
    "kedro run --pipeline=fluxgen": E2E + "test_full_scale_fluxgen_commands",
    "kedro run --pipeline=train": E2E + "test_training_commands",
    "kedro run --pipeline=evaluate": E2E + "test_evaluate_restore_and_check_commands",
    "python -m fluxir.preflight": E2E + "test_evaluate_restore_and_check_commands",
    # training
    "accelerate launch --multi_gpu --num_processes 4 -m fluxir.training": E2E + "test_training_commands",
    'kedro run --pipeline=train --params="train.max_steps=500,train.pixel_loss_crop=512"': E2E
    + "test_training_commands",
    # restoration, the run file
    'kedro run --pipeline=restore --params="restore.input_dir=my_photos,restore.output_dir=restored"': E2E
    + "test_evaluate_restore_and_check_commands",
    'kedro run --pipeline=restore --params="restore.input_dir=photos,restore.tile_size=512,restore.vae_tile_size=512"': E2E  # noqa: E501
    + "test_evaluate_restore_and_check_commands",
    "kedro run -c conf/run_small.yml": E2E + "test_evaluate_restore_and_check_commands",
    'kedro run -c conf/run_small.yml --pipeline=restore --params="restore.input_dir=my_photos"': E2E
    + "test_evaluate_restore_and_check_commands",
    "accelerate launch --multi_gpu --num_processes 2 -m fluxir.fluxgen score -c conf/run_small.yml": E2E
    + "test_evaluate_restore_and_check_commands",
    # the tiny environment
    'kedro run --env=tiny --pipeline=fluxgen --params="fluxgen.num_images=50"': E2E + "test_tiny_commands",
    "kedro run --env=tiny --pipeline=fluxgen": E2E + "test_tiny_commands",
    'kedro run --env=tiny --pipeline=fluxgen --params "degrade.config.crop_sizes=[[64,48],[48,48]]" '
    '--params "iqa.metrics=[entropy, piqe]"': E2E + "test_tiny_commands",
    "kedro run --env=tiny --pipeline=train": "tests/training/test_training.py::test_kedro_train_pipeline_saves_adapter_and_logs_to_mlflow",  # noqa: E501
}

SKIP: list[tuple[str, str]] = [
    (
        r"^python -m fluxir\.fetch\b|^HF_HUB_OFFLINE=0 python -m fluxir\.fetch\b",
        "run offline (downloads as --dry-run) by tests/pipelines/test_docs.py::test_documented_fetch_commands_run",
    ),
    (r"^(HF_HUB_OFFLINE=0 )?(hf|huggingface-cli) download ", "downloads from the hub: no network in tests"),
    (r"^curl ", "downloads a weight file: no network in tests (the layout is tested with fixture files)"),
    (
        r"^make (demo|test|lint)\b|^scripts/setup\.sh",
        "creates the virtualenv / runs the whole suite or the linter: CI runs it",
    ),
    (
        r"^make (app|mlflow|viz)\b|^mlflow server |^python -m http\.server ",
        "a server that runs until stopped (test_app.py, test_viz.py, test_mlflow_tracking.py start and stop their own)",
    ),
    (
        r"restore\.quantize=|restore\.offload=",
        "the plain restore command with a low-memory mode; tests/restoration/test_restore_lowmem.py runs every mode",
    ),
    (
        r"--num_processes 8 -m fluxir\.training --params train\.batch_size=\d",
        "batch 4 per process on 8 GPUs (80 GB each); the same launch with 2 processes runs in test_training_commands",
    ),
    (
        r"-m fluxir\.(evaluation|restoration)\b",
        (
            "the entry point the evaluate / restore nodes launch for *.num_processes > 1; "
            "tests/pipelines/test_multiprocess.py runs both on 2 processes (tiny)"
        ),
    ),
    (
        r"restore\.method=(flux_controlnet|realesrgan)",
        "a public baseline restorer: its weights are not in the base fixtures; test_public_restorers.py runs both",
    ),
    (
        r"\$FLUXIR_PARAMS",
        (
            "a line of the SLURM scripts (they set FLUXIR_PARAMS); "
            "test_multiprocess.py::test_slurm_scripts_on_two_nodes_make_the_same_dataset runs them"
        ),
    ),
    (
        r"-m fluxir\.training latents$",
        (
            "the latent cache before training, not in the base end-to-end run: tests/training/test_latents.py runs "
            "python -m fluxir.training latents (tiny) and its 2-process shards"
        ),
    ),
    (
        r"^python -m fluxir\.training$",
        "the training of `kedro run --pipeline=train` outside Kedro: test_training.py runs python -m fluxir.training",
    ),
    (
        r"--params=\"train\.adapter\.rank=16\"",
        "the compare workflow's second adapter: the train pipeline as in test_training_commands, another rank "
        "(tests/models/test_adapter.py builds every rank)",
    ),
    (
        r"^kedro run --env=tiny --pipeline=restore --params=restore\.input_dir=data/01_raw/benchmarks_demo/",
        "the README's tiny restore example: its test is part of the run-time work (wp-runtime, issue 27), not of "
        "this checkout; move it to RUN with that test's name",
    ),
    (r"--load-versions=fluxir_adapter:<version>", 'a template (<version>, "..."): Kedro\'s own --load-versions'),
    (r"^kedro viz ", "kedro-viz's own server / static build (tests/pipelines/test_viz.py builds it)"),
    (
        r"^kedro run --pipeline=export --params=\"export\.push_to_hub=true",
        "uploads to the Hugging Face Hub: no network in tests (tests/pipelines/test_export.py pushes to a file:// "
        "endpoint)",
    ),
    (
        r"^kedro run --pipeline=export_adapter$",
        "needs a trained and evaluated adapter (kedro run); tests/models/test_adapter_pretrained.py runs its node",
    ),
]


def _block_lines(text: str) -> list[str]:
    lines, in_bash = [], False
    for raw in re.sub(r"\\\n\s*", " ", text).splitlines():
        if raw.lstrip().startswith("```"):
            in_bash = not in_bash and raw.strip() == "```bash"
            continue
        if in_bash:
            lines.append(raw)
    return lines


def _without_comment(line: str) -> str:
    """Cut a trailing ``# ...`` (outside quotes) and squeeze spaces."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            line = line[:i]
            break
    return " ".join(line.split())


def documented_commands() -> dict[str, list[str]]:
    """``{command: [pages it appears on]}`` for every user command in a bash block of README.md and docs/."""
    found: dict[str, list[str]] = {}
    for page in PAGES:
        for line in _block_lines(page.read_text()):
            command = _without_comment(line)
            if PROGRAMS.match(command):
                found.setdefault(command, []).append(page.name)
    return found


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in SKIP if re.search(pattern, command)), None)


def documented(command: str) -> str:
    """``command`` after checking it is still documented (a test running a stale command fails here)."""
    assert command in documented_commands(), f"not (or no longer) documented in README.md/docs: {command}"
    assert command in RUN, f"add {command!r} to RUN in tests/doc_commands.py"
    return command


def uncovered() -> list[str]:
    """Documented commands that no test runs and no SKIP pattern explains, with where they appear."""
    return [
        f"{command}   ({', '.join(pages)})"
        for command, pages in documented_commands().items()
        if command not in RUN and skip_reason(command) is None
    ]


def stale() -> list[str]:
    """RUN entries no longer documented, and SKIP patterns matching no documented command."""
    commands = documented_commands()
    return [f"RUN: {c}" for c in RUN if c not in commands] + [
        f"SKIP: {p}" for p, _ in SKIP if not any(re.search(p, c) for c in commands)
    ]


def runner_exists(target: str) -> bool:
    """``tests/<file>.py::<name>``: the file defines that test (or fixture) and names the command it runs."""
    file, _, name = target.partition("::")
    path = REPO / file
    return (
        path.is_file() and re.search(rf"^(async )?def {re.escape(name)}\(", path.read_text(), re.MULTILINE) is not None
    )
