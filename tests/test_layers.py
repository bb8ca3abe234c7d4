"""The layer contract (``[tool.importlinter]`` in pyproject.toml) holds, and names every module
of the package, so ``pytest`` alone catches an upward import or a cycle between layers; and no
module imports itself through others (a cycle inside one layer)."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = (
    "from importlinter.cli import lint_imports; "
    "raise SystemExit(lint_imports(no_cache=True, no_logo=True))"
)


def test_import_contracts_are_kept():
    # a fresh interpreter in the repository root, so the graph is of this checkout's mechbd
    r = subprocess.run([sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_module_is_in_a_layer():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in cfg["contracts"] if c["id"] == "layers"]
    named = {m.strip() for layer in layers["layers"] for m in layer.split("|")}
    pkg = ROOT / "mechbd"
    modules = {
        f"mechbd.{p.stem}"
        for p in pkg.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert modules == named


def test_no_module_imports_itself_through_others():
    import grimp

    g = grimp.build_graph("mechbd", cache_dir=None)  # function-local imports count too
    cycles = [
        (a, b)
        for a in sorted(g.modules)
        for b in sorted(g.find_modules_directly_imported_by(a))
        if g.chain_exists(importer=b, imported=a)
    ]
    assert not cycles, cycles
