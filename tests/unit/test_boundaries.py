"""Who may import whom, read from the source with ``ast`` (so a lazy import inside a function counts too):

* a client depends on the contract alone: ``clients`` imports the standard
  library, third-party packages, itself and ``movierec.v1``, never the
  services or what they share;
* test support (starting a server as a child process) is never imported by
  the services or by what they share.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"movierec", "movierec_common", "trainer_service", "recommender_service", "clients", "tests",
               "benchmarks"}
TEST_SUPPORT = {"movierec_common.server_process", "movierec_common.end_with_launcher"}


def modules_under(package: str) -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module of a top-level package in this repository."""
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imported(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``path`` imports; ``from a import b`` yields ``a.b`` (b may be a
    module), relative imports are resolved against ``module``'s package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base


def test_the_import_reader_sees_every_form(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("import a.b\nfrom c import d\nfrom . import e\nfrom ..f import g\n"
                      "def lazy():\n    import h\n", encoding="utf-8")
    found = [name for _, name in imported("pkg.sub.mod", source)]
    assert found == ["a.b", "c.d", "pkg.sub.e", "pkg.f.g", "h"]


def _allowed_in_a_client(name: str) -> bool:
    top = name.partition(".")[0]
    if top in sys.stdlib_module_names or top not in FIRST_PARTY:
        return True
    return top == "clients" or name == "movierec.v1" or name.startswith("movierec.v1.")


def test_clients_depend_on_the_contract_alone():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for module, path in modules_under("clients") for line, name in imported(module, path)
             if not _allowed_in_a_client(name)]
    assert wrong == []


def test_importing_the_client_and_its_cli_loads_no_service_code_and_no_tensorflow():
    program = ("import sys, clients, clients.cli\n"
               "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True,
                                cwd=ROOT, timeout=120).stdout.split())
    assert "clients" in loaded
    assert loaded.isdisjoint({"movierec_common", "trainer_service", "recommender_service", "tensorflow"})


@pytest.mark.parametrize("package", ["movierec_common", "trainer_service", "recommender_service"])
def test_the_services_never_import_test_support(package):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for module, path in modules_under(package) if module not in TEST_SUPPORT
             for line, name in imported(module, path)
             if any(name == support or name.startswith(support + ".") for support in TEST_SUPPORT)]
    assert wrong == []


def test_test_support_is_where_tests_and_benchmarks_find_it():
    users = {path.relative_to(ROOT).as_posix() for package in ("tests", "benchmarks")
             for module, path in modules_under(package) for _, name in imported(module, path)
             if name.startswith("movierec_common.server_process")}
    assert "tests/servers.py" in users and "benchmarks/serve.py" in users
