"""No import circle in src/: a module never imports (directly or through others) a module that imports it.

Read from the source with ``ast``, nothing is imported. Every ``import`` statement counts, also those
inside functions and under ``if TYPE_CHECKING``: a lazy import only postpones a circle to the first call,
and an annotation-only one still means the two modules cannot be read one after the other. Importing a
sub-module runs its package's ``__init__`` first; that is how packages work, not an edge of the graph
(``from fluxir.iqa import weights`` is an edge to ``fluxir.iqa.weights``, not to ``fluxir.iqa``).
A command line's ``main()`` counts like any other function.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"


def module_names(src: Path) -> dict[str, Path]:
    names = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: one level is the package itself
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, base] if base else parents)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def import_graph(src: Path) -> dict[str, set[str]]:
    modules = module_names(src)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_finds_a_circle(tmp_path):
    """The checker itself: a three-module circle through a relative and a function-level import is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import x\n")
    (pkg / "a.py").write_text("from pkg import b\nx = 1\n")
    (pkg / "b.py").write_text("def f():\n    from .c import y\n")
    (pkg / "c.py").write_text("import pkg.a\ny = 2\n")
    (pkg / "d.py").write_text("from pkg.a import x\n")
    assert circles(import_graph(tmp_path)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_circle_in_src():
    found = circles(import_graph(SRC))
    assert not found, "import circles in src/ (break each by moving the shared code down a layer):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_training_loop_imports_the_rest_and_nothing_imports_it():
    graph = import_graph(SRC)
    loop = "fluxir.training.loop"
    importers = sorted(m for m, deps in graph.items() if loop in deps)
    assert importers == ["fluxir.pipelines.train.nodes", "fluxir.training.__main__"], importers
    entry_points = (loop, "fluxir.training.__main__", "fluxir.training.latents")  # latents: the step before training
    inside = {m for m in graph if m.startswith("fluxir.training.") and m not in entry_points}
    assert inside <= graph[loop] | {d for m in graph[loop] for d in graph[m]}


MAX_LINES = 500


def test_no_module_in_src_is_longer_than_500_lines():
    """A module tells one story: past MAX_LINES it holds several, and is split into modules named after them."""
    lengths = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in sorted(SRC.rglob("*.py"))}
    over = sorted(f"{name} ({n} lines)" for name, n in lengths.items() if n > MAX_LINES)
    assert not over, f"modules over {MAX_LINES} lines (split each into modules that tell one story each): {over}"


def runs_as_script(path: Path) -> bool:
    """The module has an ``if __name__ == "__main__":`` block."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name):
            if node.test.left.id == "__name__":
                return True
    return False


def test_python_m_commands_live_only_in_main_modules(tmp_path):
    """A library module is imported, never run: ``python -m`` commands are the packages' ``__main__.py``."""
    library = tmp_path / "library.py"
    library.write_text('def main():\n    pass\n\n\nif __name__ == "__main__":\n    main()\n')
    assert runs_as_script(library)  # the check sees such a block
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted((SRC / "fluxir").rglob("*.py"))
        if path.name != "__main__.py" and runs_as_script(path)
    ]
    assert not offenders, f"a python -m command outside a __main__.py: {offenders}"


def loaded_at_import(src: Path, start: str) -> set[str]:
    """Every top-level package that importing ``start`` loads: the module-level imports (not those in functions or
    under ``if TYPE_CHECKING``) of ``start``, of the packages above it and of every project module they reach."""
    modules = module_names(src)
    seen, todo, outside = set(), [start], set()
    while todo:
        name = todo.pop()
        parents = [".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)]
        todo += [p for p in parents if p in modules and p not in seen]
        if name in seen:
            continue
        seen.add(name)
        path = modules[name]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        body = ast.parse(path.read_text(), str(path)).body
        statements = [*body, *(n for b in body if isinstance(b, ast.Try) for n in b.body)]
        for node in statements:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parents, base] if base else parents)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            todo += [t for t in targets if t in modules]
            outside |= {t.split(".")[0] for t in targets if t not in modules}
    return outside


# What a process that needs no diffusion model loads: each of these costs seconds of start-up per process
# (diffusers ~4 s with the torch._dynamo, bitsandbytes and torchao it imports; basicsr with torchvision ~2 s).
LIGHT = {
    "fluxir.parameters.validation": {"diffusers", "basicsr", "pyiqa", "torch"},  # the check before the first node
    "fluxir.fluxgen.generate": {"diffusers", "transformers", "basicsr", "pyiqa"},  # the check's GenerationConfig
    "fluxir.fluxgen.pairs": {"diffusers", "basicsr", "pyiqa"},  # PairsStageConfig; the degradation loads per pair
    "fluxir.fluxgen.__main__": {"diffusers", "transformers", "basicsr"},  # the scoring and pairs ranks
    "fluxir.restoration.realesrgan": {"diffusers", "transformers"},
    "fluxir.evaluation.scores": {"diffusers", "transformers", "basicsr"},
}


def test_loaded_at_import_follows_module_level_imports_only(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import numpy\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from pkg import b\ntry:\n    import yaml\nexcept ImportError:\n    pass\n")
    (pkg / "b.py").write_text("import json\nif TYPE_CHECKING:\n    import torch\n\ndef f():\n    import diffusers\n")
    assert loaded_at_import(tmp_path, "pkg.sub.a") == {"numpy", "yaml", "json"}


def test_processes_that_need_no_model_do_not_load_its_libraries():
    found = {start: sorted(loaded_at_import(SRC, start) & heavy) for start, heavy in LIGHT.items()}
    found = {start: heavy for start, heavy in found.items() if heavy}
    assert not found, f"imported at module level (move the import into the function that needs it): {found}"
