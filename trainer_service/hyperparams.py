"""The hyperparameters a training request may set, and the bounds it must respect.

Each model kind states its own defaults (see ``training``, where the kinds
are registered); they come from a small sweep on ua.base with early stopping on a
validation split carved from ua.base; the sweep favoured settings that stay
within about a minute of CPU on a 2-core machine. Bounds exist so that one request cannot occupy the trainer for hours
or exhaust memory; they are wide enough for any sensible experiment on
MovieLens-sized data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer_service.errors import InvalidRequest


@dataclass(frozen=True)
class Hyperparameters:
    embedding_dim: int = 64
    hidden_dim: int = 128          # width of the ReLU layer in each tower
    epochs: int = 30
    batch_size: int = 512
    learning_rate: float = 0.003
    dropout_rate: float = 0.0
    num_negatives: int = 4         # bpr: sampled negatives per positive
    weight_decay: float = 0.0      # decoupled (AdamW) weight decay
    temperature: float = 1.0       # softmax temperature over dot-product logits
    l2_normalize: int = 0          # two-tower kinds: 1 = cosine scores (unit-length tower outputs)
    patience: int = 3              # epochs without validation Recall@10 gain before stopping
    validation_size: int = 5       # per-user ratings carved from train for early stopping
    l2_lambda: float = 300.0       # ease kinds: ridge penalty of the item-item regression;
                                   # dlae/ease_blend default to 0 = choose on validation
    blend_weight: float = 0.0      # ease_blend: share of the neural scores; 0 = choose on validation
    # Two-tower sampled softmax only (catalogues past models.SAMPLED_SOFTMAX_MIN_ITEMS); the full softmax ignores
    # them. See models.TwoTowerModel.
    sampled_temperature: float = 0.1  # cosine scores at this temperature unless l2_normalize asks for its own;
                                      # 0 (in code only) = the dot product scored by `temperature`, as before
    uniform_negatives: int = 0     # movies drawn uniformly from the whole catalogue per batch, added to the
                                   # in-batch negatives (mixed negative sampling)
    logq_strength: float = 1.0     # share of the logQ correction applied: logits minus strength x log q

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


# (low, high) inclusive; ints are validated as integers.
BOUNDS: dict[str, tuple[float, float]] = {
    "embedding_dim": (1, 512),
    "hidden_dim": (1, 2048),
    "epochs": (1, 200),
    "batch_size": (16, 8192),
    "learning_rate": (1e-6, 1.0),
    "dropout_rate": (0.0, 0.9),
    "num_negatives": (1, 64),
    "weight_decay": (0.0, 1.0),
    "temperature": (0.01, 10.0),
    "l2_normalize": (0, 1),
    "patience": (1, 200),
    "validation_size": (1, 50),
    "l2_lambda": (0.01, 1e6),
    "blend_weight": (0.0, 1.0),
    "sampled_temperature": (0.01, 10.0),
    "uniform_negatives": (1, 8192),
    "logq_strength": (1e-6, 2.0),
}

# Every kind's defaults start here; each kind (``training.KINDS``) states what it changes.
COMMON = Hyperparameters()


def with_overrides(base: Hyperparameters, overrides: Mapping[str, float | int] | None = None) -> Hyperparameters:
    """``base`` with the caller's overrides applied and validated against ``BOUNDS``.

    A value of 0 means "not set" (the protobuf convention), so it keeps the
    default. ``InvalidRequest`` (a ValueError) names the field and its range.
    """
    types = {f.name: f.type for f in dataclasses.fields(Hyperparameters)}
    changes: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        if name not in BOUNDS:
            raise InvalidRequest(f"unknown hyperparameter {name!r}; expected one of {', '.join(BOUNDS)}")
        if value is None or value == 0:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequest(f"hyperparameter {name}={value!r} must be a finite number")
        low, high = BOUNDS[name]
        if types[name] in ("int", int):
            if float(value) != int(value):
                raise InvalidRequest(f"hyperparameter {name}={value!r} must be a whole number in [{low:g}, {high:g}]")
            value = int(value)
        else:
            value = float(value)
        if not low <= value <= high:
            raise InvalidRequest(f"hyperparameter {name}={value!r} is out of range; allowed [{low:g}, {high:g}]")
        changes[name] = value
    return dataclasses.replace(base, **changes)

