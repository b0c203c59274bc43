"""The import-linter contracts in pyproject.toml hold: layers point one way, with no cycle.

import-linter reads the package from the file system, and `strategies/` and `datasets/` live beside
`ambig_bench/` (they install as its subpackages), so the check runs on a temporary tree that places them
inside it, as an installed copy would.

$ python -m pytest tests/test_architecture.py      # also run by `make lint`
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def installed_layout(tmp: Path) -> Path:
    """tmp/ambig_bench with every module of the package and its mapped subpackages, as links."""
    package = tmp / "ambig_bench"
    package.mkdir()
    for entry in (ROOT / "ambig_bench").iterdir():
        if entry.suffix == ".py":
            (package / entry.name).symlink_to(entry)
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in mapping.items():
        (package / name.split(".")[-1]).symlink_to(ROOT / folder, target_is_directory=True)
    return tmp


def test_import_linter_contracts_hold(tmp_path):
    tree = installed_layout(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                           str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def layered_modules() -> list[str]:
    """The modules named in the layers contract, top to bottom."""
    [contract] = [c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
                  if c["type"] == "layers"]
    return [name.strip() for layer in contract["layers"] for name in layer.split("|")]


def test_every_module_is_in_a_layer():
    """A module left out of the contract is checked by nothing: every engine module has its layer."""
    modules = {p.stem for p in (ROOT / "ambig_bench").glob("*.py") if p.stem != "__init__"}
    layered = layered_modules()
    assert len(layered) == len(set(layered)), "a module is in two layers"
    assert modules - {"strategies", "datasets"} == set(layered) - {"strategies", "datasets"}


def test_readme_picture_matches_the_contract():
    """README's layers picture lists the contract's layers, in its order."""
    readme = (ROOT / "README.md").read_text()
    picture = readme[readme.index("import-linter contract in `pyproject.toml`"):]
    picture = picture[:picture.index("\n\n", picture.index("    cli"))]
    # Each layer is a line indented four spaces: its modules, then (after two spaces or more) what they do.
    rows = [re.split(r"\s{2,}", line.strip())[0] for line in picture.splitlines()
            if line.startswith("    ") and not line.startswith("     ")]
    names = [name.strip() for row in rows for name in row.split("|")]
    assert names == layered_modules()
