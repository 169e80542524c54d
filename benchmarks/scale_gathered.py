"""Part (d) of ``benchmarks/scale.py``: issue 20's speed and serving figures, from their own benchmarks.

Each of these figures has a benchmark of its own that measures the old
setting beside the new one in the same run; this part runs them as child
processes (each with its own peak memory and machine load) and records their
figures and targets in scale.json, so one run of scale.py holds all of the
issue's targets:

* **step time** at 1,000,000 movies x 64, batch 1,024, XLA:
  ``train_speed.py --part step`` (AdamW beside lazy embedding updates; target
  <= 25 ms for the product's choice, lazy at this size);
* **p99 at 1 call in flight across a reload** at a million movies:
  ``ann_serving.py --skip-live --rankings alternate`` (rankings shipped by the
  trainer beside rankings computed by the loader, reload by reload; target
  <= 2 ms with 0 failed calls, the same run's quiet p99 beside it);
* **session gaps** on ML-100K's ``sequential``: ``serve.py --session-compare``
  (a session's p50 over the plain call's, measured in the same run; targets
  +0.3 ms for a known user, +0.2 ms for a visitor).

``--tiny`` runs only ann_serving's tiny mode (the only one of the three
without a CI test of its own), so scale.py's tiny run stays a smoke test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
STEP_TARGET_MS = 25.0


def _run(work: Path, name: str, script: str, *arguments: str) -> dict:
    """Runs ``benchmarks/<script>`` with ``--out`` in ``work``; its JSON report (its output is passed on)."""
    out = work / f"{name}.json"
    command = [sys.executable, str(BENCH_DIR / script), *arguments, "--out", str(out)]
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    return json.loads(out.read_text())


def part_d(work: Path, tiny: bool, reloads: int = 4) -> dict:
    """The three child runs' reports, trimmed to what scale.json keeps: figures and targets."""
    ann = _run(work, "ann_serving", "ann_serving.py", "--skip-live", "--rankings", "alternate",
               *(["--tiny"] if tiny else ["--reloads", str(reloads)]))
    result: dict = {"reload": {"latency": ann["latency"], "versions": ann["versions"],
                               "targets": [t for t in ann["targets"] if "p99" in t["name"] or "failed" in t["name"]]}}
    if tiny:
        return result
    steps = _run(work, "train_speed", "train_speed.py", "--part", "step", "--variants", "adamw,lazy")
    result["step"] = {"shape": steps["shape"], "steps": steps["steps"], "load": [steps["load_before"],
                                                                                 steps["load_after"]]}
    sessions = _run(work, "serve", "serve.py", "--model", "sequential", "--session-compare", "--levels", "1")
    result["sessions"] = {"sessions": sessions.get("sessions"),
                          "targets": [t for t in sessions["targets"] if t["name"].startswith("session")]}
    return result


def targets(d: dict) -> list[dict]:
    """(d)'s rows for scale.py's target table."""
    rows = [{"name": f"(d) {t['name']}", "value": t["value"], "limit": t["limit"], "passed": t["passed"]}
            for part in ("reload", "sessions") if part in d for t in d[part]["targets"]]
    if "step" in d:
        lazy = d["step"]["steps"]["lazy"]["median_ms"]
        rows.append({"name": "(d) step ms at 1M movies x 64, batch 1,024 (lazy)", "value": lazy,
                     "limit": f"<= {STEP_TARGET_MS}", "passed": lazy <= STEP_TARGET_MS})
    return rows


def print_part(d: dict) -> None:
    print("\n(d) issue 20's speed and serving figures (their own benchmarks, run as children)")
    for name, run in d["reload"]["latency"].items():
        print(f"  1M movies, {name:<44} p50 {run['p50_ms']} ms  p99 {run['p99_ms']} ms  max {run['max_ms']} ms  "
              f"{run['calls']} calls, {run['errors']} failed")
    if "step" in d:
        for variant, step in d["step"]["steps"].items():
            print(f"  step at 1M movies x 64, {variant:<6} {step['median_ms']} ms (median of rounds)")
    for row in (d.get("sessions") or {}).get("targets", []):
        print(f"  {row['name']}: {row['value']} (target {row['limit']})")
