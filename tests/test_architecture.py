"""The package layout's rules (docs/architecture.md), enforced.

Packages form layers; a module may import only from its own layer or those below.
Only hpcinfer.parallel talks MPI, so models, backends, io and checkpoint load without
mpi4py, and `inspect` and `status` run where mpi4py is not even installed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, DIGITS_JOB, ROOT

PACKAGE = ROOT / "hpcinfer"

# Lowest first. Each entry: a layer's modules (a package name covers its submodules).
LAYERS = [
    ("core", ("hpcinfer", "hpcinfer.errors", "hpcinfer.job")),
    ("parallel", ("hpcinfer.parallel",)),
    ("backends", ("hpcinfer.backends",)),
    ("io", ("hpcinfer.io",)),
    ("models", ("hpcinfer.models",)),
    ("schedule", ("hpcinfer.schedule",)),
    ("checkpoint", ("hpcinfer.checkpoint",)),
    ("plan", ("hpcinfer.settings", "hpcinfer.plan")),
    ("tools", ("hpcinfer.tools",)),
    ("engine", ("hpcinfer.start", "hpcinfer.compute", "hpcinfer.engine")),
    ("cli", ("hpcinfer.cli", "hpcinfer.__main__", "hpcinfer.api")),
    ("testing", ("hpcinfer.testing",)),
]
# The command line loads fault injection only behind HPCINFER_TESTING=1 (never otherwise);
# the package's facade (`hpcinfer.run`) imports the API on first use.
ALLOWED_UPWARD = {("hpcinfer.cli", "hpcinfer.testing.faults"), ("hpcinfer", "hpcinfer.api")}
MPI_MODULES = {"hpcinfer.parallel.comm", "hpcinfer.parallel.runtime"}
MPI_FREE = ("hpcinfer.models", "hpcinfer.backends", "hpcinfer.io", "hpcinfer.checkpoint")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and prefix.count(".") > depth and (prefix != "hpcinfer" or module == prefix):
                best, depth = i, prefix.count(".")
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py"
    return best


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def internal(name: str) -> str | None:
    """The hpcinfer module an import names (`from hpcinfer.x import f` -> hpcinfer.x)."""
    if not name.startswith("hpcinfer"):
        return None
    parts = name.split(".")
    while parts:
        candidate = ROOT.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return None


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_upward():
    upward = []
    for module, path in MODULES.items():
        for name in imports(path):
            target = internal(name)
            if target is None or (module, target) in ALLOWED_UPWARD:
                continue
            if layer_of(target) > layer_of(module):
                upward.append(
                    f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                    f"({LAYERS[layer_of(target)][0]})"
                )
    assert not upward, "\n".join(sorted(set(upward)))


def test_only_the_parallel_package_imports_mpi4py():
    direct = {
        module
        for module, path in MODULES.items()
        if any(n == "mpi4py" or n.startswith("mpi4py.") for n in imports(path))
    }
    assert direct <= MPI_MODULES, sorted(direct - MPI_MODULES)


def test_models_backends_io_and_checkpoint_load_without_mpi4py():
    targets = [m for m in MODULES if m.startswith(MPI_FREE) and not m.endswith("_backend")]
    code = (
        "import sys\n"
        "sys.modules['mpi4py'] = None  # any import of it fails\n"
        f"for name in {targets!r}:\n"
        "    __import__(name)\n"
        "print(len(sys.modules))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", str(DATA / "models" / "tiny-gpt2")],
        ["inspect", str(DATA / "models" / "digits-mlp"), "--ranks", "4", "--mem-per-rank", "1"],
        ["status", str(DIGITS_JOB)],
    ],
    ids=["inspect-gpt2", "inspect-mlp", "status"],
)
def test_inspect_and_status_run_with_mpi4py_uninstalled(argv):
    code = (
        "import sys\n"
        "sys.modules['mpi4py'] = None\n"
        "from hpcinfer.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip()


def test_no_module_is_over_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
