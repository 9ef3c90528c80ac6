"""Is the model ever starved of data? CIFAR-format data, same run, same machine:

1. augmented images/s that abnet's in-memory loader delivers (batched crop + flip + normalise on
   uint8 tensors) against per-sample PIL transforms in a 2-worker DataLoader (the research code's way);
2. that rate against the resnet20_abn training-step rate (goal: >= 20x, so data is never the bottleneck);
3. a whole epoch of `abnet train --model resnet20_abn --data cifar10` against a plain eager loop
   (the eager reference ABN-ResNet20 of train_step.py) fed by the per-sample path.

    python ../shared/data/cifar10_build.py /tmp/cifar      # CIFAR-10 in its official layout
    python benchmarks/data_pipeline.py --root /tmp/cifar [--epoch-images 2560]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from train_step import ReferenceABNResNet20

import abnet
from abnet.data.registry import DataOptions, data_spec, load_dataset, make_loader
from abnet.engine.config import TrainConfig
from abnet.engine.evaluate import model_loss
from abnet.engine.train import train

BATCH = 128


def per_sample_loader(data, n: int, workers: int = 2) -> torch.utils.data.DataLoader:
    """The research code's input pipeline: PIL image -> torchvision transforms, one sample at a time."""
    import torchvision.transforms as T

    spec = data_spec("cifar10")
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    pixels = data.images[:n].permute(0, 2, 3, 1).numpy()
    labels = data.labels[:n].tolist()

    class PerSample(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return transform(Image.fromarray(pixels[i])), labels[i]

    return torch.utils.data.DataLoader(PerSample(), batch_size=BATCH, shuffle=True, num_workers=workers)


def images_per_s(batches) -> float:
    seen, start = 0, time.perf_counter()
    for batch in batches:
        labels = batch.labels if hasattr(batch, "labels") else batch[1]
        seen += len(labels)
    return seen / (time.perf_counter() - start)


def step_rate(steps: int = 8) -> float:
    model = abnet.create_model("resnet20_abn", num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = model_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - start)


def naive_epoch(data, n: int) -> float:
    """Images/s of an eager research-style epoch: per-sample loader + reference model, fp32, channels-first."""
    torch.manual_seed(0)
    model = ReferenceABNResNet20(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    seen, start = 0, time.perf_counter()
    for x, y in per_sample_loader(data, n):
        att, logits, _ = model(x)
        loss = F.cross_entropy(att, y) + F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def abnet_epoch(root: Path, n: int) -> float:
    """Images/s of one training epoch of `abnet train` (its own timing of the training loop)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model="resnet20_abn", data="cifar10", data_root=str(root), out=out, epochs=1,
                          limit_train=n, limit_val=256, nesterov=False, label_smoothing=0.0)  # the reference's SGD
        return train(cfg, progress=False)["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--loader-images", type=int, default=45_000, help="images per loader measurement")
    parser.add_argument("--epoch-images", type=int, default=2560, help="images per end-to-end epoch")
    parser.add_argument("--repeats", type=int, default=3, help="loader measurements per path (median)")
    args = parser.parse_args()

    data = load_dataset("cifar10", "train", options=DataOptions(root=Path(args.root), val_fraction=0.1))
    fast = make_loader(data.subset(slice(0, args.loader_images)), data_spec("cifar10"), BATCH, train=True,
                       channels_last=True)
    # Alternate the two paths, median of --repeats: this VM's speed drifts by tens of percent.
    rates = [(images_per_s(fast.epoch(r)), images_per_s(per_sample_loader(data, min(args.loader_images, 10_000))))
             for r in range(args.repeats)]
    fast_rate, slow_rate = (statistics.median(r[i] for r in rates) for i in (0, 1))
    step = step_rate()
    naive = naive_epoch(data, args.epoch_images)
    ours = abnet_epoch(Path(args.root), args.epoch_images)
    print(json.dumps({
        "benchmark": "data_pipeline", "data": "cifar10", "batch": BATCH,
        "loader_images_per_s": round(fast_rate), "per_sample_pil_images_per_s": round(slow_rate),
        "loader_vs_per_sample": round(fast_rate / slow_rate, 1),
        "train_step_images_per_s": round(step, 1), "loader_vs_train_step": round(fast_rate / step, 1),
        "epoch_images": args.epoch_images, "abnet_epoch_images_per_s": round(ours, 1),
        "naive_epoch_images_per_s": round(naive, 1), "epoch_ratio": round(ours / naive, 2),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
