"""Putting weights into the package: a ``save_pretrained`` folder moved beside ``index.json`` and its entry written.

``benchmarks/ship_pretrained.py`` stages a folder (``save_pretrained(..., dtype=torch.float16)``), measures it, and
then calls :func:`publish`; :func:`~abnet.models.locate.pretrained_folder` reads the result back, checksum first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import AbnetError
from ..fileio import write_text
from .locate import CONFIG_FILE, INDEX_FILE, MODEL_FILE, PRETRAINED_NAME, PretrainedEntry, file_sha256, pretrained_index
from .meta import CheckpointMeta
from .weights import read_state_dict

STORED_DTYPES = ("float16", "float32")


def folder_name(name: str) -> str:
    """The package folder of pretrained ``name``: ``resnet20_abn:cifar10`` -> ``resnet20_abn-cifar10``."""
    if not PRETRAINED_NAME.fullmatch(name):
        raise AbnetError(f"pretrained name {name!r} must be <model>:<data>, e.g. resnet20_abn:cifar10")
    return name.replace(":", "-")


def staging_folder(root: Path, name: str) -> Path:
    """Where the folder of ``name`` is written and measured before :func:`publish` moves it into place."""
    return root / f".{folder_name(name)}.staging"


def stored_dtype(folder: Path) -> str:
    """How a folder's floating weights are stored: ``float16`` or ``float32`` (one type for all of them)."""
    state, _ = read_state_dict(folder)
    kinds = {str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()}
    if len(kinds) != 1 or not kinds <= set(STORED_DTYPES):
        raise AbnetError(f"{folder / MODEL_FILE} stores its floating weights as {', '.join(sorted(kinds)) or 'none'}; "
                         f"ship one of {', '.join(STORED_DTYPES)}")
    return kinds.pop()


def publish(staged: Path, root: Path, name: str, held_out_accuracy: float,
            att_accuracy: float | None) -> PretrainedEntry:
    """Move the measured folder ``staged`` to ``root/<model>-<data>`` (replacing an older one) and record it in
    ``root/index.json`` (written atomically, after the folder is in place); returns the entry."""
    meta = CheckpointMeta.from_dict(json.loads((staged / CONFIG_FILE).read_text()), str(staged))
    if meta.data is None:
        raise AbnetError(f"{staged} does not say which data set it was trained on; a shipped model must")
    target = root / folder_name(name)
    entry = PretrainedEntry(folder=target.name, sha256=file_sha256(staged / MODEL_FILE), data=meta.data,
                            classes=len(meta.classes), held_out_accuracy=held_out_accuracy,
                            att_accuracy=att_accuracy, dtype=stored_dtype(staged),
                            bytes=(staged / MODEL_FILE).stat().st_size)
    listed = pretrained_index(root) if (root / INDEX_FILE).exists() else {}  # a damaged index is refused here
    index = {key: value.to_dict() for key, value in listed.items()}
    shutil.rmtree(target, ignore_errors=True)
    staged.rename(target)
    index[name] = entry.to_dict()
    write_text(root / INDEX_FILE, json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return entry
