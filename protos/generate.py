"""Regenerates movierec.v1's Python modules from the .proto files.

Run ``python protos/generate.py`` after editing a .proto; the generated modules
are committed so that installing movierec needs no code generation, and
``tests/unit/test_protos.py`` fails when they drift from the .proto files.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / "movierec" / "v1").glob("*.proto"))


def generate(out_dir: Path = PROTO_ROOT) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto into out_dir."""
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {PROTO_FILES}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
