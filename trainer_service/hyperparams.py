"""Per-kind hyperparameter defaults and the bounds a training request must respect.

Defaults come from a small sweep on ua.base with early stopping on a
validation split carved from ua.base; the sweep favoured settings that stay
within about a minute of CPU on a 2-core machine. Bounds exist so that one request cannot occupy the trainer for hours
or exhaust memory; they are wide enough for any sensible experiment on
MovieLens-sized data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from movierec.v1.vocabulary import MODEL_KINDS


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
}

_COMMON = Hyperparameters()
DEFAULTS: dict[str, Hyperparameters] = {
    "two_tower": dataclasses.replace(_COMMON),
    "two_tower_dropout": dataclasses.replace(_COMMON, dropout_rate=0.2),
    "bpr": dataclasses.replace(_COMMON, batch_size=1024, learning_rate=0.003, weight_decay=0.05, num_negatives=4),
    "ease": dataclasses.replace(_COMMON, epochs=1),
    # The DLAE part's lambda (and its dropout rate, which is not a request knob)
    # is picked on the validation split per run unless the request sets l2_lambda.
    "dlae": dataclasses.replace(_COMMON, epochs=1, l2_lambda=0.0),
    "ease_blend": dataclasses.replace(_COMMON, l2_lambda=0.0),
    # History-aware: recency-weighted DLAE plus item-to-next-item transitions;
    # lambda, dropout and the recency settings are chosen on a split carved by time.
    "sequential": dataclasses.replace(_COMMON, epochs=1, l2_lambda=0.0),
}


def resolve_hyperparameters(kind: str, overrides: dict[str, float | int] | None = None) -> Hyperparameters:
    """Defaults of ``kind`` with the caller's overrides applied and validated.

    A value of 0 means "not set" (the protobuf convention), so it keeps the default.
    """
    if kind not in DEFAULTS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    base = DEFAULTS[kind]
    types = {f.name: f.type for f in dataclasses.fields(Hyperparameters)}
    changes: dict[str, float | int] = {}
    for name, value in (overrides or {}).items():
        if name not in BOUNDS:
            raise ValueError(f"unknown hyperparameter {name!r}; expected one of {', '.join(BOUNDS)}")
        if value is None or value == 0:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"hyperparameter {name}={value!r} must be a finite number")
        low, high = BOUNDS[name]
        if types[name] in ("int", int):
            if float(value) != int(value):
                raise ValueError(f"hyperparameter {name}={value!r} must be a whole number in [{low:g}, {high:g}]")
            value = int(value)
        else:
            value = float(value)
        if not low <= value <= high:
            raise ValueError(f"hyperparameter {name}={value!r} is out of range; allowed [{low:g}, {high:g}]")
        changes[name] = value
    return dataclasses.replace(base, **changes)
