"""``abnet convert``: weights trained elsewhere (the ABN research code's ``model_best.pth.tar``, a plain state
dict) as a ``save_pretrained`` folder that carries what the weights need to be used: the research code's
input normalisation and, given the data set, its class names. An abnet checkpoint keeps its own."""

from __future__ import annotations

import os
from pathlib import Path

from ..data.registry import IMAGENET_MEAN, IMAGENET_STD, DataOptions, data_spec, load_dataset
from ..errors import AbnetError
from .hub import check_target, save_pretrained
from .meta import CheckpointMeta
from .registry import create_model, model_info

# The research code's input normalisation by input size: cifar.py uses one mean/std for CIFAR-10 and
# CIFAR-100 (its std is not the usual per-pixel one); imagenet.py uses the usual ImageNet values.
RESEARCH_NORMALISATION = {
    32: ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    224: (IMAGENET_MEAN, IMAGENET_STD),
}

# Class names as the data sets' official meta files list them (batches.meta, meta: fine_label_names),
# so CIFAR checkpoints convert without the data on disk.
OFFICIAL_CLASSES = {
    "cifar10": "airplane automobile bird cat deer dog frog horse ship truck".split(),
    "cifar100": """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
        camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
        dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard
        lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
        pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark
        shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
        television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split(),
}


def convert_checkpoint(
    file: str | os.PathLike[str], model: str, num_classes: int, out: str | os.PathLike[str], data: str | None = None,
    data_root: str | os.PathLike[str] | None = None, license: str | None = None, overwrite: bool = False,
) -> Path:
    """Build ``model`` with the weights of ``file`` and write it to the folder ``out``; returns the folder.

    Weights trained elsewhere get the research code's input normalisation and, without ``data``, the class
    names 0..K-1. An abnet checkpoint keeps its own metadata (normalisation, class names, data set, figures).
    Raises a one-line :class:`AbnetError` before writing anything if the model, the data set or the weights
    do not fit.
    """
    folder = check_target(out, overwrite)
    net = create_model(model, num_classes=num_classes, weights=str(file))
    own: CheckpointMeta | None = getattr(net, "abnet_meta", None)
    if own is not None:
        if data is not None and data != own.data:
            raise AbnetError(f"{file} is abnet's {own.model_name} trained on {own.data or 'unrecorded data'}, not "
                             f"{data}; leave out --data (its own class names and normalisation are kept)")
        return save_pretrained(net, folder, own, overwrite=overwrite, license=license or own.license)
    size = model_info(model).input_size[1]
    if size not in RESEARCH_NORMALISATION:
        raise AbnetError(f"{model} reads {size} x {size} images; abnet convert knows the research code's input "
                         "normalisation for 32 x 32 (CIFAR) and 224 x 224 (ImageNet) models only")
    classes = class_names(data, num_classes, data_root) if data else [str(i) for i in range(num_classes)]
    mean, std = RESEARCH_NORMALISATION[size]
    return save_pretrained(net, folder, overwrite=overwrite, classes=classes, mean=mean, std=std,
                           image_size=(size, size), data=data, converted_from=Path(file).name, license=license)


def class_names(data: str, num_classes: int, data_root: str | os.PathLike[str] | None = None) -> list[str]:
    """The class names of data set ``data``: read from ``data_root`` when given, else the official CIFAR lists
    or a generated set's; a one-line error if there are not ``num_classes`` of them."""
    spec = data_spec(data)
    if data_root is not None or (not spec.needs_root and data not in OFFICIAL_CLASSES):
        options = DataOptions(root=Path(data_root) if data_root is not None else None)
        names = list(load_dataset(data, spec.eval_split(options), 1, options).classes)
    elif data in OFFICIAL_CLASSES:
        names = OFFICIAL_CLASSES[data]
    else:
        raise AbnetError(f"the class names of {data} are read from its files: pass --data-root DIR "
                         f"(a folder holding {spec.layout})")
    if len(names) != num_classes:
        raise AbnetError(f"{data} has {len(names)} classes but --num-classes is {num_classes}; give the number the "
                         "weights were trained for and the data set they were trained on")
    return names
