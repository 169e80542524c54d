"""What each model kind chose on validation, typed: the record a refit trains with again.

A job trains twice. The evaluation run chooses its settings on a validation
split (the early-stopping epoch, EASE's lambda, DLAE's dropout, the blend
weight, the recency rules) and is measured on the holdout; the refit trains
the same kind on every rating *with those settings*, choosing nothing. The
settings are what passes from one to the other, so each kind family has a
frozen record of them here instead of a dict read by string keys, and
``metadata.json``'s ``settings`` is that record as JSON (``to_json``;
``from_json`` reads it back, refusing a record that is not the kind's).

Plain data on purpose (no numpy, no TensorFlow): a refit's settings travel to
Ray workers, which must not import TensorFlow before their distribution
strategy exists (see ``distributed``).
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

S = TypeVar("S", bound="KindSettings")


@dataclass(frozen=True)
class KindSettings:
    """Base of the settings records: JSON out and back, by the fields' types."""

    def to_json(self) -> dict[str, Any]:
        """The record as metadata.json stores it: numbers as numbers, tuples as lists, nested records as objects."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, KindSettings):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            out[item.name] = value
        return out

    @classmethod
    def from_json(cls: type[S], data: Mapping[str, Any]) -> S:
        """The record ``to_json`` wrote; ValueError for a missing, unknown or mistyped field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        known = {item.name: item for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__} has no field {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, item in known.items():
            if name in data:
                values[name] = _typed(data[name], hints[name], f"{cls.__name__}.{name}")
            elif item.default is dataclasses.MISSING:
                raise ValueError(f"{cls.__name__}.{name} is missing")
        return cls(**values)


def _typed(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (option,) = (o for o in options if o is not type(None))
        return _typed(value, option, where)
    if isinstance(hint, type) and issubclass(hint, KindSettings):
        return hint.from_json(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(hint)):
            raise ValueError(f"{where}: expected a list of {len(typing.get_args(hint))}, got {value!r}")
        return tuple(_typed(v, h, where) for v, h in zip(value, typing.get_args(hint), strict=True))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    number = float(value)
    if hint is int:
        if not number.is_integer():
            raise ValueError(f"{where}: expected a whole number, got {value!r}")
        return int(number)
    return number


@dataclass(frozen=True)
class NeuralSettings(KindSettings):
    """two_tower, two_tower_dropout, bpr: the epoch validation Recall@10 peaked at (early stopping)."""

    epochs: int


@dataclass(frozen=True)
class EaseSettings(KindSettings):
    """ease: the ridge penalty (the request's; validation only reports on it)."""

    l2_lambda: float


@dataclass(frozen=True)
class DlaeSettings(KindSettings):
    """dlae: the ridge penalty and the input-dropout rate, chosen together on validation."""

    l2_lambda: float
    dlae_dropout: float


@dataclass(frozen=True)
class BlendSettings(KindSettings):
    """ease_blend: the two-tower's epoch, DLAE's pair, the neural share and each part's score spread.

    ``scales`` divide each part's scores (DLAE's, the two-tower's) by their
    spread over unseen validation items, so that ``blend_weight`` means the
    same whatever the raw score scales; a refit reuses them as they were.
    """

    epochs: int
    l2_lambda: float
    dlae_dropout: float
    blend_weight: float
    scales: tuple[float, float]


@dataclass(frozen=True)
class RecencyRule(KindSettings):
    """How the sequential kind weighs a history: recency decay and floor for DLAE, and the transitions' part."""

    decay: float
    floor: float
    transition_decay: float
    transition_weight: float


@dataclass(frozen=True)
class SequentialSettings(KindSettings):
    """sequential: DLAE's pair and the users' recency rule (flat, as metadata.json has always held them),
    and the visitors' rule for short sessions (None: as users')."""

    l2_lambda: float
    dlae_dropout: float
    decay: float
    floor: float
    transition_decay: float
    transition_weight: float
    visitor: RecencyRule | None = None

    @property
    def users(self) -> RecencyRule:
        return RecencyRule(self.decay, self.floor, self.transition_decay, self.transition_weight)
