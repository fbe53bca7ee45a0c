"""House rules that keep the architecture honest."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("starfile", "cryosparc", "relion_ext", "cryosparc_ext")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_never_imports_file_format_libraries():
    offenders = []
    for py in sorted((REPO / "core").rglob("*.py")):
        for name in _imports(py):
            parts = name.split(".")
            if any(p in FORBIDDEN_IN_CORE for p in parts):
                offenders.append(f"{py.relative_to(REPO)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_importing_all_of_core_loads_neither_starfile_nor_cryosparc():
    mods = sorted("cryolens.core." + ".".join(p.relative_to(REPO / "core").with_suffix("").parts)
                  for p in (REPO / "core").rglob("*.py") if p.name != "__init__.py")
    code = ("import sys, importlib\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('starfile', 'cryosparc')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_packages_install_under_the_cryolens_namespace():
    import cryolens.core
    import cryolens.cryosparc_ext
    import cryolens.relion_ext

    assert Path(cryolens.core.__file__).resolve().parent == REPO / "core"
    assert Path(cryolens.relion_ext.__file__).resolve().parent == REPO / "relion_ext"
    # no top-level package named `core` is installed (run outside the repo: cwd is on sys.path)
    res = subprocess.run([sys.executable, "-c", "import core"], cwd=REPO.parent, capture_output=True, text=True)
    assert res.returncode != 0 and "No module named 'core'" in res.stderr


def test_required_layout_exists():
    for name in ("pyproject.toml", "core", "relion_ext", "cryosparc_ext", "tests", "install", "README.md",
                 "LICENSE", "Makefile", ".ci/run", "bench"):
        assert (REPO / name).exists(), name
    assert "BSD 3-Clause" in (REPO / "LICENSE").read_text()
