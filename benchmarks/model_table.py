"""The README's model table: every registered ABN model, its blocks, parameters and map size.

    python benchmarks/model_table.py > results/models.md
"""

import torch

import abnet
from abnet.models import model_info
from abnet.models.cifar_resnet import Bottleneck


def main() -> None:
    print("| name | blocks | params (K=100) | plain params (K=100) | map for 32×32 |")
    print("|---|---|---|---|---|")
    for name in sorted(abnet.list_models("*_abn"), key=lambda n: (len(n), n)):
        model = abnet.create_model(name, num_classes=100).eval()
        plain = abnet.create_model(name.removesuffix("_abn"), num_classes=100)
        c, h, w = model_info(name).input_size
        with torch.no_grad():
            size = tuple(model(torch.zeros(1, c, h, w)).attention.shape[2:])
        blocks = "bottleneck" if any(isinstance(m, Bottleneck) for m in model.modules()) else "basic"
        print(f"| `{name}` | {blocks} | {sum(p.numel() for p in model.parameters()):,} | "
              f"{sum(p.numel() for p in plain.parameters()):,} | {size[0]}×{size[1]} |")


if __name__ == "__main__":
    main()
