"""Layering: data -> models -> engine -> explain -> cli; no module of abnet imports from a layer above its own.

Every module under src/abnet is parsed (not imported), so imports inside functions count too.
"""

import ast
from pathlib import Path

import pytest

import abnet

SRC = Path(abnet.__file__).parent
RANKS = {
    "": 0,  # the package itself: __version__, other names only lazily (see below)
    "errors": 0, "fileio": 0, "metrics": 0,
    "data": 1,
    "models": 2,
    "engine": 3,
    "explain": 4, "deploy": 4,
    "cli": 5, "demo": 5, "__main__": 5,
}


def module_name(path: Path) -> str:
    parts = ["abnet", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def rank(module: str) -> int:
    """The layer of ``abnet.<top>...``. ``abnet.<name>`` that is no module is a name of the package itself:
    ``__version__`` (layer 0), or one its lazy ``__getattr__`` serves, which counts as the module it comes from."""
    parts = module.split(".")
    if len(parts) == 2 and module not in MODULES:
        parts = ["abnet", *abnet._LAZY[parts[1]].lstrip(".").split(".")] if parts[1] in abnet._LAZY else ["abnet"]
    top = parts[1] if len(parts) > 1 else ""
    if top not in RANKS:
        pytest.fail(f"abnet.{top} has no layer; add it to RANKS in {Path(__file__).name}")
    return RANKS[top]


def imported(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every abnet module that ``path`` (module ``name``) imports, absolute or relative;
    ``from X import y`` counts as ``X.y`` (y may be a submodule or a lazily served name)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            found += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
    return [(line, m) for line, m in found if m == "abnet" or m.startswith("abnet.")]


def test_the_layers_know_every_module():
    assert {"abnet.metrics", "abnet.data.images", "abnet.engine.device"} <= set(MODULES)
    for name in MODULES:
        rank(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_its_own(name):
    own = rank(name)
    above = [f"line {line}: {module} (layer {rank(module)})" for line, module in imported(name, MODULES[name])
             if rank(module) > own]
    assert not above, f"{name} (layer {own}) imports from above: {'; '.join(above)}"


def test_the_check_sees_relative_absolute_and_function_level_imports(tmp_path):
    source = ("from ..explain.run import run_explain\nfrom .. import explain\n"
              "def f():\n    import abnet.cli\n    from ..metrics import pointing_game\n")
    path = tmp_path / "engine" / "x.py"
    path.parent.mkdir()
    path.write_text(source)
    found = [m for _, m in imported("abnet.engine.x", path)]
    assert found == ["abnet.explain.run.run_explain", "abnet.explain", "abnet.cli", "abnet.metrics.pointing_game"]
    assert [rank(m) for m in found] == [4, 4, 5, 0]
    assert rank("abnet.create_model") == RANKS["models"]  # a lazily served name counts as where it lives
    assert rank("abnet.__version__") == 0
