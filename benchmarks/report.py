"""What the benchmark scripts share in how they report and where they work.

Each script prints its own tables; the verdict lines under them, one per
target, read the same everywhere (``PASS``, ``FAIL``, or ``REPORTED`` for a
figure the issue asks for but does not judge), and every script works in a
folder of its own, ``--work-dir`` or a fresh temporary one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


def target_lines(targets: Iterable[Mapping[str, Any]], show: Callable[[Any], str] = str) -> list[str]:
    """One line per target: its verdict, name, value (``show(value)``) and limit, each with the target's unit.
    A target with ``judged`` false is ``REPORTED`` rather than passed or failed."""
    lines = []
    for target in targets:
        unit = f" {target['unit']}" if target.get("unit") else ""
        verdict = ("PASS" if target["passed"] else "FAIL") if target.get("judged", True) else "REPORTED"
        lines.append(f"{verdict}  {target['name']}: {show(target['value'])}{unit} (target {target['limit']}{unit})")
    return lines


def work_folder(work_dir: str | None, prefix: str) -> Path:
    """``work_dir`` (made if missing), or a new temporary folder named ``prefix...``."""
    work = Path(work_dir or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work
