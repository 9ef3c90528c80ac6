"""One answer to "which files does this name mean?" for everything that accepts a checkpoint.

A source is a run folder (its ``best.safetensors``, else ``last.pt``), a checkpoint file, a
``save_pretrained`` folder (``config.json`` + ``model.safetensors``), ``owner/name`` in the local
Hugging Face cache, or a pretrained name such as ``resnet20_abn:cifar10``. Nothing here touches the
network: a model missing from the cache is an error that says where abnet looked.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

WEIGHTS_FILE = "best.safetensors"  # a run folder's best weights
STATE_FILE = "last.pt"  # a run folder's resumable training state
CONFIG_FILE = "config.json"  # a save_pretrained folder's metadata ...
MODEL_FILE = "model.safetensors"  # ... and its weights
ACCEPTED = ("a run folder, last.pt, best.safetensors, a save_pretrained or convert folder, owner/name from the "
            "local Hugging Face cache, or a pretrained name")

# Weights shipped in the package, by "<model>:<data>" (filled by a later issue; see pretrained_folder).
PRETRAINED: dict[str, str] = {}
_PRETRAINED_NAME = re.compile(r"[\w.+-]+:[\w.+-]+")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class CheckpointFiles:
    """Where a checkpoint's weights are, and its metadata when that is not inside the weights file."""

    weights: Path
    config: Path | None = None  # config.json of a save_pretrained folder


def locate_checkpoint(source: str | os.PathLike[str]) -> CheckpointFiles:
    """The files ``source`` names (see the module docstring); a one-line :class:`CheckpointError` if none."""
    path = Path(source)
    if path.is_dir():
        return _folder_files(path)
    if path.is_file():
        config = path.parent / CONFIG_FILE
        return CheckpointFiles(path, config if path.name == MODEL_FILE and config.is_file() else None)
    text = str(source)
    if _PRETRAINED_NAME.fullmatch(text):
        return _folder_files(pretrained_folder(text))
    if _REPO_ID.fullmatch(text):
        return _folder_files(hf_snapshot(text, f"{text} is not a file or folder, and"))
    raise CheckpointError(f"checkpoint {text} does not exist; pass {ACCEPTED}")


def pretrained_folder(name: str) -> Path:
    """The folder of the weights shipped as ``name`` (e.g. ``resnet20_abn:cifar10``)."""
    if name not in PRETRAINED:
        raise CheckpointError(f"no pretrained weights named {name!r}; known: {', '.join(PRETRAINED) or '(none yet)'}")
    return Path(__file__).resolve().parent.parent / PRETRAINED[name]


def hf_hub_cache() -> Path:
    """The local Hugging Face hub cache, found the way huggingface_hub finds it (without importing it)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def hf_snapshot(repo_id: str, prefix: str = "") -> Path:
    """The cached snapshot of model ``repo_id`` (``owner/name``): the one ``refs/main`` names, else the only one.

    ``prefix`` starts the not-found message (e.g. "X is not a file or folder, and").
    """
    repo = hf_hub_cache() / f"models--{repo_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    main = repo / "refs" / "main"
    revision = main.read_text().strip() if main.is_file() else ""
    if revision and (snapshots / revision).is_dir():
        return snapshots / revision
    found = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    if len(found) == 1:
        return found[0]
    if found:
        raise CheckpointError(f"{repo} holds {len(found)} snapshots of {repo_id} and no refs/main; pass the "
                              "snapshot folder you want")
    lead = f"{prefix} model" if prefix else "model"
    raise CheckpointError(f"{lead} {repo_id} is not in the local Hugging Face cache (looked in {snapshots}/; "
                          "set HF_HUB_CACHE or HF_HOME to another cache); abnet never downloads")


def _folder_files(folder: Path) -> CheckpointFiles:
    """A save_pretrained folder's files, or a run folder's best weights (else its training state)."""
    if (folder / CONFIG_FILE).is_file() and (folder / MODEL_FILE).is_file():
        return CheckpointFiles(folder / MODEL_FILE, folder / CONFIG_FILE)
    for name in (WEIGHTS_FILE, STATE_FILE):
        if (folder / name).is_file():
            return CheckpointFiles(folder / name)
    raise CheckpointError(f"{folder} is a folder without {CONFIG_FILE} + {MODEL_FILE}, {WEIGHTS_FILE} or "
                          f"{STATE_FILE}; pass {ACCEPTED}")
