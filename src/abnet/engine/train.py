"""The training loop, readable in one sitting: SGD, a per-step learning-rate schedule, both
branches' loss, evaluation each epoch, and a run folder that a crash cannot corrupt.

Run folder: ``config.json`` (resolved settings), ``last.pt`` (resumable state, every epoch),
``best.safetensors`` (best validation accuracy, balanced for attributes), ``metrics.jsonl`` (one
line per epoch) and ``train.log``. Batches are a function of (seed, epoch), so ``resume=True`` continues exactly.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..data.registry import DataSpec, data_spec, load_dataset, make_loader
from ..errors import AbnetError
from ..fileio import write_text
from ..models import balanced_pos_weight, create_model, model_info
from .checkpoint import STATE_FILE, WEIGHTS_FILE, load_state, model_meta, save_state, save_weights
from .config import TrainConfig
from .distributed import Distributed, check_batch, setup, shutdown
from .evaluate import evaluate, model_loss
from .plots import plot_curves

log = logging.getLogger("abnet")


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model a config names; ABN-only settings go to ABN models only."""
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    info = model_info(cfg.model)
    if info.is_abn:
        kwargs.update(mask=cfg.mask, map_kernel=cfg.map_kernel)
    if info.is_multitask:
        kwargs.update(shared=cfg.shared_perception)
    elif cfg.shared_perception:
        raise AbnetError(f"--shared-perception applies to multi-task models (name_abn_mt), not {cfg.model}")
    if cfg.pretrained or cfg.weights:
        if not cfg.model.startswith(("tv:", "timm:")):
            raise AbnetError(f"--pretrained and --weights apply to tv:<name> and timm:<name> models, not {cfg.model}")
        kwargs.update(pretrained=cfg.pretrained, weights=cfg.weights)
    return create_model(cfg.model, **kwargs)


RUN_FILES = ("config.json", STATE_FILE, WEIGHTS_FILE, "metrics.jsonl", "train.log", "curves.png")


def check_run_dir(out: str | Path, resume: bool, force: bool = False) -> Path:
    """The run folder, if it may be used: one that holds files only when resuming it (or with ``force``,
    which replaces the run files it holds). Writes nothing."""
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise AbnetError(f"--out {run_dir} is a file, not a folder; choose another --out")
    has_run = run_dir.is_dir() and any(run_dir.iterdir())
    if resume and not (run_dir / STATE_FILE).is_file():
        raise AbnetError(f"cannot resume: {run_dir / STATE_FILE} does not exist; start the run without --resume")
    if has_run and not resume and not force:
        raise AbnetError(f"--out {run_dir} already holds files; pass --resume to continue that run, --force to "
                         "replace it, or choose a new --out (nothing was overwritten)")
    return run_dir


def train(
    cfg: TrainConfig, resume: bool = False, progress: bool = True, model: nn.Module | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` into the run folder ``cfg.out``; returns the last epoch's metrics.

    ``model``: an instance of ``cfg.model`` made by ``create_model`` (e.g. with weights of your own
    choosing) to train instead of a freshly built one. ``force`` replaces the run files of an existing
    run in ``cfg.out``. Raises :class:`AbnetError` for bad settings before anything is written, and
    :class:`TrainingStopped` after saving a resumable state when SIGINT or SIGTERM arrives.
    """
    cfg.validate()
    model_info(cfg.model)  # unknown names fail here, before the run folder is touched
    device = resolve_device(cfg.device)
    job = setup(device.type)  # under torchrun: join the job
    if device.type == "cuda" and job.world > 1:
        device = torch.device("cuda", job.local_rank)
    try:
        return _train(cfg, resume, progress, model, force, job, device)
    finally:
        shutdown(job)


def _train(
    cfg: TrainConfig, resume: bool, progress: bool, model: nn.Module | None, force: bool, job: Distributed,
    device: torch.device,
) -> dict[str, Any]:
    check_batch(cfg.batch_size, job)
    if cfg.sync_bn and job.world > 1 and device.type != "cuda":
        raise AbnetError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on CPUs)")
    if model is not None and getattr(model, "abnet_config", {}).get("model") != cfg.model:
        raise AbnetError(f"the model passed to train() is not a {cfg.model} made by abnet.create_model")
    spec = data_spec(cfg.data)
    run_dir = check_run_dir(cfg.out, resume, force)
    state = None
    if resume:
        state = load_state(run_dir / STATE_FILE)
        saved = TrainConfig.from_dict(state["meta"]["train_config"])
        if (saved.model, saved.data) != (cfg.model, cfg.data):
            raise AbnetError(f"cannot resume {run_dir}: it trains {saved.model} on {saved.data}, "
                             f"not {cfg.model} on {cfg.data}")
    options = cfg.data_options()  # missing or malformed data fails here, before anything is written
    train_set = load_dataset(cfg.data, "train", cfg.limit_train, options)
    val_set = load_dataset(cfg.data, "val", cfg.limit_val, options)
    if model_info(cfg.model).is_multitask and not train_set.labels.is_floating_point():
        raise AbnetError(f"{cfg.model} learns binary attributes, but {cfg.data} has one class per image; use an "
                         "attribute data set (celeba, shapes-multi) or a single-task model (name_abn)")
    if cfg.pos_weight and not train_set.labels.is_floating_point():
        raise AbnetError(f"--pos-weight applies to attribute data (celeba, shapes-multi), not {cfg.data}")
    torch.manual_seed(cfg.seed)
    initial = replace(cfg, pretrained=False, weights=None) if resume else cfg  # resuming: weights from last.pt
    model = model or build_model(initial, train_set.num_classes)  # missing pretrained weights fail here, too
    job.barrier()  # every process has checked everything before the first one writes
    handler = None
    if job.is_main:  # only rank 0 writes files
        run_dir.mkdir(parents=True, exist_ok=True)
        if force and not resume:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
        handler = _log_to(run_dir / "train.log")
    try:
        return _fit(cfg, spec, run_dir, (train_set, val_set), state, progress and job.is_main, model, job, device)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _fit(
    cfg: TrainConfig, spec: DataSpec, run_dir: Path, data: tuple, state: dict | None, progress: bool,
    model: nn.Module, job: Distributed, device: torch.device,
) -> dict[str, Any]:
    train_set, val_set = data
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    if cfg.sync_bn and job.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # Mixed precision: bf16 autocast on CPU; fp16 with a loss scaler on CUDA.
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    trained = model if job.world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = Compiled(trained) if cfg.compile else trained
    tensorboard = _tensorboard(run_dir) if job.is_main else None
    # Training loss only: validation losses stay unweighted, comparable between runs.
    pos_weight = balanced_pos_weight(train_set.labels).to(device) if cfg.pos_weight == "balanced" else None
    train_loader = make_loader(train_set, spec, cfg.batch_size, train=True, seed=cfg.seed,
                               channels_last=cfg.channels_last, workers=cfg.workers, cutout_size=cfg.cutout,
                               rank=job.rank, world=job.world)
    val_loader = make_loader(val_set, spec, cfg.batch_size, channels_last=cfg.channels_last, workers=cfg.workers)
    meta = model_meta(model, classes=train_set.classes, mean=list(spec.mean), std=list(spec.std),
                      image_size=list(train_set.image_size), data=cfg.data,
                      multi_label=train_set.labels.is_floating_point(), train_config=asdict(cfg))

    start_epoch, start_step, best = 0, 0, -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state.get("scaler", {}))
        torch.set_rng_state(state["rng"])
        start_epoch, start_step, best = state["epoch"], state.get("step", 0), state["best_accuracy"]
        log.info("resuming %s at epoch %d of %d%s", run_dir, start_epoch + 1, cfg.epochs,
                 f", step {start_step + 1}" if start_step else "")
    else:
        if job.is_main:
            write_text(run_dir / "config.json", cfg.to_json())
        log.info("training %s (%s parameters) on %s: %d train / %d val images of %s, %d epochs",
                 cfg.model, f"{sum(p.numel() for p in model.parameters()):,}", cfg.data, len(train_set),
                 len(val_set), "x".join(map(str, train_set.image_size)), cfg.epochs)
    metrics = _keep_metrics_before(run_dir / "metrics.jsonl", start_epoch) if job.is_main else {}
    if start_epoch >= cfg.epochs:
        log.info("%s has already trained all %d epochs; pass a larger --epochs to continue", run_dir, cfg.epochs)

    def checkpoint(epoch: int, step: int, loss_sum: float = 0.0, seen: int = 0) -> None:
        """Everything needed to continue after ``step`` steps of epoch ``epoch`` (0-based); rank 0 writes it."""
        if not job.is_main:
            return
        save_state(run_dir / STATE_FILE, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch, "step": step,
            "loss_sum": loss_sum, "seen": seen, "best_accuracy": best, "rng": torch.get_rng_state(), "meta": meta})

    steps_per_epoch = len(train_loader)
    with _stop_on_signals() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            skip = start_step if epoch == start_epoch else 0
            loss_sum, seen = (state["loss_sum"], state["seen"]) if skip else (0.0, 0)
            t0, timed = time.perf_counter(), 0
            bar = tqdm(train_loader.epoch(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       leave=False, disable=None if progress else True)
            for i, batch in enumerate(bar):
                if i < skip:  # resuming mid-epoch: replay the loader's random draws, train nothing
                    continue
                lr = cfg.lr_at(epoch * steps_per_epoch + i, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
                    loss = model_loss(forward(x), y, pos_weight)
                # One all-reduce per step (a no-op in one process): the global loss, and whether any process
                # was asked to stop, so that all processes stop or fail at the same step.
                loss_total, count, stopping = job.sums(loss.item() * len(y), len(y), stop.signal is not None)
                value = loss_total / count
                if not math.isfinite(value):
                    raise AbnetError(f"the loss became {value} at epoch {epoch + 1}, step {i + 1}; lower --lr "
                                     f"(now {cfg.lr}); {run_dir / STATE_FILE} keeps the last good state")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += loss_total
                seen += int(count)
                timed += int(count)
                bar.set_postfix(loss=f"{value:.3f}")
                if stopping:
                    checkpoint(epoch, i + 1, loss_sum, seen)
                    raise TrainingStopped(f"stopped by {stop.signal or 'a signal'} at epoch {epoch + 1}, step {i + 1};"
                                          f" {run_dir / STATE_FILE} holds the state: continue with --resume")
            seconds = time.perf_counter() - t0
            val = evaluate(model, val_loader)
            metrics = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "val_loss": val["loss"],
                       "val_accuracy": val["accuracy"], "val_att_accuracy": val["att_accuracy"],
                       **{f"val_{k}": val[k] for k in ("mean_balanced_accuracy", "pointing_game") if k in val},
                       "lr": lr, "images_per_s": timed / seconds, "seconds": seconds}
            # Attributes: balanced accuracy, as plain accuracy rewards calling rare attributes absent.
            score = val.get("mean_balanced_accuracy", val["accuracy"])
            if score > best:
                best = score
                if job.is_main:
                    save_weights(run_dir / WEIGHTS_FILE, model, {**meta, "epoch": epoch + 1, "val_accuracy":
                                                                  val["accuracy"], "val_score": score})
            checkpoint(epoch + 1, 0)
            if job.is_main:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
            if tensorboard is not None:
                for key, value in metrics.items():
                    if key != "epoch" and value is not None:
                        tensorboard.add_scalar(key, value, epoch + 1)
                tensorboard.flush()
            log.info("epoch %d/%d  loss %.3f  val acc %.3f (attention %s)  lr %.4f  %.0f img/s  %.1fs",
                     epoch + 1, cfg.epochs, metrics["train_loss"], val["accuracy"],
                     "-" if val["att_accuracy"] is None else f"{val['att_accuracy']:.3f}", lr,
                     metrics["images_per_s"], seconds)
            if job.sums(stop.signal is not None)[0]:
                raise TrainingStopped(f"stopped by {stop.signal or 'a signal'} after epoch {epoch + 1}; "
                                      "continue with --resume")
    return metrics


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU if there is one, else the CPU; anything else as torch spells it, if it exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AbnetError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AbnetError(f"--device {name} asks for a CUDA GPU, but torch sees none here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise AbnetError(f"--device {name}: abnet trains on cpu or cuda")
    return device


class Compiled:
    """``torch.compile(model)``, or the eager model, with a message, if compilation fails (it fails on the
    first call, so the first call is where this decides)."""

    def __init__(self, model: nn.Module):
        self.model, self.compiled = model, torch.compile(model)

    def __call__(self, x: torch.Tensor):
        if self.compiled is None:
            return self.model(x)
        try:
            return self.compiled(x)
        except Exception as err:  # inductor needs a C++ compiler, supported ops, ...
            log.warning("torch.compile could not compile %s (%s: %s); training eagerly",
                        type(self.model).__name__, type(err).__name__, str(err).splitlines()[0][:200])
            self.compiled = None
            return self.model(x)


def _tensorboard(run_dir: Path):
    """A TensorBoard writer into run_dir/tensorboard when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


class TrainingStopped(Exception):
    """Training was stopped by SIGINT / SIGTERM after writing a resumable state."""


class _StopFlag:
    signal: str | None = None


@contextmanager
def _stop_on_signals():
    """While training, SIGINT (Ctrl-C) and SIGTERM only raise a flag; the loop checkpoints at the end of the
    current step and stops. A second signal interrupts at once. Outside the main thread nothing is installed."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signal is not None:
            raise KeyboardInterrupt
        flag.signal = signal.Signals(signum).name
        log.warning("%s received: saving a resumable state after this step", flag.signal)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _keep_metrics_before(path: Path, epoch: int) -> dict[str, Any]:
    """On resume, drop metric lines of epochs that will be trained again; returns the last kept line."""
    if not path.exists():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epoch]
    write_text(path, "".join(ln + "\n" for ln in lines))
    return json.loads(lines[-1]) if lines else {}


def _log_to(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler
