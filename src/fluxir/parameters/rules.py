"""The one way a config class checks its values: a table of ``Rule`` rows (one field each) and ``Relation`` rows
(several fields together).

Every config class (``GenerationConfig``, ``DegradationConfig``, ``TrainConfig``, ``RestoreConfig``,
``FluxIRConfig``, ``BenchmarkSpec``, the public restorers' settings) lists its checks in one such table, so
"a positive integer, not a bool" is written once and every bad value of an object is reported at once,
each message naming the parameter, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, Self

from fluxir.parameters.config import LAUNCH_KEYS


def is_int(value: Any, minimum: int | None = None) -> bool:
    """``value`` is an integer (numpy's too; not a bool: YAML ``true`` is an int to Python), >= ``minimum`` if given."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def is_number(value: Any) -> bool:
    """An int or float, not a bool (comparisons reject NaN wherever a rule compares)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_interval(value: Any, interval: str) -> bool:
    """``value`` is a number in ``interval``, written as in mathematics: ``"(0, 1]"``, ``"[0, 1)"``."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return is_number(value) and above and below


def _is_size(value: Any) -> bool:
    """An int >= 1 (the longer side) or [width, height] of ints >= 1."""
    if isinstance(value, (list, tuple)):
        return len(value) == 2 and all(is_int(s, 1) for s in value)
    return is_int(value, 1)


def _is_distribution(value: Any, n: int) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == n
        and all(is_number(p) and p >= 0 for p in value)
        and math.isclose(sum(value), 1.0, abs_tol=1e-6)
    )


# kind -> (test(value, extra), wording(extra)) of "<field> must be <wording>"
CHECKS: dict[str, tuple[Callable[[Any, Any], bool], Callable[[Any], str]]] = {
    "positive_int": (lambda v, _: is_int(v) and v >= 1, lambda _: "a positive integer"),
    "nonneg_int": (lambda v, _: is_int(v) and v >= 0, lambda _: "an integer >= 0"),
    "int_at_least": (lambda v, low: is_int(v) and v >= low, lambda low: f"an integer >= {low}"),
    "integer": (lambda v, _: is_int(v), lambda _: "an integer"),
    "multiple_of": (lambda v, m: is_int(v) and v >= m and v % m == 0, lambda m: f"a positive multiple of {m}"),
    # extra (multiple, minimum): a tile side
    "multiple_at_least": (
        lambda v, mm: is_int(v) and v >= mm[1] and v % mm[0] == 0,
        lambda mm: f"a multiple of {mm[0]} >= {mm[1]}",
    ),
    "positive_number": (lambda v, _: is_number(v) and v > 0, lambda _: "a number > 0"),
    "number_at_least": (lambda v, low: is_number(v) and v >= low, lambda low: f"a number >= {low}"),
    "number_in": (lambda v, r: is_number(v) and r[0] <= v < r[1], lambda r: f"a number in [{r[0]}, {r[1]})"),
    "interval": (_in_interval, lambda interval: f"a number in {interval}"),
    "probability": (lambda v, _: is_number(v) and 0 <= v <= 1, lambda _: "a probability in [0, 1]"),
    "distribution": (_is_distribution, lambda n: f"{n} non-negative probabilities summing to 1"),
    "size": (lambda v, _: _is_size(v), lambda _: "an int (longer side) or [width, height] of positive ints"),
    "choice": (lambda v, options: v in options, lambda options: f"one of {tuple(options)}"),
    "choices": (
        lambda v, options: isinstance(v, (list, tuple)) and all(x in options for x in v),
        lambda options: f"a list of {tuple(options)}",
    ),
    "distinct_choices": (
        lambda v, options: (
            isinstance(v, (list, tuple))
            and bool(v)
            and all(isinstance(x, str) and x in options for x in v)
            and len(set(v)) == len(v)
        ),
        lambda options: f"a non-empty list of distinct names from {tuple(options)}",
    ),
    "auto_or_positive_int": (lambda v, _: v == "auto" or (is_int(v) and v >= 1), lambda _: "'auto' or an integer >= 1"),
    "text": (lambda v, _: isinstance(v, str) and bool(v.strip()), lambda _: "a non-empty string"),
    # [low, high] of numbers with 0 < low <= high; "range_to": also high <= extra; "range_around": low <= extra <= high
    "range": (lambda v, _: _is_range(v), lambda _: "[low, high] with 0 < low <= high"),
    "strict_range": (lambda v, _: _is_range(v) and v[0] < v[1], lambda _: "[low, high] with 0 < low < high"),
    "range_to": (lambda v, top: _is_range(v) and v[1] <= top, lambda top: f"[low, high] within (0, {top}]"),
    "range_around": (lambda v, c: _is_range(v) and v[0] <= c <= v[1], lambda c: f"[low, high] with low <= {c} <= high"),
    "odd_ints_in": (
        lambda v, r: (
            isinstance(v, (list, tuple)) and bool(v) and all(is_int(k) and k % 2 == 1 and r[0] <= k <= r[1] for k in v)
        ),
        lambda r: f"odd ints in [{r[0]}, {r[1]}]",
    ),
}


def _is_range(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(is_number(v) for v in value)
        and 0 < value[0] <= value[1]
    )


@dataclass(frozen=True)
class Rule:
    """One row of a config class's table: ``field`` must pass ``CHECKS[kind]`` with ``extra``.

    ``nullable``: None is allowed too. ``must`` replaces the kind's wording (to cite the paper or give
    the reason); ``note`` follows the value in the message: a string, or a function of the value.
    """

    field: str
    kind: str
    extra: Any = None
    nullable: bool = False
    must: str | None = None
    note: str | Callable[[Any], str] = ""

    def __post_init__(self) -> None:
        if self.kind not in CHECKS:
            raise ValueError(f"Rule {self.field!r}: unknown kind {self.kind!r}; known: {sorted(CHECKS)}")

    def problem(self, value: Any, prefix: str) -> str | None:
        """The error message for ``value``, or None when it passes."""
        test, wording = CHECKS[self.kind]
        if (value is None and self.nullable) or (value is not None and test(value, self.extra)):
            return None
        must = self.must or wording(self.extra) + (" or null" if self.nullable else "")
        note = self.note(value) if callable(self.note) else self.note
        return f"{prefix}{self.field} must be {must}, got {value!r}{note}"


@dataclass(frozen=True)
class Relation:
    """A row checking ``fields`` together: ``check(prefix, *values)`` returns its messages (none: fine).

    It runs only when each of its fields is present and passed its own rules, so a relation never reports a
    value that a rule has reported already, and its function may rely on the types the rules guarantee.
    """

    fields: tuple[str, ...]
    check: Callable[..., list[str]]


def field_problems(values: Any, rules: Iterable[Rule | Relation], prefix: str) -> list[str]:
    """Every "<prefix><field> must be ..., got <value>" message of ``values`` (a dataclass or a mapping).

    A mapping is checked only on the keys it has (the config class fills in or rejects the others).
    """
    is_mapping = isinstance(values, Mapping)
    present = (lambda name: name in values) if is_mapping else (lambda name: True)
    get = values.get if is_mapping else (lambda name: getattr(values, name))
    rules = list(rules)
    found: list[str] = []
    failed: set[str] = set()
    for rule in rules:
        if isinstance(rule, Rule) and present(rule.field) and (message := rule.problem(get(rule.field), prefix)):
            found.append(message)
            failed.add(rule.field)
    for rule in rules:
        if isinstance(rule, Relation) and all(present(f) and f not in failed for f in rule.fields):
            found += rule.check(prefix, *(get(f) for f in rule.fields))
    return found


class ConfigError(ValueError):
    """Bad parameter values; ``problems`` holds one message per value. With ``where`` (the run or command about
    to start) the message lists them as the run's refusal: nothing was run or written."""

    def __init__(self, problems: Iterable[str], where: str | None = None) -> None:
        self.problems = list(problems)
        if where is None:
            super().__init__("; ".join(self.problems))
            return
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} parameter problem(s) found before {where} started (nothing was run or written):"
            f"\n{lines}\n"
            "Fix them in conf/<env>/parameters_*.yml (folders: conf/<env>/catalog_*.yml) or with --params and run "
            "again."
        )


def raise_problems(problems: list[str], where: str | None = None) -> None:
    """Raise one ``ConfigError`` listing every problem (nothing happens when there is none)."""
    if problems:
        raise ConfigError(problems, where)


class Config:
    """The base of every config dataclass: ``Cls.from_params(mapping)`` builds one from its parameter group
    (unknown and missing keys refused, naming the valid ones); construction checks every value once and raises
    one ``ConfigError`` listing every problem.

    A subclass sets ``PREFIX`` (the group in messages, e.g. ``"train."``) and ``RULES``; it overrides
    ``problems`` for checks of several fields (plain Python, run once the fields passed their rules) and
    ``prepare`` for what YAML gives in another form (``1e-5`` as a string).
    """

    PREFIX: ClassVar[str] = ""
    RULES: ClassVar[tuple[Rule | Relation, ...]] = ()
    NOT_FIELDS: ClassVar[tuple[str, ...]] = ()  # keys of the group that other code reads (sub-groups, folders)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        group = cls.PREFIX.rstrip(".") or cls.__name__
        if not isinstance(params, Mapping):
            raise ConfigError(
                [f"parameter group {group!r} is missing or not a mapping (conf/base/parameters_*.yml defines it)"]
            )
        fields = [f for f in dataclasses.fields(cls) if f.init]
        known = sorted(f.name for f in fields)
        skipped = {*cls.NOT_FIELDS, *(set(LAUNCH_KEYS) - set(known))}  # launch settings: read by the node
        params = {k: v for k, v in params.items() if k not in skipped}
        problems = []
        if unknown := sorted(set(params) - set(known)):
            problems.append(f"unknown {group} parameter(s) {unknown}; known: {known}")
        required = [f.name for f in fields if f.default is MISSING and f.default_factory is MISSING]
        if missing := [name for name in required if name not in params]:
            problems.append(f"{group} lacks {missing}: conf/base's parameters files set every key")
        raise_problems(problems)
        return cls(**cls.prepare(params))

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def __post_init__(self) -> None:
        raise_problems(self.problems())

    def problems(self) -> list[str]:
        """Every "<prefix><field> must be ..., got <value>" message of this config (empty: fine)."""
        return field_problems(self, self.RULES, self.PREFIX)


def check_fields(values: Any, rules: Iterable[Rule | Relation], prefix: str) -> None:
    """Raise ``ConfigError`` listing every message of ``field_problems`` (for values that are no config's field,
    e.g. a function argument)."""
    raise_problems(field_problems(values, rules, prefix))
