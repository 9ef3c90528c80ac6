"""What an exported file says about its model: outputs, input normalisation, input size and class names.

The same record goes into an ONNX file's ``metadata_props`` (one JSON string per key) and into a TorchScript
file as the extra file ``abnet.json``; ``abnet predict`` reads it back to feed an ONNX file without abnet's
checkpoint. It is made from the checkpoint's :class:`~abnet.models.meta.CheckpointMeta`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from .. import __version__
from ..errors import AbnetError
from ..models import ABN
from ..models.meta import CheckpointMeta

METADATA_FILE = "abnet.json"  # the TorchScript extra file holding the record
ABN_OUTPUTS = ("logits", "att_logits", "attention")
PLAIN_OUTPUTS = ("logits",)
INPUT = "images: float32 (N, 3, H, W), RGB scaled to [0, 1], then (x - mean) / std per channel"


@dataclass(frozen=True)
class ExportInfo:
    """How to feed a model and read its outputs.

    outputs:  the output names in order: ``logits, att_logits, attention`` for an ABN, ``logits`` for a plain model.
    num_maps: T, the attention map's channels (1, or one per task of a multi-task ABN); 0 for a plain model.
    """

    model: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: tuple[int, int]  # (height, width)
    multi_label: bool  # a sigmoid per class (attributes) rather than a softmax over classes
    outputs: tuple[str, ...]
    num_maps: int

    @property
    def is_abn(self) -> bool:
        return self.num_maps > 0

    def to_props(self) -> dict[str, str]:
        """The record as ``{key: JSON string}``, plus the abnet version and a description of the input."""
        return {**{k: json.dumps(v) for k, v in asdict(self).items()},
                "abnet_version": json.dumps(__version__), "input": json.dumps(INPUT)}

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str) -> ExportInfo:
        """Read the record from ``{key: JSON string}``; a one-line error naming ``where`` if it is not abnet's."""
        try:
            values = {k: json.loads(props[k]) for k in cls.__dataclass_fields__}
            return cls(model=str(values["model"]), classes=tuple(map(str, values["classes"])),
                       mean=tuple(map(float, values["mean"])), std=tuple(map(float, values["std"])),
                       image_size=(int(values["image_size"][0]), int(values["image_size"][1])),
                       multi_label=bool(values["multi_label"]), outputs=tuple(values["outputs"]),
                       num_maps=int(values["num_maps"]))
        except KeyError as err:
            raise AbnetError(f"{where} was not exported by abnet: its metadata lacks {err}; export it with "
                             "`abnet export`") from None
        except (TypeError, ValueError, IndexError) as err:
            raise AbnetError(f"{where} has unreadable abnet metadata ({err})") from None


def export_info(model: nn.Module, meta: CheckpointMeta | Mapping[str, Any]) -> ExportInfo:
    """The record for ``model`` and its checkpoint metadata (a stored record as a dict is read and checked by
    :meth:`CheckpointMeta.from_dict`)."""
    meta = CheckpointMeta.of(meta, "the metadata to export")
    num_maps = model.attention_branch.map_conv.out_channels if isinstance(model, ABN) else 0
    return ExportInfo(model=meta.model_name, classes=meta.classes, mean=meta.mean, std=meta.std,
                      image_size=meta.image_size, multi_label=meta.multi_label or num_maps > 1,
                      outputs=ABN_OUTPUTS if num_maps else PLAIN_OUTPUTS, num_maps=num_maps)
