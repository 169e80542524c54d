"""What a killed server leaves on disk is found and removed by the next one (movierec_common.launch)."""

from __future__ import annotations

import os
import subprocess
import sys

from movierec_common.launch import owned_prefix, remove_orphaned_folders


def test_only_folders_of_servers_that_no_longer_run_are_removed(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    prefix = "movierec-handoff-"
    dead = tmp_path / f"{owned_prefix(prefix, dead_pid)}abc"
    mine = tmp_path / f"{owned_prefix(prefix)}def"
    other_kind = tmp_path / f"movierec-warm-{dead_pid}-ghi"
    not_a_pid = tmp_path / f"{prefix}x-jkl"
    for folder in (dead, mine, other_kind, not_a_pid):
        folder.mkdir()
        (folder / "1.npy").write_bytes(b"\0" * 10)
    assert remove_orphaned_folders(str(tmp_path), prefix) == [str(dead)]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (mine, other_kind, not_a_pid))
