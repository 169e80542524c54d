"""The quality gate: whether a job's model may be published, judged on its validation Recall@10.

Three rules, all on the validation split the kind chose its settings on (the
holdout's figures are reported, never used to decide): a floor (the
request's, else the trainer's ``--min-recall``), and, when the request asks
for them, beating neighbourhood popularity (``neighbourhood_baseline``: a bar
that still means something on a long-tailed catalogue, where global
popularity finds almost nothing) and no regression against what callers are
served now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from movierec_common.artifact import ArtifactError, read_metadata
from movierec_common.logs import event
from movierec_common.model_root import (
    PinDamaged,
    RootUnreachable,
    list_versions,
    read_pin,
    version_dir,
    versions_in_use,
)
from trainer_service.config import TrainerConfig
from trainer_service.jobs import TrainSpec
from trainer_service.ratings import Split

log = logging.getLogger(__name__)


def refusal(spec: TrainSpec, config: TrainerConfig, validation_recall: float, split: Split,
            baseline_recall: Callable[[], float] | None = None) -> str:
    """Returns why the model must not be published, or "" when it may.

    ``baseline_recall`` computes neighbourhood popularity's Recall@10 on the validation split the model was
    chosen on; it is called only when the request asks to beat it.
    """
    if spec.quality_gate_disabled:
        return ""
    floor = spec.min_validation_recall_at_10 or config.min_validation_recall_at_10
    if validation_recall < floor:
        return f"validation Recall@10 {validation_recall:.4f} is below the floor {floor:.4f}"
    if spec.require_beating_baseline and baseline_recall is not None:
        bar = baseline_recall()
        if validation_recall < bar:
            return (f"validation Recall@10 {validation_recall:.4f} is below neighbourhood popularity's {bar:.4f} "
                    f"on the same validation split (the movies most often rated together with each user's own)")
    if spec.require_no_regression:
        return regression(config.model_root, validation_recall, split)
    return ""


def regression(root: str, validation_recall: float, split: Split) -> str:
    """Why publishing a model of this validation Recall@10 would be a regression; "" when it would not.

    A regression is against what callers get, not against whatever is newest
    on disk (after a rollback the newest may be the version nobody should
    serve). The version(s) compared against, the first rule that names a
    version with readable metadata:

    1. the pinned version (``model_root.read_pin``): every replica follows it;
    2. else every version a live recommender serves (its serving marker,
       ``model_root.versions_in_use``): the new model must be no worse than
       any of them, since during a rollout some callers get each;
    3. else (nothing pinned, no live recommender) the newest published version.

    Only a version evaluated on the same data (dataset fingerprint and
    evaluation split) is comparable; equal is not a regression. When the pin
    or the markers cannot be read, nothing is published: which version is
    served is unknown, so a regression cannot be ruled out.
    """
    try:
        pinned = read_pin(root)
        served = sorted(versions_in_use(root))
        versions = list_versions(root)
    except (RootUnreachable, PinDamaged) as exc:
        return (f"cannot tell which version is served ({type(exc).__name__}: {exc}), so a regression "
                f"cannot be ruled out")
    rules = [([pinned] if pinned is not None else [], "the pinned version"),
             (served, "served by a live recommender"),
             (versions[-1:], "the newest published version")]
    for candidates, rule in rules:
        compared = []
        for version in candidates:
            try:
                current = read_metadata(version_dir(root, version))
            except ArtifactError:
                continue  # deleted or damaged: nobody can be served it
            compared.append(version)
            same_data = (current.dataset.fingerprint == split.data.fingerprint
                         and current.evaluation_split == split.name)
            previous = current.metrics.get("validation_recall_at_10")
            if same_data and previous is not None and validation_recall < previous:
                return (f"validation Recall@10 {validation_recall:.4f} is below version {version}'s "
                        f"{previous:.4f} on the same data ({rule})")
        if compared:
            event(log, "no regression", versions=compared, rule=rule,
                  validation_recall_at_10=round(validation_recall, 4))
            return ""
    return ""
