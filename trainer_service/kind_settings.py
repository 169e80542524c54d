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

from dataclasses import dataclass

from movierec_common.json_records import JsonRecord


@dataclass(frozen=True)
class KindSettings(JsonRecord):
    """Base of the settings records: JSON out and back by the fields' types (movierec_common.json_records).

    A field it does not know, a missing one or a mistyped one is a ValueError
    (``json_records.RecordError``): a refit must not guess what was chosen.
    """


@dataclass(frozen=True)
class NeuralSettings(KindSettings):
    """two_tower, two_tower_dropout, bpr: the epoch validation Recall@10 peaked at (early stopping),
    and on the two-tower's sampled path the popularity prior's exponent (trainer_service.popularity_prior;
    0: none, as before it existed)."""

    epochs: int
    popularity_prior: float = 0.0


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
