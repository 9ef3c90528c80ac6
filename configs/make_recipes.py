"""Write the paper's training recipes as JSON configs for `abnet train --config FILE`.

Schedules come from the ABN research code's commands (github.com/machine-perception-robotics-group/
attention_branch_network, README.md and TRAINING.md, which follow bearpaw/pytorch-classification;
its defaults: SGD, momentum 0.9, lr 0.1, batch 128 for CIFAR, 256 for ImageNet). Pass the data with
`--data-root`; every other setting can be overridden by a flag.

    python configs/make_recipes.py        # rewrites configs/*.json
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
ABN_README = "ABN research code README.md (cifar.py ... --epochs 300 --schedule 150 225 --gamma 0.1 --wd 1e-4)"
TRAINING_MD = "ABN research code TRAINING.md"

CIFAR = {  # family -> (model, settings, source)
    "resnet110": ("resnet110", dict(epochs=300, milestones=[150, 225], weight_decay=1e-4), ABN_README),
    "wrn28_10": ("wrn28_10", dict(epochs=200, milestones=[60, 120, 160], gamma=0.2, weight_decay=5e-4),
                 TRAINING_MD + ", WRN-28-10-drop (--drop 0.3 is the model's default)"),
    "densenet100": ("densenet100", dict(epochs=300, milestones=[150, 225], weight_decay=1e-4, batch_size=64),
                    TRAINING_MD + ", DenseNet-BC (L=100, k=12)"),
    "resnext29_8x64d": ("resnext29_8x64d", dict(epochs=300, milestones=[150, 225], weight_decay=5e-4),
                        TRAINING_MD + ", ResNeXt-29 8x64d (epochs: cifar.py's default 300)"),
}
IMAGENET = {  # the Table 2 ImageNet rows
    "resnet152": "resnet152", "se_resnet101": "se_resnet101", "vgg16_bn": "vgg16_bn",
}


def recipe(model: str, data: str, source: str, **settings) -> dict:
    """A paper recipe: the research code's SGD and step schedule, with every later abnet option pinned off, so a
    change of abnet's defaults leaves it as published."""
    return {"model": model, "data": data, "schedule": "step", "lr": 0.1, "momentum": 0.9, "batch_size": 128,
            "warmup_epochs": 0.0, "nesterov": False, "label_smoothing": 0.0, "eval_flip": False, "source": source,
            **settings}


# abnet's fast CPU recipe for CIFAR-10: the precision study's recipe (benchmarks/recipe_study.py's FAST), as many
# epochs as fit 30 minutes on 2 cores with bf16 (about 75 s each at 600 images/s), evaluated every 5th epoch.
FAST_CIFAR10 = {"model": "resnet20_abn", "data": "cifar10", "epochs": 20, "batch_size": 128, "lr": 0.2,
                "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1.0,
                "label_smoothing": 0.1, "eval_flip": True, "eval_every": 5, "val_split": "test", "precision": "auto",
                "source": "abnet recipe study (results/recipe_study.md): cosine after 1 warm-up epoch, Nesterov, "
                          "label smoothing 0.1, flip TTA, bf16 where the CPU has it; 20 epochs fit 30 minutes on "
                          "2 cores with bf16"}


def write(name: str, config: dict) -> None:
    (HERE / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    for depth in (20, 32, 44, 56, 110):  # Table 1: what the perception branch reads, CIFAR-100
        for mask in ("none", "multiply", "residual"):
            write(f"table1_cifar100_resnet{depth}_{mask}", recipe(
                f"resnet{depth}_abn", "cifar100", ABN_README, mask=mask, epochs=300, milestones=[150, 225],
                weight_decay=1e-4))
    for data in ("cifar10", "cifar100", "svhn"):  # Table 2, CIFAR-size rows
        for family, (model, settings, source) in CIFAR.items():
            if data == "svhn":
                source += "; SVHN has no published recipe: the CIFAR schedule, without flips"
            for suffix in ("", "_abn"):
                write(f"table2_{data}_{family}{suffix}", recipe(model + suffix, data, source, **settings))
    for family, model in IMAGENET.items():  # Table 2, ImageNet rows
        for suffix in ("", "_abn"):
            write(f"table2_imagenet_{family}{suffix}", recipe(
                model + suffix, "imagefolder", ABN_README.replace(
                    "cifar.py ... --epochs 300 --schedule 150 225 --gamma 0.1 --wd 1e-4",
                    "imagenet.py -a resnet152 --epochs 90 --schedule 31 61 --gamma 0.1"),
                epochs=90, milestones=[31, 61], weight_decay=1e-4, batch_size=256, image_size=224, workers=8))
    write("finegrained_resnet101_abn", recipe(
        "tv:resnet101_abn", "imagefolder", "CompCars fine-tuning (paper, ResNet101+ABN from ImageNet weights); the "
        "paper gives no schedule: a common fine-tuning one (lr 0.01, x0.1 at epochs 30 and 40 of 50)",
        pretrained=True, lr=0.01, epochs=50, milestones=[30, 40], weight_decay=1e-4, batch_size=32,
        image_size=224, workers=8))
    write("fast_cifar10_resnet20_abn", FAST_CIFAR10)
    write("celeba_resnet101_abn_mt", recipe(
        "resnet101_abn_mt", "celeba", "Multi-task ABN on CelebA's 40 attributes (paper); no published backbone or "
        "schedule: ResNet-101 as in the paper's fine-grained rows, the ImageNet recipe's SGD shortened to 30 "
        "epochs (x0.1 at 15 and 25), one perception branch shared by the 40 attributes (40 own branches "
        "would be 600 M parameters), positives weighted per attribute", shared_perception=True,
        pos_weight="balanced", epochs=30, milestones=[15, 25], weight_decay=1e-4, batch_size=64, image_size=224,
        workers=8))


if __name__ == "__main__":
    main()
