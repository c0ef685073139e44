"""One source for every default: a value in conf/base is not written a second time as a Python default.

Read from the source (``ast``, nothing imported): every default of a function parameter, a dataclass
field or a ``params.get("key", default)`` in src/ is compared with every leaf of conf/base's parameters.
The same name with the same value in both is a second copy that can drift from the YAML: there must be none.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fluxir.parameters.config import load_params

from conftest import REPO

# None, flags, 0/1 and empty values say "off" or "none" far more often than they copy a setting.
TOO_COMMON = (None, True, False, 0, 1, "", ())


def yaml_leaves(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from yaml_leaves(v, str(k))
    elif key:
        yield key, _plain(node)


def _plain(value: Any) -> Any:
    """Lists as tuples (YAML has no tuples); None for what cannot be compared (dicts)."""
    if isinstance(value, (list, tuple)):
        items = tuple(_plain(v) for v in value)
        return None if None in items and None not in value else items
    return value if isinstance(value, (bool, int, float, str)) else None


def python_defaults(src: Path) -> Iterator[tuple[str, str, Any]]:
    """(file, name, value) of every literal default under ``src``: function parameters, class-level fields and
    ``mapping.get("name", default)``."""
    for path in sorted(src.rglob("*.py")):
        rel = str(path.relative_to(src.parent))
        for node in ast.walk(ast.parse(path.read_text())):
            pairs: list[tuple[str, ast.expr]] = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs += list(zip([a.arg for a in positional[len(positional) - len(args.defaults) :]], args.defaults))
                pairs += [(a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                pairs.append((node.args[0].value, node.args[1]))  # params.get("key", default)
            elif isinstance(node, ast.ClassDef):
                pairs += [
                    (s.target.id, s.value)
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None
                ]
            for name, expr in pairs:
                try:
                    value = _plain(ast.literal_eval(expr))
                except ValueError:
                    continue  # not a literal (a call, a name): nothing to compare
                yield rel, name, value


def duplicates(src: Path = REPO / "src") -> set[tuple[str, str]]:
    base = load_params("base", [], REPO)
    leaves: dict[str, set[Any]] = {}
    for key, value in yaml_leaves(base):
        if value not in TOO_COMMON:
            leaves.setdefault(key, set()).add(value)
    return {
        (file, name)
        for file, name, value in python_defaults(src)
        if value not in TOO_COMMON and value in leaves.get(name, set())
    }


def test_no_default_is_written_in_conf_base_and_in_python():
    found = sorted(duplicates())
    assert not found, f"defaults written in conf/base and again in Python (delete the Python one): {found}"


def test_the_check_finds_a_copy(tmp_path):
    """A dataclass field or a parameter defaulting to a conf/base value is reported (the check can fail)."""
    assert not [d for d in python_defaults(REPO / "src") if d[1] == "part_size"]  # iqa.part_size: conf/base only
    src = tmp_path / "src"
    src.mkdir()
    (src / "probe.py").write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass Probe:\n    part_size: int = 1024\n\n\n"
        'def score(images, iqa, *, loader_workers=2, other=7):\n    return iqa.get("batch_size", 2)\n'
    )
    found = {("src/probe.py", "part_size"), ("src/probe.py", "loader_workers"), ("src/probe.py", "batch_size")}
    assert duplicates(src) == found
