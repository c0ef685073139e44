"""The one way a config checks its values: ``Config``, the base of every config dataclass, built by
``Cls.from_params(mapping)`` and checked once on construction, and its ``Rule`` rows (one field each).

"A positive integer, not a bool" is written once here (the check kinds more than one config uses); a check
only one config needs is a predicate in that config's rules or plain Python in its ``joint_problems``. Every
bad value of a config is reported at once in one ``ConfigError``, each message naming the parameter, the value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, Self

# How many processes run a stage (fluxir.runtime.launch): read by the node, never part of a config or its results.
LAUNCH_KEYS = ("num_processes",)


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


# kind -> (test(value, extra), wording(extra)) of "<field> must be <wording>": the kinds several configs use
CHECKS: dict[str, tuple[Callable[[Any, Any], bool], Callable[[Any], str]]] = {
    "positive_int": (lambda v, _: is_int(v, 1), lambda _: "a positive integer"),
    "nonneg_int": (lambda v, _: is_int(v, 0), lambda _: "an integer >= 0"),
    "integer": (lambda v, _: is_int(v), lambda _: "an integer"),
    "multiple_of": (lambda v, m: is_int(v, m) and v % m == 0, lambda m: f"a positive multiple of {m}"),
    "positive_number": (lambda v, _: is_number(v) and v > 0, lambda _: "a number > 0"),
    "number_at_least": (lambda v, low: is_number(v) and v >= low, lambda low: f"a number >= {low}"),
    "interval": (_in_interval, lambda interval: f"a number in {interval}"),
    "choice": (lambda v, options: v in options, lambda options: f"one of {tuple(options)}"),
    "text": (lambda v, _: isinstance(v, str) and bool(v.strip()), lambda _: "a non-empty string"),
}


@dataclass(frozen=True)
class Rule:
    """One row of a config's rules: ``field`` must pass ``CHECKS[kind]`` with ``extra``, or ``kind(value)`` when
    ``kind`` is a predicate (a check one config alone needs; ``must`` then says what it wants).

    ``nullable``: None is allowed too. ``must`` replaces the kind's wording (to cite the paper or give
    the reason); ``note`` follows the value in the message: a string, or a function of the value.
    """

    field: str
    kind: str | Callable[[Any], bool]
    extra: Any = None
    nullable: bool = False
    must: str | None = None
    note: str | Callable[[Any], str] = ""

    def __post_init__(self) -> None:
        if callable(self.kind) and self.must is None:
            raise ValueError(f"Rule {self.field!r}: a predicate needs `must`, the wording of what it accepts")
        if not callable(self.kind) and self.kind not in CHECKS:
            raise ValueError(f"Rule {self.field!r}: unknown kind {self.kind!r}; known: {sorted(CHECKS)}")

    def problem(self, value: Any, prefix: str) -> str | None:
        """The error message for ``value``, or None when it passes."""
        test, wording = (lambda v, _: self.kind(v), None) if callable(self.kind) else CHECKS[self.kind]
        if (value is None and self.nullable) or (value is not None and test(value, self.extra)):
            return None
        must = self.must or wording(self.extra) + (" or null" if self.nullable else "")
        note = self.note(value) if callable(self.note) else self.note
        return f"{prefix}{self.field} must be {must}, got {value!r}{note}"


def field_problems(values: Any, rules: Iterable[Rule], prefix: str) -> list[str]:
    """Every "<prefix><field> must be ..., got <value>" message of ``values`` (a dataclass or a mapping; a mapping
    is checked only on the keys it has)."""
    if isinstance(values, Mapping):
        return [m for rule in rules if rule.field in values and (m := rule.problem(values[rule.field], prefix))]
    return [m for rule in rules if (m := rule.problem(getattr(values, rule.field), prefix))]


def check_fields(values: Any, rules: Iterable[Rule], prefix: str) -> None:
    """Raise ``ConfigError`` listing every message of ``field_problems`` (for values that are no config's field,
    e.g. a function argument)."""
    raise_problems(field_problems(values, rules, prefix))


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
    ``joint_problems`` for checks of several fields (plain Python) and ``prepare`` for what YAML gives in
    another form (an unquoted ``no`` as false).
    """

    PREFIX: ClassVar[str] = ""
    RULES: ClassVar[tuple[Rule, ...]] = ()
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
        """Every problem of this config (empty: fine): its rules, then ``joint_problems``."""
        found = [(rule.field, m) for rule in self.RULES if (m := rule.problem(getattr(self, rule.field), self.PREFIX))]
        return [m for _, m in found] + self.joint_problems({field for field, _ in found})

    def joint_problems(self, failed: set[str]) -> list[str]:
        """Checks of several fields together; ``failed`` names the fields whose rules failed (reported already)."""
        return []
