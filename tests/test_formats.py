"""Every on-disk data set: a tiny copy written in its official format, loaded through the API and the CLI."""

import gzip
import json
import logging
import pickle

import numpy as np
import pytest
import torch
from conftest import save_random_image
from PIL import Image

from abnet.cli import main
from abnet.data.registry import DATASETS, DataOptions, data_spec, load_dataset
from abnet.errors import DataError

RNG = np.random.default_rng(0)


def cifar10(root, n_train=50, n_test=20, protocol=2, bytes_keys=False):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)

    def batch(name, n, offset):
        labels = [(i + offset) % 10 for i in range(n)]
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({key("data"): data, key("labels"): labels,
                                                  key("batch_label"): name}, protocol=protocol))
        return data, labels

    train = [batch(f"data_batch_{i}", n_train // 5, i) for i in range(1, 6)]
    test = batch("test_batch", n_test, 0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({key("label_names"): names}, protocol=protocol))
    return train, test


def cifar100(root, n=40):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        fine = [i % 100 for i in range(n)]
        (folder / name).write_bytes(pickle.dumps({
            "data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine]}, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)],
                                                "coarse_label_names": [f"c{i}" for i in range(20)]}))


def svhn(root, n=30):
    from scipy.io import savemat

    for name in ("train_32x32.mat", "test_32x32.mat"):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 10 is the digit 0
        savemat(str(root / name), {"X": x, "y": y})


def fashion_mnist(root, n=30, compress=True):
    def idx(path, array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        raw = header + array.astype(np.uint8).tobytes()
        (root / (path + (".gz" if compress else ""))).write_bytes(gzip.compress(raw) if compress else raw)

    for prefix in ("train", "t10k"):
        idx(f"{prefix}-images-idx3-ubyte", RNG.integers(0, 256, (n, 28, 28)))
        idx(f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def image_folder(root, size=40, per_class=6, val=True):
    for split in ("train", "val") if val else ("train",):
        for c, name in enumerate(("cat", "dog", "eel")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                save_random_image(d / f"{i}.{'png' if (i + c) % 2 else 'jpg'}", (size, size + 4, 3), RNG)


ATTRS = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Smiling", "Eyeglasses"]


def celeba(root, n=24):
    (root / "img_align_celeba").mkdir(parents=True)
    rows, parts = [], []
    for i in range(1, n + 1):
        name = f"{i:06d}.jpg"
        save_random_image(root / "img_align_celeba" / name, (54, 44, 3), RNG)
        rows.append(name + "".join(f" {v:2d}" for v in RNG.choice([-1, 1], len(ATTRS))))
        parts.append(f"{name} {0 if i <= n // 2 else 1 if i <= 3 * n // 4 else 2}")
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(ATTRS)}\n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")


@pytest.fixture
def root(tmp_path):
    return tmp_path


def test_cifar10_python2_style_pickles(root):
    train, test = cifar10(root)
    o = DataOptions(root=root)
    full = torch.cat([load_dataset("cifar10", "train", options=o).images, load_dataset("cifar10", "val", options=o)
                      .images])
    assert full.shape == (50, 3, 32, 32)
    ts = load_dataset("cifar10", "test", options=o)
    assert torch.equal(ts.images, torch.from_numpy(test[0]).view(-1, 3, 32, 32))
    assert ts.labels.tolist() == test[1] and ts.classes[0] == "airplane"


@pytest.mark.parametrize("protocol, bytes_keys", [(2, True), (4, True), (5, False)])
def test_cifar10_repacked_pickles_load(root, protocol, bytes_keys):
    cifar10(root, protocol=protocol, bytes_keys=bytes_keys)
    assert len(load_dataset("cifar10", "test", options=DataOptions(root=root))) == 20


def test_val_split_is_deterministic_and_disjoint(root):
    cifar10(root, n_train=100)
    o = DataOptions(root=root, val_fraction=0.2)
    train, val = load_dataset("cifar10", "train", options=o), load_dataset("cifar10", "val", options=o)
    assert len(train) == 80 and len(val) == 20
    rows = {tuple(x.flatten()[:16].tolist()) for x in train.images}
    assert not any(tuple(x.flatten()[:16].tolist()) in rows for x in val.images)
    assert torch.equal(val.images, load_dataset("cifar10", "val", options=o).images)
    assert len(load_dataset("cifar10", "train", limit=7, options=o)) == 7


def test_malicious_cifar_pickle_is_refused(root):
    cifar10(root)

    class Exploit:
        def __reduce__(self):
            return (exec, (f"open({str(root / 'pwned')!r}, 'w').write('x')",))

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Exploit()}))
    with pytest.raises(DataError, match="refusing to load builtins.exec"):
        load_dataset("cifar10", "test", options=DataOptions(root=root))
    assert not (root / "pwned").exists()


def test_cifar10_bad_labels_and_truncated_file(root):
    cifar10(root)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [3, 12]}))
    with pytest.raises(DataError, match="label 12 .* outside 0..9"):
        load_dataset("cifar10", "test", options=DataOptions(root=root))
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [3, 1]})[:-20])
    with pytest.raises(DataError, match="test_batch is not a readable CIFAR batch"):
        load_dataset("cifar10", "test", options=DataOptions(root=root))


def test_cifar100_fine_and_coarse(root):
    cifar100(root)
    fine = load_dataset("cifar100", "test", options=DataOptions(root=root))
    coarse = load_dataset("cifar100", "test", options=DataOptions(root=root, coarse=True))
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert (coarse.labels == fine.labels // 5).all() and fine.classes[3] == "f3"


def test_svhn_mat_files(root):
    svhn(root)
    data = load_dataset("svhn", "test", options=DataOptions(root=root))
    assert data.images.shape == (30, 3, 32, 32) and data.labels[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_files(root, compress):
    fashion_mnist(root, compress=compress)
    data = load_dataset("fashion-mnist", "test", options=DataOptions(root=root))
    assert data.images.shape == (30, 3, 28, 28) and torch.equal(data.images[:, 0], data.images[:, 2])
    assert data.classes[9] == "Ankle boot"


def test_fashion_mnist_truncated_idx_is_named(root):
    fashion_mnist(root, compress=False)
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is truncated"):
        load_dataset("fashion-mnist", "test", options=DataOptions(root=root))


def test_image_folder_in_memory_with_odd_files(root, caplog):
    image_folder(root)
    d = root / "train" / "cat"
    save_random_image(d / "grey.png", (20, 20), RNG)
    save_random_image(d / "rgba.png", (20, 20, 4), RNG)
    Image.fromarray(RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("P").save(d / "palette.png")
    Image.fromarray(RNG.integers(0, 65535, (20, 20), dtype=np.uint16)).save(d / "deep.png")
    (d / "corrupt.jpg").write_bytes(b"not an image")
    good = (root / "train" / "dog" / "1.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="abnet"):
        data = load_dataset("imagefolder", "train", options=DataOptions(root=root, image_size=32))
    assert data.images.shape == (18 + 4, 3, 32, 32) and data.classes == ["cat", "dog", "eel"]
    assert "skipped 2 of 24" in caplog.text and "corrupt.jpg" in caplog.text and "truncated.jpg" in caplog.text


def test_image_folder_single_folder_is_split_by_fraction(root):
    image_folder(root, val=False, per_class=10)
    o = DataOptions(root=root, image_size=16, val_fraction=0.2)
    assert len(load_dataset("imagefolder", "train", options=o)) == 24
    assert len(load_dataset("imagefolder", "val", options=o)) == 6


def test_image_folder_streams_large_images(root):
    from abnet.data.folder import FolderIndex
    from abnet.data.registry import make_loader

    image_folder(root, size=80)
    o = DataOptions(root=root, image_size=72)
    index = load_dataset("imagefolder", "train", options=o)
    assert isinstance(index, FolderIndex) and len(index) == 18
    loader = make_loader(index, data_spec("imagefolder"), 8, train=True, seed=1, workers=1)
    first = [(b.images.clone(), b.labels.clone()) for b in loader.epoch(0)]
    again = [(b.images.clone(), b.labels.clone()) for b in loader.epoch(0)]
    assert [x.shape for x, _ in first] == [(8, 3, 72, 72), (8, 3, 72, 72), (2, 3, 72, 72)]
    assert all(torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(first, again))
    other = [b.images for b in loader.epoch(1)]
    assert not torch.equal(first[0][0], other[0])


def test_empty_class_folder_is_named(root):
    image_folder(root)
    (root / "train" / "fox").mkdir()
    with pytest.raises(DataError, match="fox holds no images"):
        load_dataset("imagefolder", "train", options=DataOptions(root=root, image_size=32))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "fashion-mnist", "imagefolder", "celeba"])
def test_missing_data_set_says_where_files_go(root, name):
    with pytest.raises(DataError, match="pass --data-root"):
        load_dataset(name)
    with pytest.raises(DataError, match="expected"):
        load_dataset(name, "train" if name == "imagefolder" else "test", options=DataOptions(root=root))


def test_celeba_attributes_and_partition(root):
    celeba(root)
    o = DataOptions(root=root, image_size=32)
    train, val, test = (load_dataset("celeba", s, options=o) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (12, 6, 6)
    assert train.labels.shape == (12, 4) and train.labels.dtype == torch.float32
    assert set(train.labels.unique().tolist()) <= {0.0, 1.0} and train.classes == ATTRS
    assert train.images.shape == (12, 3, 32, 32)
    line = (root / "list_attr_celeba.txt").read_text().splitlines()[2].split()
    assert train.labels[0].tolist() == [float(v == "1") for v in line[1:]]


def test_celeba_rows_that_do_not_match_are_named(root):
    celeba(root)
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # drop the row of 000002.jpg
    with pytest.raises(DataError, match="no row for 1 image.*000002.jpg"):
        load_dataset("celeba", options=DataOptions(root=root, image_size=32))
    lines[5] = lines[5] + " 1"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="list_attr_celeba.txt line 6: expected a file name and 4 values"):
        load_dataset("celeba", options=DataOptions(root=root, image_size=32))


WRITERS = {"cifar10": cifar10, "cifar100": cifar100, "svhn": svhn, "fashion-mnist": fashion_mnist,
           "imagefolder": image_folder, "celeba": celeba}


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_data_set_trains_and_evaluates_through_the_cli(root, name, capsys):
    data = root / "data"
    data.mkdir()
    WRITERS[name](data)
    out = root / "run"
    size = ["--image-size", "32"] if name in ("imagefolder", "celeba") else []
    assert main(["train", "--model", "resnet20_abn", "--data", name, "--data-root", str(data), "--out", str(out),
                 "--epochs", "1", "--batch-size", "16", *size]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1
    assert main(["eval", str(out), "--data", name, "--data-root", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] > 0 and 0 <= result["accuracy"] <= 1


def test_cli_names_match_the_registry():
    from abnet.cli import DATA_NAMES

    assert DATA_NAMES.split(", ") == list(DATASETS)


@pytest.mark.parametrize("name", list(DATASETS))
def test_a_data_set_declares_attributes_exactly_when_its_labels_are_0_1_attributes(root, name):
    """DataSpec.attributes decides settings before any data is read (label smoothing's default); the loaded labels
    decide the loss and metrics. The two must agree for every registered data set."""
    options = DataOptions(image_size=32)
    if data_spec(name).needs_root:
        WRITERS[name](root)  # every data set read from disk has a writer here
        options = DataOptions(root=root, image_size=32)
    labels = load_dataset(name, "train", limit=8, options=options).labels
    assert data_spec(name).attributes == labels.is_floating_point()
