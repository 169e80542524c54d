"""Frozen dataclasses that go to JSON and come back checked, by their type hints.

Two records cross process and release boundaries as JSON: a version's
``metadata.json`` (movierec_common.artifact.VersionMetadata, written by one
release of the trainer and read by any release of the recommender) and the
settings a model kind chose (trainer_service.kind_settings, read back for a
refit). Both want the same thing: a field is what its annotation says or the
record is refused with a message naming the field, never a ``KeyError`` or a
``float("x")`` deep inside a caller. So the reading and writing live here
once, and a record class states only its fields and two policies:

* ``UNKNOWN_FIELDS``: ``"refuse"`` (a typo or another kind's record is an
  error) or ``"keep"`` (a newer writer's field is kept in the record's
  ``extra`` mapping, written back as it was, and otherwise ignored);
* ``OMIT_NONE``: whether a field holding None is left out of the JSON.

A field the JSON lacks takes its declared default; one without a default is
an error. Types understood: ``str``, ``bool``, ``int`` (an integral float
such as ``3.0`` is read as 3), ``float`` (any real number but a bool),
``Any``, ``X | None`` and other unions (the first option the value fits),
``dict[str, X]``, ``tuple[X, ...]`` and fixed ``tuple[X, Y]`` (JSON lists),
nested records, and :data:`Figures` (a map of named numbers in which an
entry that is not a number is dropped rather than refused: a figure nobody
can compare or plot says nothing).
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np

_FIGURES = "figures: entries that are not numbers are dropped"
Figures = Annotated[dict[str, float], _FIGURES]

R = TypeVar("R", bound="JsonRecord")


class RecordError(ValueError):
    """JSON that is not the record it should be; the message names the field."""


class JsonRecord:
    """Base of the records: ``to_json`` and ``from_json`` by the dataclass fields' type hints.

    Subclasses are frozen dataclasses. With ``UNKNOWN_FIELDS = "keep"`` a
    subclass declares ``extra: dict[str, Any]`` to hold what it does not know.
    """

    UNKNOWN_FIELDS: ClassVar[Literal["refuse", "keep"]] = "refuse"
    OMIT_NONE: ClassVar[bool] = False

    @classmethod
    def from_json(cls: type[R], data: Any, where: str = "") -> R:
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise RecordError(f"{where} is not an object")
        # Subclasses are dataclasses; this base is not, so the stubs cannot know.
        fields = {item.name: item for item in dataclasses.fields(cls) if item.name != "extra"}  # type: ignore[arg-type]
        unknown = {name: value for name, value in data.items() if name not in fields}
        if unknown and cls.UNKNOWN_FIELDS == "refuse":
            raise RecordError(f"{where} has no field {', '.join(sorted(map(str, unknown)))}")
        hints = typing.get_type_hints(cls, include_extras=True)
        values: dict[str, Any] = {}
        for name, item in fields.items():
            if name in data:
                values[name] = _typed(data[name], hints[name], f"{where} '{name}'")
            elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where} '{name}' is missing")
        if cls.UNKNOWN_FIELDS == "keep":
            values["extra"] = dict(unknown)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready values: records as objects, tuples as lists, numpy scalars as numbers."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]  # a dataclass subclass, as above
            value = getattr(self, item.name)
            if item.name == "extra" and self.UNKNOWN_FIELDS == "keep":
                out = {**value, **out}
            elif value is not None or not self.OMIT_NONE:
                out[item.name] = plain(value)
        return out


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as ``hint`` says, or RecordError naming the field."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        hint, *notes = typing.get_args(hint)
        if _FIGURES in notes:
            figures = _typed(value, dict[str, Any], where)
            return {name: float(v) for name, v in figures.items()
                    if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _union(value, typing.get_args(hint), where)
    if isinstance(hint, type) and issubclass(hint, JsonRecord):
        return hint.from_json(value, where)
    if hint is Any:
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecordError(f"{where} is not an object")
        value_hint = typing.get_args(hint)[1]
        return {str(k): _typed(v, value_hint, f"{where}[{k!r}]") for k, v in value.items()}
    if origin is tuple:
        return _tuple(value, typing.get_args(hint), where)
    if hint in (float, int):
        return _number(value, hint, where)
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise RecordError(f"{where} is not a {hint.__name__}")
        return value
    raise TypeError(f"{where}: json_records cannot read {hint!r}")  # a record declared a type this module lacks


def _union(value: Any, options: tuple[Any, ...], where: str) -> Any:
    """The first option the value fits."""
    if value is None and type(None) in options:
        return None
    problems = []
    for option in (o for o in options if o is not type(None)):
        try:
            return _typed(value, option, where)
        except RecordError as exc:
            problems.append(str(exc))
    raise RecordError(" and ".join(problems) or f"{where} is not set")


def _tuple(value: Any, items: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise RecordError(f"{where} is not a list")
    if len(items) == 2 and items[1] is Ellipsis:
        return tuple(_typed(v, items[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(items):
        raise RecordError(f"{where} is not a list of {len(items)}")
    return tuple(_typed(v, h, f"{where}[{i}]") for i, (v, h) in enumerate(zip(value, items, strict=True)))


def _number(value: Any, hint: type, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RecordError(f"{where} is not a number")
    if isinstance(value, int):
        return float(value) if hint is float else value
    number = float(value)
    if hint is float:
        return number
    if not number.is_integer():
        raise RecordError(f"{where} is not a whole number")
    return int(number)


def plain(value: Any) -> Any:
    """JSON-ready: records as objects, mappings with string keys, tuples as lists, numpy scalars as numbers."""
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
