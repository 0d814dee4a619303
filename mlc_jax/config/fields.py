"""Typed config sections: every key's default, help text and check declared once, in one dataclass field.

A section is a frozen dataclass whose fields are made with `field(default, help, check)`. `Section.defaults()`
gives the plain dict that `base_config()` puts into the user-facing `ConfigDict`; `Section.parse(node, key)`
turns that section of a (possibly overridden) ConfigDict back into the typed dataclass, checking each value's
type and range and raising a one-line `ConfigError` that names the key (`optim.clip_norm=-1.0 must be > 0`).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

Check = Callable[[Any], "str | None"]  # returns what is wrong with a value, or None


class ConfigError(ValueError):
  """A config problem; the message names the key."""


def field(default, help: str, check: Check | None = None):
  """A section field: its default, a one-line help text and an optional check of its value."""
  if isinstance(default, (list, dict)):
    raise TypeError("section defaults must be immutable (use a tuple)")
  return dataclasses.field(default=default, metadata={"help": help, "check": check})


# ------------------------------------------------------------------------------------------------- checks
def _number_check(ok: Callable[[float], bool], text: str) -> Check:
  def check(value):
    return None if ok(value) else f"must be {text}"
  check.text = text
  return check


def positive() -> Check:
  return _number_check(lambda v: v > 0, "> 0")


def non_negative() -> Check:
  return _number_check(lambda v: v >= 0, ">= 0")


def at_least(low: float) -> Check:
  return _number_check(lambda v: v >= low, f">= {low}")


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
  """`low <= v <= high`, with either end excluded when open."""
  above = (lambda v: v > low) if low_open else (lambda v: v >= low)
  below = (lambda v: v < high) if high_open else (lambda v: v <= high)
  return _number_check(lambda v: above(v) and below(v), f"in {'(' if low_open else '['}{low}, {high}"
                       f"{')' if high_open else ']'}")


def one_of(choices: Sequence[str] | Callable[[], Sequence[str]]) -> Check:
  """The value is one of `choices` (a sequence, or a function giving it when the check runs)."""
  def check(value):
    allowed = tuple(choices() if callable(choices) else choices)
    return None if value in allowed else f"is not one of {', '.join(map(str, allowed))}"
  return check


def each(check: Check) -> Check:
  """Every element of a sequence passes `check`."""
  def run(values):
    for v in values:
      problem = check(v)
      if problem:
        return f"has an element {v!r} that {problem}"
    return None
  return run


# ----------------------------------------------------------------------------------------------- sections
def _type_name(t) -> str:
  return getattr(t, "__name__", str(t))


def _coerce(value, expected, key: str):
  """`value` as the annotated type `expected` (int, float, bool, str, tuple[...] or a union of them)."""
  origin = typing.get_origin(expected)
  if origin in (typing.Union, types.UnionType):
    for option in typing.get_args(expected):
      try:
        return _coerce(value, option, key)
      except ConfigError:
        continue
    raise ConfigError(f"{key}={value!r}: expected {' or '.join(_type_name(t) for t in typing.get_args(expected))}")
  if expected is Any:
    return value
  if origin is tuple or expected is tuple:
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"{key}={value!r}: expected a tuple, got {type(value).__name__}")
    args = typing.get_args(expected)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    return tuple(tuple(v) if isinstance(v, list) else v for v in value)
  if expected is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{key}={value!r}: expected True or False, got {type(value).__name__}")
    return value
  if expected is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{key}={value!r}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
      raise ConfigError(f"{key}={value!r} must be a finite number")
    return float(value)
  if expected is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{key}={value!r}: expected an integer, got {type(value).__name__}")
    return value
  if expected is str:
    if not isinstance(value, str):
      raise ConfigError(f"{key}={value!r}: expected a string, got {type(value).__name__}")
    return value
  raise TypeError(f"{key}: unsupported field type {expected!r}")


@dataclasses.dataclass(frozen=True)
class Section:
  """Base of the typed config sections; subclasses are frozen dataclasses of `field(...)`s."""

  @classmethod
  def defaults(cls) -> dict[str, Any]:
    """`{name: default}` of every field (what `base_config()` holds for this section)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}

  @classmethod
  def help(cls) -> dict[str, str]:
    """`{name: help text}` of every field, the check appended where it has a text."""
    out = {}
    for f in dataclasses.fields(cls):
      check = f.metadata.get("check")
      out[f.name] = f.metadata["help"] + (f" ({check.text})" if hasattr(check, "text") else "")
    return out

  @classmethod
  def parse(cls, node, key: str):
    """The typed section from a ConfigDict/dict node whose keys are this section's fields; errors name `key.X`."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
      name = f"{key}.{f.name}" if key else f.name
      if f.name not in node:
        raise ConfigError(f"config key {name!r} is missing")
      value = _coerce(node[f.name], hints[f.name], name)
      check = f.metadata.get("check")
      problem = check(value) if check else None
      if problem:
        raise ConfigError(f"{name}={value!r} {problem}")
      values[f.name] = value
    section = cls(**values)
    section.check(key)
    return section

  def check(self, key: str) -> None:
    """Checks across this section's fields (after each field's own); raise `ConfigError` naming `key.X`."""
