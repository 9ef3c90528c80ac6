"""Cheap imports: `abnet --help` loads neither torch nor the optional heavy packages, `abnet models` only
torch and the registry, and `import abnet` still offers every public name (imported on first use)."""

import json
import subprocess
import sys

import pytest

import abnet

OPTIONAL = {"matplotlib", "pytorch_grad_cam", "timm"}

# Runs code (the command line on argv, or an import), then prints the top-level packages loaded, as JSON.
SCRIPT = """
import json, sys
{code}
print("\\n" + json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
"""
RUN_CLI = """
from abnet.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
"""


def loaded_by(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(code=code)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["explain", "--help"]])
def test_help_imports_no_torch_and_no_optional_package(argv):
    loaded = loaded_by(RUN_CLI.format(argv=argv))
    assert "abnet" in loaded
    assert not loaded & (OPTIONAL | {"torch", "torchvision"})


def test_models_lists_the_registry_without_optional_packages_or_torchvision():
    loaded = loaded_by(RUN_CLI.format(argv=["models", "resnet20*"]))
    assert "torch" in loaded
    assert not loaded & (OPTIONAL | {"torchvision"})


def test_import_abnet_is_cheap_and_explain_leaves_optional_packages_to_their_functions():
    assert "torch" not in loaded_by("import abnet; abnet.__version__")
    assert not loaded_by("import abnet.explain, abnet.explain.run; abnet.create_model('resnet20_abn')") & OPTIONAL


def test_every_public_name_is_served():
    import importlib

    from abnet import explain as explain_package

    for name in abnet.__all__:
        assert name in dir(abnet)
        if name in abnet._LAZY:
            assert getattr(abnet, name) is getattr(importlib.import_module(abnet._LAZY[name], "abnet"), name)
    assert abnet.explain is explain_package and callable(abnet.explain)
    assert abnet.create_model is abnet.models.create_model and isinstance(abnet.__version__, str)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        abnet.nothing  # noqa: B018
