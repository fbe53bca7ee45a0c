"""House rules that keep the architecture honest."""
from __future__ import annotations

import pytest

import ast
import subprocess
import sys
from pathlib import Path



REPO = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CORE = ("starfile", "cryosparc", "relion_ext", "cryosparc_ext")
# folder -> the package it installs as (pyproject.toml)
PACKAGES = {"core": "cryolens.core", "relion_ext": "cryolens.relion_ext", "cryosparc_ext": "cryolens.cryosparc_ext",
            "cryolens": "cryolens"}
# capability code that scores a user's data: it must not run the phantom simulator
SCORING = ("core/identify/score.py", "core/identify/model.py", "core/identify/library.py",
           *(f"core/rank/{p.name}" for p in sorted((REPO / "core" / "rank").glob("*.py")) if p.name != "train.py"))


def _module(path: Path) -> str:
    """The installed module name of a source file (core/jobs/base.py -> cryolens.core.jobs.base)."""
    top, *rest = path.relative_to(REPO).with_suffix("").parts
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([PACKAGES[top], *rest])


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, relative imports resolved
    (``from ..errors import X`` in core/jobs/base.py -> cryolens.core.errors, cryolens.core.errors.X)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module
            names.add(name)
            names.update(f"{name}.{a.name}" for a in node.names)  # `from . import simulate` names a module
    return names


def _is_command_line(name: str) -> bool:
    """The command-line package: cryolens and its modules outside core, relion_ext and cryosparc_ext."""
    parts = name.split(".")
    return parts[0] == "cryolens" and (len(parts) == 1 or parts[1] not in ("core", "relion_ext", "cryosparc_ext"))


def _offenders(folders, bad) -> list[str]:
    return [f"{py.relative_to(REPO)} imports {name}" for folder in folders for py in sorted((REPO / folder).rglob("*.py"))
            for name in sorted(_imports(py)) if bad(name)]


def test_core_never_imports_file_format_libraries():
    offenders = _offenders(["core"], lambda name: any(p in FORBIDDEN_IN_CORE for p in name.split(".")))
    assert not offenders, "\n".join(offenders)


def test_core_never_imports_the_command_line():
    offenders = _offenders(["core"], _is_command_line)
    assert not offenders, "\n".join(offenders)


def test_adapters_never_import_the_command_line():
    offenders = _offenders(["relion_ext", "cryosparc_ext"], _is_command_line)
    assert not offenders, "\n".join(offenders)


def test_scoring_never_imports_the_simulator():
    offenders = [f"{rel} imports {name}" for rel in SCORING for name in sorted(_imports(REPO / rel))
                 if name.startswith("cryolens.core.simulate")]
    assert not offenders, "\n".join(offenders)


def test_every_command_is_a_module_with_an_example():
    from cryolens.cli import commands

    found = commands()
    assert {"info", "convert", "example", "simulate", "library", "train", "jobs", "run"} <= set(found)
    for name, mod in found.items():
        assert "Example usage" in (mod.__doc__ or ""), name
        assert callable(mod.add_args) and callable(mod.main), name


@pytest.mark.slow
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
