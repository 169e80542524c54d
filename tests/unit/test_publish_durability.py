"""A local publish flushes every file and the staging folder before the rename, and the parent after it,
so a power cut cannot leave a numbered folder whose files are empty. Observed from outside, with strace
(``-y`` names each descriptor's file), on a real publish in a child process."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

PUBLISH = """
import sys
from movierec_common.artifact import VersionMetadata
from tests.artifacts import tiny_artifact
from trainer_service.publisher import publish
print(publish(sys.argv[1], tiny_artifact(), VersionMetadata(model_kind="test")))
"""


def test_a_local_publish_fsyncs_its_files_and_folders_around_the_rename(tmp_path):
    if shutil.which("strace") is None:
        pytest.fail("strace is needed to observe fsync from outside the process (apt-get install strace)")
    root = tmp_path / "models"
    trace = tmp_path / "trace.txt"
    subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2",
                    "-o", str(trace), sys.executable, "-c", PUBLISH, str(root)], check=True, timeout=300,
                   capture_output=True)
    lines = trace.read_text().splitlines()
    rename = next(i for i, line in enumerate(lines)
                  if re.search(rf'rename(at2?)?\(.*"{re.escape(str(root))}/\.tmp-1-[0-9a-f]+".*"{root}/1"', line))
    staging = re.search(rf'"({re.escape(str(root))}/\.tmp-1-[0-9a-f]+)"', lines[rename]).group(1)
    synced_before = {m.group(1) for line in lines[:rename] if (m := re.search(r"fsync\(\d+<([^>]+)>\)", line))}
    synced_after = {m.group(1) for line in lines[rename:] if (m := re.search(r"fsync\(\d+<([^>]+)>\)", line))}
    published = [p for p in (root / "1").rglob("*")]
    expected = {str(p).replace(f"{root}/1", staging) for p in published} | {staging}
    assert expected - synced_before == set(), "flushed too late or never"
    assert str(root) in synced_after, "the rename itself was not flushed"
