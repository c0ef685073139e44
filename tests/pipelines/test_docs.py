"""The documentation: builds with `mkdocs build --strict`, covers every parameter, names only real ones,
and what it tells users to type or download matches the code."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import runpy
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from conftest import REPO

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MY_PAGES = (
    "index.md",
    "architecture.md",
    "full_scale.md",
    "parameters.md",
    "training.md",
    "evaluation.md",
    "restoration.md",
    "tracking.md",
    "troubleshooting.md",
)
README_MAX_LINES = 150
DOCS_MAX_LINES = 1800  # every page of docs/ together
SHARING_BUDGET = 120  # docs/sharing.md's share of DOCS_MAX_LINES while it is not in this checkout


def _params() -> dict:
    merged: dict = {}
    for path in sorted((REPO / "conf" / "base").glob("parameters*.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def _dataclass_fields(module: Path, cls: str) -> set[str]:
    """Field names of a dataclass, read from the source (importing it would pull in torch)."""
    tree = ast.parse(module.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def _pipelines() -> list[str]:
    return sorted(p.parent.name for p in (REPO / "src" / "fluxir" / "pipelines").glob("*/pipeline.py"))


@pytest.mark.starts_process("mkdocs build --strict as `make docs` runs it: its theme and plugins load in a process")
def test_mkdocs_builds_strict(tmp_path):
    """Broken links, anchors, nav entries or missing pages (training.md, evaluation.md) fail the build."""
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    in_nav = {next(iter(item.values())) for item in nav}
    assert {page.name for page in PAGES} <= in_nav, "every page is in the navigation"
    assert {"training.md", "evaluation.md"} <= in_nav
    assert (site / "img" / "architecture.svg").is_file()
    assert 'src="img/architecture.svg"' in (site / "architecture.html").read_text()
    assert not (site / "img" / "architecture.py").exists(), "the drawing script is not published"


def test_every_parameter_is_documented():
    text = (DOCS / "parameters.md").read_text()
    documented = set(re.findall(r"`([A-Za-z0-9_.<>+-]+)`", text))
    missing = []
    for key in _leaves(_params()):
        parts = key.split(".")
        # exact, or with one segment written as a placeholder: evaluate.benchmarks.<benchmark>.hq_dir
        variants = {key} | {".".join(parts[:i] + ["<"] + parts[i + 1 :]) for i in range(1, len(parts))}
        normalised = {re.sub(r"<[^>]+>", "<", d) for d in documented}
        if not variants & normalised:
            missing.append(key)
    assert not missing, f"docs/parameters.md does not explain: {missing}"


def _node_names() -> set[str]:
    """``<pipeline>.<node>`` for every node named with a plain string in ``pipelines/<pipeline>/pipeline.py``."""
    return {
        f"{folder.name}.{name}"
        for folder in (REPO / "src/fluxir/pipelines").iterdir()
        if (folder / "pipeline.py").is_file()
        for name in re.findall(r'name="([^"]+)"', (folder / "pipeline.py").read_text())
    }


def _catalog_runtime_params() -> set[str]:
    """The runtime params that conf/base's catalog entries read (``${runtime_params:restore.input_dir, ...}``)."""
    text = "".join(p.read_text() for p in (REPO / "conf" / "base").glob("catalog*.yml"))
    return set(re.findall(r"\$\{runtime_params:\s*([A-Za-z0-9_.]+)", text))


def test_docs_name_only_parameters_that_exist():
    """A backticked `group.key...` in any page must be a real key (stale docs fail here)."""
    params = _params()
    extra = {  # fields settable below a YAML key without being in the YAML file
        ("train", "adapter"): _dataclass_fields(REPO / "src/fluxir/models/adapter_config.py", "FluxIRConfig"),
    }
    not_parameters = {
        "select.n_scored",
        "select.n_kept",
        "select.kept_fraction",
        "select.threshold.<metric>",
        "select.threshold.clipiqaplus_vitL14_512",
    }  # MLflow metrics
    not_parameters |= _node_names()  # `fluxgen.generate_images`: a node of the namespace fluxgen
    not_parameters |= _catalog_runtime_params()  # `restore.input_dir`: read by the catalog entry restore_input
    groups = "|".join(map(re.escape, params))
    pattern = re.compile(rf"`({groups})\.([A-Za-z0-9_.<>]+?)[`= ]")
    unknown = []
    for page in PAGES:
        for match in pattern.finditer(page.read_text()):
            parts = [match.group(1), *match.group(2).rstrip(".").split(".")]
            if ".".join(parts) in not_parameters:
                continue
            node, path_ok = params, True
            for depth, part in enumerate(parts):
                if part.startswith("<") and isinstance(node, dict):  # placeholder: the keys of any entry
                    node = {k: v for child in node.values() if isinstance(child, dict) for k, v in child.items()}
                    continue
                if isinstance(node, dict) and part in node:
                    node = node[part]
                    continue
                allowed = extra.get(tuple(parts[:depth]))
                path_ok = allowed is not None and part in allowed and depth == len(parts) - 1
                break
            if not path_ok:
                unknown.append(f"{page.name}: {'.'.join(parts)}")
    assert not unknown, f"documented parameters that do not exist: {sorted(set(unknown))}"


def test_architecture_picture_shows_every_pipeline_and_the_adapter():
    svg = DOCS / "img" / "architecture.svg"
    root = ET.parse(svg).getroot()  # well-formed XML
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for name in _pipelines():
        assert name in texts, f"pipeline {name} is not in docs/img/architecture.svg"
    for node in (
        "generate_images",
        "score_images",
        "select_by_iqa",
        "degrade_pairs",
        "train_adapter",
        "restore_images",
        "FluxIR adapter",
        "squeeze-excitation",
        "Flux.1-dev transformer (frozen)",
    ):
        assert node in texts
    for page in ("index.md", "architecture.md"):
        assert "(img/architecture.svg)" in (DOCS / page).read_text()
    # the committed picture is what the drawing script draws
    drawn = runpy.run_path(str(DOCS / "img" / "architecture.py"), run_name="architecture")["SVG"]
    assert drawn == svg.read_text(), "run `python docs/img/architecture.py` and commit the SVG"


def test_full_scale_commands_and_weight_files_match_the_code():
    text = (DOCS / "full_scale.md").read_text()
    assert (
        "accelerate launch --multi_gpu --num_processes N -m fluxir.fluxgen generate \\\n"
        "    --params fluxgen.num_images=350000"
    ) in text
    from fluxir.iqa import required_weight_files  # stdlib + numpy only at import

    metrics = [*_params()["iqa"]["metrics"], *_params()["evaluate"]["metrics"]["full_reference"].values()]
    for metric in metrics:
        for path in required_weight_files(metric):
            relative = "/".join(path.parts[-3:])  # hub/<folder>/<file>
            assert f"`{relative}`" in text, f"{metric}: {relative} is not in the weight table"
            assert f"-o $W/{relative} " in text, f"{metric}: no download line for {relative}"
    for section in ("Flux weights", "IQA weight files", "Data sets", "Several GPUs", "Memory, time and disk"):
        assert re.search(rf"^## \d\. {section}", text, re.MULTILINE), section


def test_troubleshooting_covers_the_common_failures():
    text = (DOCS / "troubleshooting.md").read_text()
    headings = [h.lower() for h in re.findall(r"^## (.+)$", text, re.MULTILINE)]
    for topic in ("out of gpu memory", "tile seams", "colour shift", "functional_tensor"):
        assert any(topic in h for h in headings), topic
    assert "No module named 'torchvision.transforms.functional_tensor'" in text


@pytest.mark.starts_process("the snippet must import basicsr in a fresh interpreter, as a user's script does")
def test_troubleshooting_basicsr_workaround_runs():
    """The snippet users copy for the basicsr import error really imports basicsr on this torchvision."""
    text = (DOCS / "troubleshooting.md").read_text()
    section = text[text.index("functional_tensor'` (basicsr)") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    proc = subprocess.run(
        [sys.executable, "-c", snippet + "\nprint('ok', basicsr.__version__)"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]


def test_index_links_every_page():
    text = (DOCS / "index.md").read_text()
    for page in PAGES:
        if page.name != "index.md":
            assert f"]({page.name})" in text, f"docs/index.md does not link {page.name}"
    for target in ("training.md", "evaluation.md"):
        assert f"]({target})" in text
    for page in MY_PAGES:
        assert (DOCS / page).read_text().startswith("# "), f"{page}: one title per page"


def _fetch_commands() -> list[str]:
    """Every ``python -m fluxir.fetch ...`` in README.md and docs/: code-block lines (environment prefix and
    comment removed) and inline code spans."""
    found = []
    for page in [REPO / "README.md", *PAGES]:
        in_block = False
        for line in page.read_text().splitlines():
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            spans = [line.split("#")[0]] if in_block else re.findall(r"`([^`]+)`", line)
            found += [
                span[span.index("python -m fluxir.fetch") :].strip()
                for span in spans
                if "python -m fluxir.fetch" in span
            ]
    return found


def test_the_weights_and_datasets_sections_start_with_the_fetch_command():
    for page, heading in (("full_scale.md", "## 1. Flux weights"), ("evaluation.md", "## The benchmarks")):
        text = (DOCS / page).read_text()
        section = text[text.index(heading) :]
        first_block = section[section.index("```") :].split("```")[1]
        assert "python -m fluxir.fetch" in first_block, f"{page}: {heading} does not start with the fetch command"
    assert "python -m fluxir.fetch" in (REPO / "README.md").read_text()


def test_documented_fetch_commands_run(tmp_path, no_network, capsys):
    """Each documented command as typed, offline: --list prints the manifest; a download becomes --dry-run."""
    import shlex

    from fluxir.fetch.__main__ import main as fetch_main

    from conftest import make_project_copy

    project = make_project_copy(tmp_path / "project")
    commands = _fetch_commands()
    assert len(commands) >= 5 and any("--list" in c for c in commands) and any("--mirror" in c for c in commands)
    for command in commands:
        args = shlex.split(command)[3:]
        if "--list" not in args and "--dry-run" not in args:
            args.append("--dry-run")  # what it would download: nothing is fetched in a test
        assert fetch_main([*args, "--project", str(project)]) == 0, command
        out = capsys.readouterr().out
        assert "FLUX.1-dev" in out or "--only" in command, command
        assert ("StableSR_testsets.zip" in out) == ("--only" not in command or "benchmarks" in command), command


def test_every_documented_command_is_run_or_skipped():
    """Each command a user types from README.md / docs/ (bash blocks) is run by a named test or skipped with a
    reason; tests/doc_commands.py says how to cover a new one. Stale entries fail as well."""
    from doc_commands import RUN, runner_exists, stale, uncovered

    missing = uncovered()
    assert not missing, (
        "documented commands no test runs; run each from a test and add it to RUN in "
        "tests/doc_commands.py, or add a SKIP pattern with the reason:\n" + "\n".join(missing)
    )
    assert not stale(), f"entries in tests/doc_commands.py that match no documented command: {stale()}"
    absent = sorted({target for target in RUN.values() if not runner_exists(target)})
    assert not absent, f"RUN names tests that do not exist: {absent}"
    for command, target in RUN.items():
        source = (REPO / target.partition("::")[0]).read_text()
        strings = {
            n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }  # noqa: E501
        assert command in strings or f"`{command}`" in source, (
            f"{target.partition('::')[0]} does not quote {command!r}: the test that runs it names it verbatim"
        )


def test_node_names_in_docs_carry_their_namespace():
    """`--to-nodes=generate_images` fails ("Pipeline does not contain nodes named"): nodes are `fluxgen.<name>`."""
    nodes = _node_names()
    bare = {name.split(".", 1)[1] for name in nodes}
    wrong = []
    for page in [REPO / "README.md", *PAGES]:
        for match in re.finditer(r"--(?:to-|from-)?nodes[= ]([\w.,]+)", page.read_text()):
            wrong += [
                f"{page.name}: {n}" for n in match.group(1).split(",") if n in bare or (n not in nodes and "." in n)
            ]  # noqa: E501
    assert not wrong, f"node names without their pipeline namespace (or unknown): {wrong}"


# ---- messages quoted in the docs ------------------------------------------------------------------------------
# The convention: a message of this project (an error, a warning, a log line) quoted in README.md or docs/*.md
# stands alone in a fenced ```text block, exactly as the code writes it; the lines of a block are one message
# (joined with a space), and `...` marks a part left out. Values the code fills in (a path, a count) appear as
# a user would see them (`64`, `<folder>`). Other people's messages (a torch traceback) go in a plain ``` block.

_PLACEHOLDER = object()
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-+ #0]*\d*(?:\.\d+)?[sdifgGeExXr]")
_FORMAT_FIELD = re.compile(r"\{[^{}]*\}")
MIN_LITERAL_CHARS = 15  # a template with less fixed text (f"{a}: {b}") would match any quote


def _template_tokens(node: ast.AST) -> list | None:
    """A string literal or f-string of the source as tokens: characters and ``_PLACEHOLDER`` (an f-string field,
    a ``%s``-style or ``{}``-style field of a logging / ``str.format`` template)."""
    parts: list = []
    values = node.values if isinstance(node, ast.JoinedStr) else [node]
    for value in values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            text, pos = value.value, 0
            for field in re.finditer(f"{_PRINTF.pattern}|{_FORMAT_FIELD.pattern}", text):
                parts += list(text[pos : field.start()]) + [_PLACEHOLDER]
                pos = field.end()
            parts += list(text[pos:])
        else:
            parts.append(_PLACEHOLDER)
    tokens: list = []
    for part in parts:  # a line break or indent of the code's text reads as one space in a quote
        if part is _PLACEHOLDER or not part.isspace():
            tokens.append(part)
        elif not tokens or tokens[-1] != " ":
            tokens.append(" ")
    literal = sum(1 for p in tokens if p is not _PLACEHOLDER and p != " ")
    return tokens if literal >= MIN_LITERAL_CHARS else None


def _source_templates() -> list[list]:
    templates = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                tokens = _template_tokens(node)
                if tokens:
                    templates.append(tokens)
    return templates


def _fragment_ends(fragment: str, tokens: list, starts: set[int]) -> set[int]:
    """Positions in ``tokens`` where ``fragment`` can end when it starts at one of ``starts``: a character
    token matches itself, a placeholder one or more characters (a fragment may begin or end inside one)."""
    current = {(j, False) for j in starts} | {
        (j, True) for j in starts if j < len(tokens) and tokens[j] is _PLACEHOLDER
    }
    for char in fragment:
        following = set()
        for j, inside in current:
            if inside:
                following.add((j, True))  # the placeholder takes this character too
                j += 1  # ... or it has ended before it
            if j < len(tokens):
                if tokens[j] is _PLACEHOLDER:
                    following.add((j, True))
                elif tokens[j] == char:
                    following.add((j + 1, False))
        current = following
        if not current:
            return set()
    return {j + 1 if inside else j for j, inside in current}


def quote_matches(quote: str, tokens: list) -> bool:
    """``quote`` (``...`` = left out) is what the template ``tokens`` writes for some values: its fragments
    appear in order, the first at the template's start unless the quote begins with ``...``, the last at its
    end unless the quote ends with ``...``."""
    fragments = quote.split("...")
    starts = {0}
    for i, fragment in enumerate(fragments):
        if i > 0:  # an ellipsis: the next fragment may start anywhere later
            starts = set(range(min(starts), len(tokens) + 1))
        if fragment:
            starts = _fragment_ends(fragment, tokens, starts)
            if not starts:
                return False
    return fragments[-1] == "" or len(tokens) in starts


def quoted_messages() -> list[tuple[str, str]]:
    """``(page, message)`` for every ```text block of README.md and docs/*.md."""
    found = []
    for page in [REPO / "README.md", *PAGES]:
        for block in re.findall(r"^```text\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL):
            found.append((page.name, " ".join(block.split())))
    return found


def test_messages_quoted_in_the_docs_are_the_codes():
    quotes = quoted_messages()
    pages = {page for page, _ in quotes}
    assert len(quotes) >= 8 and {"troubleshooting.md", "training.md", "evaluation.md"} <= pages, quotes
    templates = _source_templates()
    unknown = [f"{page}: {quote}" for page, quote in quotes if not any(quote_matches(quote, t) for t in templates)]
    assert not unknown, "quoted messages that no string in src/ writes (fix the quote or the code):\n" + "\n".join(
        unknown
    )


def test_a_changed_word_or_a_value_in_fixed_text_fails_the_quote_check():
    """The matcher itself: placeholders take any value, the fixed text must be the code's, word for word."""
    tokens = _template_tokens(
        ast.parse('f"train.global_batch={g} cannot be split into {n} process(es): {fix}"').body[0].value
    )
    assert quote_matches("train.global_batch=64 cannot be split into 3 process(es): use 2", tokens)
    assert quote_matches("train.global_batch=64 cannot be split into ...", tokens)
    assert quote_matches("... into 3 process(es): use 2", tokens)
    assert not quote_matches("train.global_batch=64 can not be split into 3 process(es): use 2", tokens)
    assert not quote_matches("train.global_batch=64 cannot be split into 3 processes: use 2", tokens)
    assert not quote_matches("train.global_batch=64 cannot be split into", tokens)  # the end is missing
    logged = _template_tokens(
        ast.parse('"skipping damaged checkpoint %s: %s; resuming from an older one"').body[0].value
    )
    assert quote_matches("skipping damaged checkpoint run/step_2: a: 1 bytes; resuming from an older one", logged)
    assert not quote_matches("skipping damaged checkpoint run/step_2; resuming from the older one", logged)


# ---- one path: the environment rule and the length of the docs ------------------------------------------------


def test_no_documented_command_passes_env_base():
    """Every command reads the default env (conf/base + the user's conf/local); `--env base` would drop
    conf/local, so a user command never passes it (the README states the rule once)."""
    from doc_commands import documented_commands

    with_base = [c for c in documented_commands() if re.search(r"--env[= ]base\b", c)]
    assert not with_base, with_base
    from doc_commands import PROGRAMS

    inline = [
        f"{page.name}: {span}"
        for page in [REPO / "README.md", *PAGES]
        for span in re.findall(r"`([^`]+)`", page.read_text())
        if PROGRAMS.match(span) and re.search(r"--env[= ]base\b", span)
    ]
    assert not inline, inline
    readme = (REPO / "README.md").read_text()
    assert "conf/local" in readme and "Never pass `--env base`" in readme


def test_readme_and_docs_stay_within_their_length():
    readme = len((REPO / "README.md").read_text().splitlines())
    assert readme <= README_MAX_LINES, f"README.md has {readme} lines (at most {README_MAX_LINES})"
    docs = sum(len(page.read_text().splitlines()) for page in PAGES)
    if not (DOCS / "sharing.md").exists():
        docs += SHARING_BUDGET
    assert docs <= DOCS_MAX_LINES, f"docs/*.md have {docs} lines (at most {DOCS_MAX_LINES}): link, do not repeat"


def test_readme_gives_the_real_run_in_order():
    """The README's real run: licence and token, fetch, check, then fluxgen -> train -> evaluate, in one block,
    with the expected hours next to it taken from the cost plan (benchmarks/gpu_cost.py)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The real run on one GPU node") :]
    block = section[section.index("```bash") : section.index("```", section.index("```bash") + 3)]
    order = [
        "export HF_TOKEN=",
        "python -m fluxir.fetch",
        "python -m fluxir.preflight",
        "kedro run --pipeline=fluxgen",
        "kedro run --pipeline=train",
        "kedro run --pipeline=evaluate",
    ]
    positions = [block.find(step) for step in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions, strict=True))
    table = section[: section.index("## Restore your photos")]
    assert "conf/run_paper.yml" in table and "Table 1" in table
    # the hours are the cost plan's (8 x H100 at 40 % MFU): the paper's scale and the plain run's 280 steps
    spec = importlib.util.spec_from_file_location("gpu_cost", REPO / "benchmarks" / "gpu_cost.py")
    gpu_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_cost)
    flops = gpu_cost.stored_flops()
    paper = gpu_cost.cost_plan(8, "h100", 0.4, 48000, 96, flops)["stages"]
    plain = gpu_cost.cost_plan(8, "h100", 0.4, 280, 96, flops)["stages"]
    fluxgen = paper["generate"]["gpu_hours"] + paper["score"]["gpu_hours"]
    per_1000 = paper["generate"]["gpu_hours"] * 1000 / 350_000
    for figure in (
        f"{fluxgen:.1f} GPU-h; {paper['generate']['wall_hours'] + paper['score']['wall_hours']:.0f} h",
        f"{paper['train']['gpu_hours']:.1f} GPU-h; {paper['train']['wall_hours']:.1f} h",
        f"{plain['train']['gpu_hours']:.1f} GPU-h; {plain['train']['wall_hours']:.2f} h",
        f"{paper['evaluate']['gpu_hours']:.1f} GPU-h; {paper['evaluate']['wall_hours']:.2f} h",
        f"{per_1000:.1f} GPU-h; {per_1000 / 8:.1f} h",
    ):
        assert figure in table, figure
