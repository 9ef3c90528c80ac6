"""Damaged copies of every on-disk data set: each file of a tiny official-format copy truncated, bit-flipped,
overwritten with noise or emptied. Loading must end in a one-line DataError naming the file, or succeed with
the file skipped and named in a warning; never another exception, never a hang, never a giant allocation."""

import contextlib
import gzip
import io
import logging
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import test_formats as formats
from PIL import Image, ImageFile

from abnet.cli import main
from abnet.data.registry import DataOptions, data_spec, load_dataset, make_loader
from abnet.errors import DataError

# Reader -> (data set name, image size, splits read, files damaged one at a time, relative to the data root)
READERS = {
    "cifar10": ("cifar10", None, ("train", "val", "test"),
                [f"cifar-10-batches-py/{f}" for f in ("data_batch_1", "test_batch", "batches.meta")]),
    "cifar100": ("cifar100", None, ("train", "val", "test"),
                 ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]),
    "svhn": ("svhn", None, ("train", "val", "test"), ["train_32x32.mat", "test_32x32.mat"]),
    "svhn-compressed": ("svhn", None, ("train", "val", "test"), ["train_32x32.mat"]),  # as the official files
    "fashion-mnist": ("fashion-mnist", None, ("train", "val", "test"),
                      ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte"]),
    "imagefolder": ("imagefolder", 32, ("train", "val"),
                    [f"train/cat/{name}" for name in ("0.jpg", "1.png", "x.bmp", "x.gif", "x.tif", "x.webp", "x.ppm")]),
    "imagefolder-streamed": ("imagefolder", 72, ("train",), ["train/cat/0.jpg", "train/cat/1.png"]),
    "celeba": ("celeba", 32, ("train", "val", "test"),
               ["list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba/000001.jpg"]),
}


def _flip(raw: bytes, rng: np.random.Generator, span: int) -> bytes:
    """Three bytes within the first ``span`` XORed with random non-zero values."""
    out = bytearray(raw)
    for pos in rng.choice(min(span, len(raw)), size=min(3, len(raw)), replace=False):
        out[pos] ^= int(rng.integers(1, 256))
    return bytes(out)


def _noise(raw: bytes, rng: np.random.Generator, at: int) -> bytes:
    """32 random bytes written over the file from ``at`` on (at most to its end)."""
    at = max(0, min(at, len(raw) - 32))
    block = rng.integers(0, 256, min(32, len(raw)), dtype=np.uint8).tobytes()
    return raw[:at] + block + raw[at + len(block):]


DAMAGES = ["empty", "cut@1", "cut@7", "cut@24", "cut@140", "cut@half", "cut@-1", *(f"flip-head#{i}" for i in range(3)),
           *(f"flip-any#{i}" for i in range(3)), "noise@8", "noise@half", "noise@end"]


def damage(raw: bytes, name: str, rng: np.random.Generator) -> bytes:
    """``raw`` with the damage ``name``: emptied, cut (after k bytes, inside the headers, or in its first half
    for a file shorter than 2k), three bytes flipped (in the first 160 bytes or anywhere), noise written."""
    n = len(raw)
    if name == "empty":
        return b""
    if name.startswith("cut@"):
        where = name[4:]
        return raw[:n // 2 if where == "half" else n - 1 if where == "-1" else min(int(where), n // 2)]
    if name.startswith("flip"):
        return _flip(raw, rng, 160 if "head" in name else n)
    return _noise(raw, rng, {"noise@8": 8, "noise@half": n // 2, "noise@end": n}[name])


def _write(reader: str, root: Path) -> None:
    """A pristine tiny copy in the reader's official format (the writers of test_formats, seeded here)."""
    saved, formats.RNG = formats.RNG, np.random.default_rng(1)
    try:
        _write_seeded(reader, root)
    finally:
        formats.RNG = saved


def _write_seeded(reader: str, root: Path) -> None:
    name = READERS[reader][0]
    formats.WRITERS[name](root, **({"per_class": 2} if name == "imagefolder" else {}))
    if reader == "svhn-compressed":
        for file in ("train_32x32.mat", "test_32x32.mat"):
            (root / file).write_bytes(_compressed_mat((root / file).read_bytes()))
    if name == "fashion-mnist":  # the test files plain, so both encodings are damaged
        for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (root / stem).write_bytes(gzip.decompress((root / f"{stem}.gz").read_bytes()))
            (root / f"{stem}.gz").unlink()
    if name == "imagefolder":  # one image in each other format the reader accepts
        pixels = Image.fromarray(formats.RNG.integers(0, 256, (40, 44, 3), dtype=np.uint8))
        for ext in ("bmp", "gif", "tif", "webp", "ppm"):
            pixels.save(root / "train" / "cat" / f"x.{ext}")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """reader -> (folder of its pristine copy, samples loaded from it), each written once."""
    cache = {}

    def get(reader: str) -> tuple[Path, int]:
        if reader not in cache:
            root = tmp_path_factory.mktemp(reader)
            _write(reader, root)
            cache[reader] = root, load_all(reader, root)
        return cache[reader]

    return get


class Hung(BaseException):
    """Raised by :func:`deadline`; not an Exception, so no reader's error handling can swallow it."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail with :class:`Hung` instead of hanging."""
    def expire(*_):
        raise Hung(f"still loading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_all(reader: str, root: Path) -> int:
    """Samples in every split ``abnet train`` / ``eval`` read, each split passed once through its loader."""
    name, size, splits, _ = READERS[reader]
    spec, options = data_spec(name), DataOptions(root=root, image_size=size)
    total = 0
    for split in splits:
        loader = make_loader(load_dataset(name, split, options=options), spec, 8, workers=0)
        total += sum(len(batch.labels) for batch in loader.epoch(0))
    return total


def edited_copy(pristine, reader: str, file: str, edit, tmp_path: Path) -> tuple[Path, int]:
    """A copy of the reader's pristine set with ``file``'s bytes passed through ``edit``; the pristine set's
    number of samples."""
    source, n = pristine(reader)
    root = tmp_path / "data"
    shutil.copytree(source, root)
    (root / file).write_bytes(edit((root / file).read_bytes()))
    return root, n


def damaged_copy(pristine, reader: str, file: str, name: str, tmp_path: Path) -> tuple[Path, int]:
    """:func:`edited_copy` with the damage ``name``, drawn from a generator seeded by the case."""
    rng = np.random.default_rng(zlib.crc32(f"{reader}/{file}/{name}".encode()))
    return edited_copy(pristine, reader, file, lambda raw: damage(raw, name, rng), tmp_path)


def check_outcome(reader: str, root: Path, file: str, n_pristine: int, caplog) -> str:
    """Load the damaged copy: a one-line DataError naming the file, or every sample (or the file named in a
    warning, or counted for the streamed folder); returns which."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="abnet"), deadline(30):
        try:
            n = load_all(reader, root)
        except DataError as err:
            message = str(err)
            assert "\n" not in message, message
            assert Path(file).name in message, f"the error does not name {file}: {message}"
            return "error"
    if n != n_pristine:
        named = Path(file).name in caplog.text or (reader.endswith("streamed") and "skipped" in caplog.text)
        assert named, f"{n} of {n_pristine} samples loaded, and no warning names {file}: {caplog.text!r}"
        return "skipped"
    return "loaded"


CASES = [pytest.param(reader, file, kind, id=f"{reader}:{file}:{kind}")
         for reader, (_, _, _, files) in READERS.items() for file in files for kind in DAMAGES]


@pytest.mark.parametrize("reader, file, kind", CASES)
def test_damaged_file_is_named_or_skipped(pristine, reader, file, kind, tmp_path, caplog):
    root, n = damaged_copy(pristine, reader, file, kind, tmp_path)
    outcome = check_outcome(reader, root, file, n, caplog)
    if kind == "empty" or kind.startswith("cut@") and kind != "cut@-1":
        assert outcome != "loaded", "a truncated file loaded as if whole"


def test_truncated_images_stay_refused():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# Headers that claim far more data than the file holds: refused before anything that size is allocated.

def _huge_pickle_length(raw: bytes) -> bytes:
    """The pickle, as protocol 4 (pixels as one BINBYTES), with its pixel data claiming 3 GB."""
    import pickletools

    raw = pickle.dumps(pickle.loads(raw), protocol=4)
    op, arg, pos = max(((op, arg, pos) for op, arg, pos in pickletools.genops(raw) if isinstance(arg, (str, bytes))),
                       key=lambda t: len(t[1]))
    assert op.name == "BINBYTES"
    return raw[:pos + 1] + struct.pack("<I", 3_000_000_000) + raw[pos + 5:]


def _huge_memo_index(raw: bytes) -> bytes:
    """A memo slot 2**28 (the unpickler would size its memo table to 4 GB for it)."""
    return b"\x80\x02]r" + struct.pack("<I", 2 ** 28) + b"."


def _huge_idx(raw: bytes) -> bytes:
    return raw[:4] + struct.pack(">I", 2 ** 31) + raw[8:]


def _huge_mat_data(raw: bytes) -> bytes:
    """The pixel element of X (miUINT8, 32*32*3*N bytes) claims 3 GB."""
    n = 32 * 32 * 3 * 30
    at = raw.index(struct.pack("<II", 2, n))
    return raw[:at + 4] + struct.pack("<I", 3_000_000_000) + raw[at + 8:]


def _huge_mat_compressed(raw: bytes) -> bytes:
    """The same inside a compressed element: X's element inflated, its pixel tag set to 3 GB, compressed again."""
    kind, size = struct.unpack("<II", raw[128:136])
    assert kind == 15  # miCOMPRESSED
    packed = zlib.compress(_huge_mat_data(zlib.decompress(raw[136:136 + size])))
    return raw[:132] + struct.pack("<I", len(packed)) + packed + raw[136 + size:]


def _huge_png(raw: bytes) -> bytes:
    """A PNG whose header (with a correct checksum) says 12000 x 12000 pixels, past PIL's bomb limit."""
    ihdr = b"IHDR" + struct.pack(">II", 12_000, 12_000) + raw[24:29]
    return raw[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + raw[33:]


HUGE = {
    "cifar10 pixel data of 3 GB": ("cifar10", "cifar-10-batches-py/test_batch", _huge_pickle_length),
    "cifar10 memo slot 2**28": ("cifar10", "cifar-10-batches-py/batches.meta", _huge_memo_index),
    "cifar100 pixel data of 3 GB": ("cifar100", "cifar-100-python/train", _huge_pickle_length),
    "fashion-mnist plain 2**31 images": ("fashion-mnist", "t10k-images-idx3-ubyte", _huge_idx),
    "fashion-mnist gzip 2**31 images": ("fashion-mnist", "train-images-idx3-ubyte.gz",
                                        lambda raw: gzip.compress(_huge_idx(gzip.decompress(raw)))),
    "svhn pixel element of 3 GB": ("svhn", "test_32x32.mat", _huge_mat_data),
    "svhn compressed pixel element of 3 GB": ("svhn-compressed", "train_32x32.mat", _huge_mat_compressed),
    "png of 144 megapixels": ("imagefolder", "train/cat/1.png", _huge_png),
}


@pytest.mark.parametrize("case", list(HUGE))
def test_a_header_claiming_a_huge_size_allocates_nothing_of_that_size(pristine, case, tmp_path, caplog):
    reader, file, edit = HUGE[case]
    root, n = edited_copy(pristine, reader, file, edit, tmp_path)
    tracemalloc.start()
    try:
        outcome = check_outcome(reader, root, file, n, caplog)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome != "loaded"
    assert peak < 200e6, f"{peak / 1e6:.0f} MB allocated"


# Labels outside the classes: a DataError naming the file, whatever reader.

def _fmnist_label_200(raw: bytes) -> bytes:
    return raw[:-1] + bytes([200])


def _mat(raw: bytes, edit=lambda mat: None, compress: bool = False) -> bytes:
    """A MAT file's X and y, edited in place, saved again."""
    from scipy.io import loadmat, savemat

    mat = loadmat(io.BytesIO(raw))
    edit(mat)
    buffer = io.BytesIO()
    savemat(buffer, {"X": mat["X"], "y": mat["y"]}, do_compression=compress)
    return buffer.getvalue()


def _compressed_mat(raw: bytes) -> bytes:
    return _mat(raw, compress=True)


def _svhn_label_11(raw: bytes) -> bytes:
    return _mat(raw, lambda mat: mat["y"].__setitem__(3, 11))


def _cifar_label_as_text(raw: bytes) -> bytes:
    batch = pickle.loads(raw)
    batch["fine_labels"][2] = "seven"
    return pickle.dumps(batch, protocol=2)


def _cifar_label_too_big_for_int64(raw: bytes) -> bytes:
    batch = pickle.loads(raw)
    batch["fine_labels"][2] = 2 ** 70
    return pickle.dumps(batch, protocol=2)


def _cifar_labels_not_a_list(raw: bytes) -> bytes:
    batch = pickle.loads(raw)
    batch["fine_labels"] = 7
    return pickle.dumps(batch, protocol=2)


def _cifar_names_not_text(raw: bytes) -> bytes:
    meta = pickle.loads(raw)
    meta["fine_label_names"][4] = b"\xff\xfe"
    return pickle.dumps(meta, protocol=2)


def _cifar_names_too_few(raw: bytes) -> bytes:
    meta = pickle.loads(raw)
    meta["fine_label_names"] = meta["fine_label_names"][:50]
    return pickle.dumps(meta, protocol=2)


def _celeba_value_2(raw: bytes) -> bytes:
    lines = raw.decode().splitlines()
    lines[4] = lines[4][:-2] + " 2"
    return ("\n".join(lines) + "\n").encode()


BAD_LABELS = {
    "fashion-mnist label 200": ("fashion-mnist", "t10k-labels-idx1-ubyte", _fmnist_label_200),
    "svhn label 11": ("svhn", "test_32x32.mat", _svhn_label_11),
    "cifar100 label as text": ("cifar100", "cifar-100-python/test", _cifar_label_as_text),
    "cifar100 label of 2**70": ("cifar100", "cifar-100-python/test", _cifar_label_too_big_for_int64),
    "cifar100 labels not a list": ("cifar100", "cifar-100-python/train", _cifar_labels_not_a_list),
    "cifar100 class name not text": ("cifar100", "cifar-100-python/meta", _cifar_names_not_text),
    "cifar100 50 class names": ("cifar100", "cifar-100-python/meta", _cifar_names_too_few),
    "celeba attribute value 2": ("celeba", "list_attr_celeba.txt", _celeba_value_2),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_labels_outside_the_classes_are_named(pristine, case, tmp_path, caplog):
    reader, file, edit = BAD_LABELS[case]
    root, n = edited_copy(pristine, reader, file, edit, tmp_path)
    assert check_outcome(reader, root, file, n, caplog) == "error"


def test_celeba_partition_truncated_between_lines_is_warned(pristine, tmp_path, caplog):
    def drop_two_lines(raw: bytes) -> bytes:
        return b"\n".join(raw.split(b"\n")[:-3]) + b"\n"

    root, n = edited_copy(pristine, "celeba", "list_eval_partition.txt", drop_two_lines, tmp_path)
    assert check_outcome("celeba", root, "list_eval_partition.txt", n, caplog) == "skipped"
    assert "22 of the 24 images" in caplog.text


# End to end: `abnet train`, its exit code and stderr; in a fresh process for a few cases, in-process for more.

def _not_text(raw: bytes) -> bytes:
    return raw[:30] + b"\xff\xfe\x80" + raw[33:]


TRAIN = {
    "celeba partition not text": ("celeba", "list_eval_partition.txt", _not_text, 2),
    "imagefolder truncated png": ("imagefolder", "train/cat/1.png", lambda raw: raw[:len(raw) // 2], 0),
    "fashion-mnist gzip noise": ("fashion-mnist", "train-images-idx3-ubyte.gz",
                                 lambda raw: _noise(raw, np.random.default_rng(0), 20), 2),
    "svhn huge pixel element": ("svhn", "train_32x32.mat", _huge_mat_data, 2),
    "cifar10 batch cut": ("cifar10", "cifar-10-batches-py/data_batch_3", lambda raw: raw[:100], 2),
}
SUBPROCESS = ("celeba partition not text", "imagefolder truncated png")


def _train_argv(reader: str, root: Path, out: Path) -> list[str]:
    name, size, _, _ = READERS[reader]
    return ["train", "--model", "resnet20", "--data", name, "--data-root", str(root), "--out", str(out),
            "--epochs", "1", "--batch-size", "16", "--limit-train", "16", "--limit-val", "8",
            *(["--image-size", str(min(size, 16))] if size else [])]


@pytest.mark.parametrize("case", list(TRAIN))
def test_abnet_train_on_a_damaged_copy(pristine, case, tmp_path, capsys):
    reader, file, edit, expected = TRAIN[case]
    argv = _train_argv(reader, edited_copy(pristine, reader, file, edit, tmp_path)[0], tmp_path / "run")
    if case in SUBPROCESS:
        done = subprocess.run([sys.executable, "-m", "abnet", *argv], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        code, err = done.returncode, done.stderr
    else:
        with deadline(60):
            code = main(argv)
        err = capsys.readouterr().err
    assert code == expected, err
    assert "Traceback" not in err and Path(file).name in err
    if expected == 2:
        assert len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()
    else:
        assert (tmp_path / "run" / "metrics.jsonl").is_file()
