"""What the ``movierec`` CLI shows people: pure functions from client results to text.

Why apart from ``cli.py``: the CLI parses flags, makes calls and picks exit
codes; this module only decides how results read (tables, notes, JSON). Every
function returns text and prints nothing, so each view can be checked without
a server or a terminal, and the caller decides where it goes (stdout for the
answer, stderr for notes and warnings, so ``movierec recommend 42 | ...``
pipes only the table).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from movierec.v1.vocabulary import NEIGHBOURHOOD_PREFIX

from .types import HiddenMovies, Item, Job, ModelStatus, Pin, PublishedVersion, Versions

# A note naming unknown ids shows at most this many (an --only-file may name thousands).
NOTE_IDS = 20
# `movierec hidden` prints this many ids a line.
IDS_PER_LINE = 10


# --------------------------------------------------------------------------- building blocks


def table(headers: list[str], rows: list[list[Any]], *, numeric: Collection[int] = frozenset()) -> str:
    """Aligned columns; the ``numeric`` columns (by index) right-aligned."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def json_text(value: Any) -> str:
    """``--json`` output: dataclasses as objects, times in ISO 8601, unicode kept."""
    return json.dumps(value, default=_json_default, ensure_ascii=False, indent=2)


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_when_none") and getattr(value, f.name) is None)}
        if isinstance(value, Job):
            data["done"] = value.done
        return data
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "-"


def when(moment: dt.datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def or_none(value: Any) -> str:
    return "none" if value is None else str(value)


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def size(size_bytes: int) -> str:
    if size_bytes < 1024:
        return f"{size_bytes} B"
    scaled = size_bytes / 1024
    for unit in ("KB", "MB"):
        if scaled < 1024:
            return f"{scaled:.1f} {unit}"
        scaled /= 1024
    return f"{scaled:.1f} GB"


def _movies(count: int) -> str:
    return f"{count:,} movie" + ("" if count == 1 else "s")


def id_list(ids: Sequence[int], *, at_most: int = NOTE_IDS) -> str:
    """``1, 2, 3``; a long list is cut after ``at_most`` ids and says how many there are."""
    shown = ", ".join(str(movie_id) for movie_id in ids[:at_most])
    return shown if len(ids) <= at_most else f"{shown}, ... ({len(ids):,} in all)"


# --------------------------------------------------------------------------- recommendations


def items(answer: Iterable[Item]) -> str:
    rows = [[rank, item.movie_id, item.title, or_dash(item.year), genres(item), f"{item.score:.4f}"]
            for rank, item in enumerate(answer, 1)]
    return table(["#", "movie", "title", "year", "genres", "score"], rows, numeric={0, 1, 3, 5})


def genres(item: Item) -> str:
    return ", ".join(item.genres) or "-"


def similar_heading(movie: Item) -> str:
    return f"movies similar to {movie.movie_id} {movie.title} [{or_dash(movie.year)}; {genres(movie)}]:"


def unknown_note(model_version: int, unknown: Sequence[int], flags: Sequence[str]) -> str:
    """The note for ids the serving version does not know; ``flags`` are the options that named ids."""
    what = "recent movie(s)" if list(flags) == ["--recent"] else "movie(s)"
    given = f" given in {', '.join(flags)}" if flags and what == "movie(s)" else ""
    return f"note: model version {model_version} does not know {what} {id_list(unknown)}{given}; ignored"


def short_answer_note(k: int, answered: int, eligible: int | None, *, filtered: bool, left_out: str) -> str | None:
    """Why fewer than ``k`` movies came back, when the server said how many were eligible; else None.

    ``left_out`` names what every answer leaves out besides the filter
    ("seen and hidden movies"), since those count against ``k`` as well.
    """
    if eligible is None or answered >= k:
        return None
    passed = "passed the filter" if filtered else "could be answered"
    return f"note: only {_movies(eligible)} {passed} ({left_out} left out); asked for {k}"


# --------------------------------------------------------------------------- training jobs


def job_state(job: Job) -> str:
    return f"job {job.id} {job.state}"


def job(job: Job) -> str:
    p = job.progress
    epochs = f"epoch {p.epoch}/{p.total_epochs}" if p.total_epochs else f"epoch {p.epoch}"
    fields = [
        ("id", job.id),
        ("model", job.model),
        ("state", job.state),
        ("trigger", trigger(job)),
        ("progress", f"{p.phase or '-'}, {epochs}, loss {p.loss:.4f}, {p.elapsed_seconds:.1f}s"),
        ("created", when(job.created_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
    ]
    if job.done and job.state == "SUCCEEDED":
        fields.append(("published", publication(job)))
    if job.interactions:
        fields.append(("interactions", interactions_asked(job)))
    if job.evaluation_split:
        fields.append(("evaluated on", job.evaluation_split))
    if job.loss_history:
        fields.append(("loss history", " ".join(f"{x:.4f}" for x in job.loss_history)))
    if job.error:
        fields.append(("error", job.error))
    width = max(len(name) for name, _ in fields)
    lines = [f"{name + ':':<{width + 1}} {value}" for name, value in fields]
    if job.metrics:
        lines += ["", metrics(job)]
    return "\n".join(lines)


def jobs(listed: Sequence[Job]) -> str:
    """The jobs table; a "trigger" column joins it when a listed job was queued by the retrain policy."""
    if not listed:
        return "no jobs"
    triggered = any(j.trigger != REQUEST for j in listed)
    rows = [[j.id, j.model, j.state, *([j.trigger] if triggered else []), or_dash(j.model_version),
             metric(j.metrics, "recall_at_10"), when(j.created_at)] for j in listed]
    headers = ["id", "model", "state", *(["trigger"] if triggered else []), "version", "recall@10", "created"]
    return table(headers, rows, numeric={3 + triggered, 4 + triggered})


REQUEST = "request"
_TRIGGERS = {REQUEST: "request (a Train call)",
             "retrain_after_interactions": "retrain policy (--retrain-after-interactions)",
             "retrain_every": "retrain policy (--retrain-every)"}


def trigger(job: Job) -> str:
    return _TRIGGERS.get(job.trigger, job.trigger)


def interactions_asked(job: Job) -> str:
    if job.interactions_watermark is not None:
        return f"recorded interactions up to store position {job.interactions_watermark}"
    return "recorded interactions, up to the store's latest position when the job reads them"


def publication(job: Job) -> str:
    if job.published:
        return f"published as version {job.model_version}"
    reason = job.not_published_reason or "no reason given"
    return f"not published ({reason})"


def metrics(job: Job) -> str:
    """The model's held-out figures beside popularity's and, when reported, neighbourhood popularity's."""
    neighbourhood = {name[len(NEIGHBOURHOOD_PREFIX):]: value for name, value in job.baseline_metrics.items()
                     if name.startswith(NEIGHBOURHOOD_PREFIX)}
    popularity = {name: value for name, value in job.baseline_metrics.items()
                  if not name.startswith(NEIGHBOURHOOD_PREFIX)}
    names = list(job.metrics) + [n for n in {**popularity, **neighbourhood} if n not in job.metrics]
    if not neighbourhood:
        rows = [[name, metric(job.metrics, name), metric(popularity, name)] for name in names]
        return table(["metric", "model", "popularity"], rows, numeric={1, 2})
    rows = [[name, metric(job.metrics, name), metric(popularity, name), metric(neighbourhood, name)]
            for name in names]
    return table(["metric", "model", "popularity", "neighbourhood"], rows, numeric={1, 2, 3})


def succeeded(job: Job) -> str:
    """A finished job's outcome (a failure is one line: the CLI writes it to stderr)."""
    text = f"job {job.id} SUCCEEDED: {publication(job)}"
    return f"{text}\n{metrics(job)}" if job.metrics else text


def failed(job: Job) -> str:
    reason = f": {job.error}" if job.error else ""
    return f"job {job.id} {job.state}{reason}"


# --------------------------------------------------------------------------- status, versions, pin, hidden


_PIN_SOURCES = {"MODEL_ROOT": "the model root's pin, for every replica",
                "VERSION_FLAG": "this replica's --version, over the model root's pin"}


def status(status: ModelStatus) -> str:
    lines = []
    if status.served_version is None:
        lines.append("served version: none (no model loaded yet)")
    else:
        lines.append(f"served version: {status.served_version} ({status.model_kind}), loaded {when(status.loaded_at)}")
    if status.pinned_version is None:
        lines.append("pinned version: none (follows the newest valid version)")
    else:
        source = _PIN_SOURCES.get(status.pin_source or "", status.pin_source or "unknown source")
        lines.append(f"pinned version: {status.pinned_version} ({source})")
    if status.pin_problem:
        lines.append(f"pin problem:    {status.pin_problem}")
    lines.append(f"hidden movies:  {hidden_count(status)}")
    if status.hidden_problem:
        lines.append(f"hidden problem: {status.hidden_problem}")
    lines.append(f"model root:     {status.model_root or '-'}")
    lines.append(f"interactions:   {feedback(status)}")
    if status.events_problem:
        lines.append(f"events problem: {status.events_problem}")
    lines.append(f"users / items:  {status.num_users} / {status.num_items}")
    if status.genres:
        lines.append(f"genres ({len(status.genres)}):".ljust(16)
                     + ", ".join(f"{g.name} {g.movies}" for g in status.genres))
    elif status.served_version is not None:
        lines.append("genres: none (the served version has no movie metadata; retrain)")
    if status.metrics:
        lines.append("metrics:        " + ", ".join(f"{k}={v:.4f}" for k, v in status.metrics.items()))
    if status.versions:
        rows = [[v.version, v.state, v.model_kind or "-", metric(v.metrics, "recall_at_10"), v.reason]
                for v in status.versions]
        lines += ["", table(["version", "state", "kind", "recall@10", "reason"], rows, numeric={0, 3})]
    return "\n".join(lines)


def feedback(status: ModelStatus) -> str:
    """The feedback loop in one line: the store followed, how far, the fresh histories, the online rate."""
    if not status.events_store:
        return "off (--events none)"
    text = (f"{status.events_store}, read to {status.events_followed:,}; fresh: {status.fresh_interactions:,} "
            f"of {status.fresh_users:,} users")
    if status.online_judged:
        text += f"; online hit rate {status.online_hit_rate:.3f} of {status.online_judged:,} judged"
    return text


def hidden_count(status: ModelStatus) -> str:
    if not status.hidden_sequence:
        return "none"  # no rules in the model root (or none read yet)
    count = f"{status.hidden_movies:,}" if status.hidden_movies else "none"
    return f"{count} (rules sequence {status.hidden_sequence})"


def versions(listed: Versions) -> str:
    """The versions table. The online hit rate and the recommendations judged join it, beside the offline
    Recall@10, when some version has them; the interactions column when some version was trained on any."""
    if not listed:
        return "no complete versions in the model root"
    online = any(v.online is not None for v in listed)
    trained_on = any(v.interactions is not None for v in listed)
    headers = ["version", "kind", "recall@10", *(["online", "judged"] if online else []), "created", "size",
               "pinned", "served by", *(["interactions"] if trained_on else [])]
    rows = [
        [v.version, v.model_kind or "-", metric(v.metrics, "recall_at_10"),
         *(online_cells(v) if online else []), when(v.created_at), size(v.size_bytes),
         "yes" if v.pinned else "", ", ".join(v.served_by) or "-",
         *([interactions_cell(v)] if trained_on else [])]
        for v in listed
    ]
    numeric = {0, 2, 3, 4, 6} if online else {0, 2, 4}
    return table(headers, rows, numeric=numeric)


def online_cells(version: PublishedVersion) -> list[str]:
    if version.online is None:
        return ["-", "0"]
    return [f"{version.online.hit_rate:.4f}", f"{version.online.judged:,}"]


def interactions_cell(version: PublishedVersion) -> str:
    used = version.interactions
    return "-" if used is None else f"{used.used:,} up to #{used.watermark}"


def online_note(listed: Versions) -> str | None:
    """Why the table has no online figures, when the trainer could not read them."""
    return f"note: {listed.online_problem}" if listed.online_problem else None


def pin_line(listed: Versions) -> tuple[str, bool]:
    """The pin under the versions table, and whether it is a warning (it names a version no longer there)."""
    if listed.pinned_version is None:
        return "pinned: none (recommenders follow the newest valid version)", False
    if listed.pinned_version not in {v.version for v in listed}:
        return (f"pinned: {listed.pinned_version}, which is no longer in the model root: recommenders keep what "
                f"they serve; `movierec pin N` or `movierec unpin`"), True
    return f"pinned: {listed.pinned_version} (`movierec unpin` to follow the newest valid version)", False


def pinned(pin: Pin) -> str:
    return (f"pinned version {pin.pinned_version} (before: {or_none(pin.previous_pinned_version)}); "
            "every recommender serves it after its next poll (`movierec status` shows one replica's view)")


def unpinned(pin: Pin) -> str:
    return (f"unpinned (before: {or_none(pin.previous_pinned_version)}); "
            "recommenders follow the newest valid version again")


def hidden_changed(hidden: HiddenMovies, verb: str, asked: Sequence[int]) -> str:
    """After ``movierec hide``/``unhide``: what was asked, the list's size now, and when replicas follow."""
    return (f"{verb} {id_list(asked)}: {_movies(len(hidden))} hidden now (sequence {hidden.sequence}); every "
            f"recommender applies it after its next poll (`movierec status` shows the sequence a replica applies)")


def hidden(hidden: HiddenMovies) -> str:
    if not hidden:
        return f"no hidden movies (sequence {hidden.sequence})"
    ids = hidden.movie_ids
    lines = [f"{_movies(len(ids))} hidden (sequence {hidden.sequence}):"]
    lines += [" ".join(str(movie_id) for movie_id in ids[start:start + IDS_PER_LINE])
              for start in range(0, len(ids), IDS_PER_LINE)]
    return "\n".join(lines)
