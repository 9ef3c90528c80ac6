"""One answer to "which files does this name mean?" for everything that accepts a checkpoint.

A source is a run folder (its ``best.safetensors``, else ``last.pt``), a checkpoint file, a
``save_pretrained`` folder (``config.json`` + ``model.safetensors``), ``owner/name`` in the local
Hugging Face cache, or a pretrained name such as ``resnet20_abn:cifar10``. Nothing here touches the
network: a model missing from the cache is an error that says where abnet looked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

WEIGHTS_FILE = "best.safetensors"  # a run folder's best weights
STATE_FILE = "last.pt"  # a run folder's resumable training state
CONFIG_FILE = "config.json"  # a save_pretrained folder's metadata ...
MODEL_FILE = "model.safetensors"  # ... and its weights
ACCEPTED = ("a run folder, last.pt, best.safetensors, a save_pretrained or convert folder, owner/name from the "
            "local Hugging Face cache, or a pretrained name")

# Weights shipped in the package: PRETRAINED_ROOT/index.json names each "<model>:<data>" and its folder there.
PRETRAINED_ROOT = Path(__file__).resolve().parent.parent / "pretrained"  # tests point it at a folder of their own
INDEX_FILE = "index.json"
REINSTALL = "reinstall abnet (pip install --force-reinstall abnet)"
PRETRAINED_NAME = re.compile(r"[\w.+-]+:[\w.+-]+")
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
    if PRETRAINED_NAME.fullmatch(text):
        return _folder_files(pretrained_folder(text))
    if _REPO_ID.fullmatch(text):
        return _folder_files(hf_snapshot(text, f"{text} is not a file or folder, and"))
    raise CheckpointError(f"checkpoint {text} does not exist; pass {ACCEPTED}")


@dataclass(frozen=True)
class PretrainedEntry:
    """One entry of the shipped index: where the weights are, their checksum, and what they were measured at."""

    folder: str  # a save_pretrained folder beside index.json, "<model>-<data>"
    sha256: str  # of the folder's model.safetensors
    data: str
    classes: int
    held_out_accuracy: float  # perception branch, on the held-out split, with the weights as stored
    att_accuracy: float | None  # attention branch; None for a plain model
    dtype: str  # how the floating tensors are stored: "float16" or "float32"
    bytes: int  # size of model.safetensors

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def pretrained_index(root: Path | None = None) -> dict[str, PretrainedEntry]:
    """The weights shipped in the package, by name (``resnet20_abn:cifar10``), as ``index.json`` in ``root``
    (default :data:`PRETRAINED_ROOT`) lists them; read once per version of the file."""
    path = (PRETRAINED_ROOT if root is None else root) / INDEX_FILE
    try:
        stat = path.stat()
    except OSError:
        raise CheckpointError(f"abnet's index of pretrained weights {path} is missing; {REINSTALL}") from None
    return _read_index(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _read_index(path: Path, mtime_ns: int, size: int) -> dict[str, PretrainedEntry]:
    """index.json checked entry by entry (``mtime_ns`` and ``size`` only key the cache)."""
    def damaged(why: str) -> CheckpointError:
        return CheckpointError(f"abnet's index of pretrained weights {path} is damaged ({why}); {REINSTALL}")

    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged(f"not readable JSON: {type(err).__name__}") from None
    if not isinstance(raw, dict):
        raise damaged("not a JSON object")
    types = {"folder": str, "sha256": str, "data": str, "classes": int, "held_out_accuracy": (int, float),
             "att_accuracy": (int, float, type(None)), "dtype": str, "bytes": int}
    index = {}
    for name, entry in raw.items():
        if not PRETRAINED_NAME.fullmatch(name) or not isinstance(entry, dict):
            raise damaged(f"entry {name!r} is not a <model>:<data> name with an object")
        bad = [key for key, kind in types.items() if not isinstance(entry.get(key, ...), kind)
               or isinstance(entry.get(key), bool)]
        if bad or Path(entry["folder"]).name != entry["folder"] or entry["folder"] in ("", ".", ".."):
            raise damaged(f"entry {name!r} has no valid {', '.join(bad) or 'folder'}")
        index[name] = PretrainedEntry(**{key: entry[key] for key in types})
    return index


def pretrained_folder(name: str) -> Path:
    """The folder of the weights shipped as ``name`` (e.g. ``resnet20_abn:cifar10``), once its model.safetensors
    is checked against the sha256 the index records (a one-line :class:`CheckpointError` if it is not)."""
    index = pretrained_index()
    if name not in index:
        known = ", ".join(index) if index else "(none yet); `abnet pretrained` lists the shipped weights"
        raise CheckpointError(f"no pretrained weights named {name!r}; known: {known}")
    folder = PRETRAINED_ROOT / index[name].folder
    weights = folder / MODEL_FILE
    if not weights.is_file() or file_sha256(weights) != index[name].sha256:
        why = f"its sha256 is not the one {INDEX_FILE} records" if weights.is_file() else "the file is missing"
        raise CheckpointError(f"{weights}, the weights of pretrained {name}, is damaged ({why}); {REINSTALL}")
    return folder


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
