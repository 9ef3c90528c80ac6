"""The training loop, readable in one sitting: SGD, a per-step learning-rate schedule, both branches'
loss, evaluation each epoch (or each ``eval_every``-th), and a run folder that a crash cannot corrupt.

Run folder: ``config.json`` (resolved settings), ``last.pt`` (resumable state, every epoch and on a stop
signal), ``best.safetensors`` (best validation accuracy, balanced for attributes), ``metrics.jsonl`` (one
line per epoch) and ``train.log``. Batch k of epoch e is a function of (seed, e, k), so a run resumed after
any step continues exactly where it stopped.

The loss is read back to the host (and the stop flag shared between processes) every ``log_every`` steps
only: on a GPU no other step waits for the host.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..data.loader import Batch
from ..data.registry import DataSpec, check_flip_tta, data_spec, load_dataset, make_loader
from ..data.targets import attach_targets, guided_count
from ..errors import AbnetError
from ..fileio import write_text
from ..models import balanced_pos_weight, create_model, model_info
from ..models.meta import CheckpointMeta
from ..models.weights import ClassCountError
from .checkpoint import STATE_FILE, WEIGHTS_FILE, load_state, model_meta, save_state, save_weights
from .config import TrainConfig
from .device import resolve_device
from .distributed import Distributed, check_batch, setup, shutdown
from .evaluate import evaluate, model_loss
from .guidance import map_loss, rrr_loss
from .host_memory import keep_freed_memory
from .plots import plot_curves
from .precision import DTYPES, describe_device, resolve_precision
from .stopping import StopFlag, TrainingStopped, stop_on_signals

log = logging.getLogger("abnet")

RUN_FILES = ("config.json", STATE_FILE, WEIGHTS_FILE, "metrics.jsonl", "train.log", "curves.png")
__all__ = ["RUN_FILES", "RunState", "TrainingStopped", "build_model", "check_run_dir", "train"]


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
    cfg = cfg.validate().resolved()
    model_info(cfg.model)  # unknown names fail here, before the run folder is touched
    keep_freed_memory()
    device = resolve_device(cfg.device)
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))  # config.json records the one used
    if cfg.deterministic:
        deterministic_kernels()
    job = setup(device.type)  # under torchrun: join the job, one GPU per process
    if job.launched and device.type == "cuda":
        device = job.device
    try:
        trainer, state = _prepare(cfg, resume, progress, model, force, job, device)
        try:
            return fit(trainer, state)
        finally:
            trainer.close()
    finally:
        shutdown(job)


def fit(trainer: Trainer, state: RunState) -> dict[str, Any]:
    """The loop: train each remaining epoch (from the step it stopped at), then evaluate and save."""
    metrics = trainer.last_metrics
    with stop_on_signals() as stop:
        for _ in range(state.epoch, trainer.cfg.epochs):
            if not trainer.train_epoch(state, stop):
                raise TrainingStopped(f"stopped by {stop.signal or 'a signal'} at epoch {state.epoch + 1}, step "
                                      f"{state.step}; {trainer.run_dir / STATE_FILE} holds the state: continue "
                                      "with --resume")
            metrics = trainer.end_epoch(state)
            if state.epoch < trainer.cfg.epochs and trainer.job.sums(stop.raised)[0]:
                raise TrainingStopped(f"stopped by {stop.signal or 'a signal'} after epoch {state.epoch}; "
                                      "continue with --resume")
    return metrics


@dataclass
class RunState:
    """Where a run stands; saved in last.pt beside the weights, optimizer and RNG states."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps of epoch ``epoch`` done (all of them: only its evaluation is left)
    loss_sum: float = 0.0  # training loss summed over those steps' images (all processes)
    seen: int = 0  # images those steps trained on
    best_accuracy: float = -1.0  # best validation score so far

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunState:
        return cls(state["epoch"], state.get("step", 0), state.get("loss_sum", 0.0), state.get("seen", 0),
                   state["best_accuracy"])


class Trainer:
    """What one run trains with: the model, optimizer, loaders and run folder, and the three steps of the loop
    (:meth:`train_epoch`, :meth:`end_epoch`, :meth:`save`)."""

    def __init__(self, cfg: TrainConfig, spec: DataSpec, run_dir: Path, data: tuple, model: nn.Module,
                 job: Distributed, device: torch.device, progress: bool):
        train_set, val_set = data
        self.cfg, self.run_dir, self.job, self.device, self.progress = cfg, run_dir, job, device, progress
        self.model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else
                              torch.preserve_format)
        if cfg.sync_bn and job.world > 1:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # Fused on CUDA: one kernel, and with the loss scaler no host read of its inf check.
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                                         fused=device.type == "cuda" or None)
        # Mixed precision: bf16 or fp16 autocast; fp16 gradients need a loss scaler.
        self.autocast_dtype = DTYPES.get(cfg.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        trained = self.model if not job.launched else nn.parallel.DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.forward = Compiled(trained) if cfg.compile else trained
        # Training loss only: validation losses stay unweighted, comparable between runs.
        self.pos_weight = balanced_pos_weight(train_set.labels).to(device) if cfg.pos_weight == "balanced" else None
        self.train_loader = make_loader(train_set, spec, cfg.batch_size, train=True, seed=cfg.seed,
                                        channels_last=cfg.channels_last, workers=cfg.workers,
                                        cutout_size=cfg.cutout, rank=job.rank, world=job.world,
                                        padding=cfg.crop_padding)
        self.val_loader = make_loader(val_set, spec, cfg.batch_size, channels_last=cfg.channels_last,
                                      workers=cfg.workers)
        self.log_every = cfg.log_every or (50 if device.type == "cuda" else 1)
        self.meta = model_meta(self.model, classes=train_set.classes, mean=list(spec.mean), std=list(spec.std),
                               image_size=list(train_set.image_size), data=cfg.data,
                               multi_label=train_set.labels.is_floating_point(), train_config=asdict(cfg))
        self.tensorboard = _tensorboard(run_dir) if job.is_main else None
        self.log_file: logging.Handler | None = None
        self.last_metrics: dict[str, Any] = {}
        self.epoch_images, self.epoch_seconds = 0, 0.0

    def restore(self, saved: dict[str, Any]) -> RunState:
        """Load a last.pt state: weights, optimizer (its momentum buffers; the settings are this run's, which
        resuming may change), loss scaler and this process's RNG states."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:
            group.update(momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay, nesterov=self.cfg.nesterov)
        if saved.get("scaler"):  # empty when written with the scaler off (CPU, fp32)
            self.scaler.load_state_dict(saved["scaler"])
        rng = saved["rng"]
        mine = rng[self.job.rank] if isinstance(rng, list) and len(rng) == self.job.world else None
        if isinstance(rng, torch.Tensor):  # written before per-process states were kept
            mine = {"cpu": rng}
        if mine is None:
            log.warning("%s was saved by %d processes, this job has %d: random states start afresh",
                        self.run_dir / STATE_FILE, len(rng), self.job.world)
        else:
            torch.set_rng_state(mine["cpu"])
            if self.device.type == "cuda" and mine.get("cuda") is not None:
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        return RunState.from_state(saved)

    def save(self, state: RunState) -> None:
        """Write last.pt: everything needed to continue after ``state``. Every process calls it (the RNG states
        are gathered); rank 0 writes."""
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        rngs = self.job.gather(rng)
        if self.job.is_main:
            save_state(self.run_dir / STATE_FILE, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), **asdict(state), "rng": rngs, "meta": self.meta})

    def train_epoch(self, state: RunState, stop: StopFlag) -> bool:
        """Train epoch ``state.epoch`` from step ``state.step`` to its end, updating ``state`` at each log step.
        Returns False when a stop signal ended it early, after saving the state."""
        cfg, steps = self.cfg, len(self.train_loader)
        self.model.train()
        window = torch.zeros((), dtype=torch.float64, device=self.device)  # loss summed since the last log step
        window_images, first = 0, state.step
        self.epoch_images, t0 = 0, time.perf_counter()
        bar = tqdm(self.train_loader.epoch(state.epoch, state.step), total=steps, initial=state.step, leave=False,
                   desc=f"epoch {state.epoch + 1}/{cfg.epochs}", disable=None if self.progress else True)
        for step, batch in enumerate(bar, state.step):
            lr = cfg.lr_at(state.epoch * steps + step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if len(batch.labels):
                window += self.step(batch) * len(batch.labels)
                window_images += len(batch.labels)
            elif self.job.launched:  # the other processes would wait for this one's gradients forever
                raise AbnetError(f"every image of batch {step + 1} of epoch {state.epoch + 1} on process "
                                 f"{self.job.rank} was unreadable; remove the files the warnings name")
            if (step + 1) % self.log_every and step + 1 < steps:
                continue
            # Log step: the global loss of the window, and whether any process was asked to stop, so that all
            # processes stop (or fail) at the same step.
            total, images, stopping = self.job.sums(window, window_images, stop.raised)
            if not math.isfinite(total):
                where = f"step {step + 1}" if step == first else f"steps {first + 1}-{step + 1}"
                raise AbnetError(f"the loss became {total} at epoch {state.epoch + 1}, {where}; lower --lr "
                                 f"(now {cfg.lr}); {self.run_dir / STATE_FILE} keeps the last good state")
            state.step, state.loss_sum, state.seen = step + 1, state.loss_sum + total, state.seen + int(images)
            self.epoch_images += int(images)
            bar.set_postfix(loss=f"{total / images:.3f}")
            window.zero_()
            window_images, first = 0, step + 1
            if stopping:
                self.save(state)
                return False
        self.epoch_seconds = time.perf_counter() - t0
        return True

    def step(self, batch: Batch) -> torch.Tensor:
        """One optimizer step on a batch; returns its loss (on the device, not read back)."""
        x = batch.images.to(self.device, non_blocking=True)
        y = batch.labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            output = self.forward(x)
            loss = model_loss(output, y, self.pos_weight, self.cfg.label_smoothing)
            if batch.targets is not None:
                loss = loss + self.cfg.map_weight * self.guidance_loss(output, x, y, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach().double()

    def guidance_loss(self, output: Any, x: torch.Tensor, y: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The map loss of ``--map-targets``: on an ABN's attention map, or RRR's input gradients of a plain model."""
        targets, guided = batch.targets.to(self.device), batch.guided.to(self.device)
        if self.cfg.map_loss == "rrr":
            return rrr_loss(self.model, x, y, targets, guided)
        return map_loss(output.attention, targets, guided, self.cfg.map_loss)

    def end_epoch(self, state: RunState) -> dict[str, Any]:
        """Evaluate the epoch just trained, keep the best weights, save the state, and log the epoch's line."""
        cfg, epoch, steps = self.cfg, state.epoch + 1, len(self.train_loader)
        metrics = {"epoch": epoch, "train_loss": state.loss_sum / max(state.seen, 1)}
        val = None
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            val = evaluate(self.model, self.val_loader, flip=cfg.eval_flip, dtype=self.autocast_dtype)
            metrics.update({"val_loss": val["loss"], "val_accuracy": val["accuracy"],
                            "val_att_accuracy": val["att_accuracy"],
                            **{f"val_{k}": val[k] for k in ("mean_balanced_accuracy", "pointing_game") if k in val}})
        metrics.update({"lr": cfg.lr_at(epoch * steps - 1, steps), "seconds": self.epoch_seconds,
                        "images_per_s": self.epoch_images / self.epoch_seconds if self.epoch_images else None})
        # Attributes: balanced accuracy, as plain accuracy rewards calling rare attributes absent.
        score = -math.inf if val is None else val.get("mean_balanced_accuracy", val["accuracy"])
        if score > state.best_accuracy:
            state.best_accuracy = score
            if self.job.is_main:
                save_weights(self.run_dir / WEIGHTS_FILE, self.model, {
                    **self.meta, "epoch": epoch, "val_accuracy": val["accuracy"],
                    "val_att_accuracy": val["att_accuracy"], "val_score": score})
        state.epoch, state.step, state.loss_sum, state.seen = epoch, 0, 0.0, 0
        self.save(state)
        if self.job.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
        if self.tensorboard is not None:
            for key, value in metrics.items():
                if key != "epoch" and value is not None:
                    self.tensorboard.add_scalar(key, value, epoch)
            self.tensorboard.flush()
        speed = "-" if metrics["images_per_s"] is None else f"{metrics['images_per_s']:.0f}"
        if val is None:
            accuracy = "(not evaluated)"
        else:
            att = "-" if val["att_accuracy"] is None else f"{val['att_accuracy']:.3f}"
            accuracy = f"val acc {val['accuracy']:.3f} (attention {att})"
        log.info("epoch %d/%d  loss %.3f  %s  lr %.4f  %s img/s  %.1fs", epoch, cfg.epochs, metrics["train_loss"],
                 accuracy, metrics["lr"], speed, self.epoch_seconds)
        self.last_metrics = metrics
        return metrics

    def close(self) -> None:
        """Stop writing the run's log and TensorBoard files."""
        if self.log_file is not None:
            log.removeHandler(self.log_file)
            self.log_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _prepare(
    cfg: TrainConfig, resume: bool, progress: bool, model: nn.Module | None, force: bool, job: Distributed,
    device: torch.device,
) -> tuple[Trainer, RunState]:
    """Check everything, load the data, build (or restore) the model; only then make the run folder."""
    check_batch(cfg.batch_size, job)
    if cfg.sync_bn and job.world > 1 and device.type != "cuda":
        raise AbnetError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on CPUs)")
    if model is not None and getattr(model, "abnet_config", {}).get("model") != cfg.model:
        raise AbnetError(f"the model passed to train() is not a {cfg.model} made by abnet.create_model")
    spec = data_spec(cfg.data)
    if cfg.eval_flip:
        check_flip_tta(cfg.data, "--eval-flip")
    run_dir = check_run_dir(cfg.out, resume, force)
    saved = None
    if resume:
        saved = load_state(run_dir / STATE_FILE)  # a damaged state fails here, before anything is written
        check_resumable(cfg, CheckpointMeta.from_dict(saved["meta"], str(run_dir / STATE_FILE)), run_dir)
    if cfg.map_targets is not None and cfg.map_loss == "rrr":  # refused before any data is read
        if job.launched:
            raise AbnetError("--map-loss rrr runs a second forward pass, which DistributedDataParallel cannot "
                             "sync; train it in one process (without torchrun)")
        if cfg.precision == "fp16":
            raise AbnetError("--map-loss rrr: input gradients underflow in fp16 (they are not loss-scaled); train it "
                             "with --precision bf16 or fp32")
    options = cfg.data_options()  # missing or malformed data fails here, before anything is written
    train_set = load_dataset(cfg.data, "train", cfg.limit_train, options, hold_out=cfg.val_split == "val")
    if cfg.map_targets is not None:
        train_set = attach_targets(train_set, cfg.map_targets, "train", options, cfg.map_fraction, cfg.seed,
                                   per_attribute=model_info(cfg.model).is_multitask)
    val_set = load_dataset(cfg.data, cfg.val_split, cfg.limit_val, options)
    if model_info(cfg.model).is_multitask and not train_set.labels.is_floating_point():
        raise AbnetError(f"{cfg.model} learns binary attributes, but {cfg.data} has one class per image; use an "
                         "attribute data set (celeba, shapes-multi) or a single-task model (name_abn)")
    if cfg.label_smoothing and train_set.labels.is_floating_point():
        raise AbnetError(f"--label-smoothing applies to class labels, not to {cfg.data}'s 0/1 attributes")
    if cfg.pos_weight and not train_set.labels.is_floating_point():
        raise AbnetError(f"--pos-weight applies to attribute data (celeba, shapes-multi), not {cfg.data}")
    torch.manual_seed(cfg.seed)
    initial = replace(cfg, pretrained=False, weights=None) if resume else cfg  # resuming: weights from last.pt
    model = model or build_model(initial, train_set.num_classes)  # missing pretrained weights fail here, too
    job.barrier()  # every process has checked everything before the first one writes
    if job.is_main:  # only rank 0 writes files
        run_dir.mkdir(parents=True, exist_ok=True)
        if force and not resume:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
    trainer = Trainer(cfg, spec, run_dir, (train_set, val_set), model, job, device, progress and job.is_main)
    if job.is_main:
        trainer.log_file = _log_to(run_dir / "train.log")
    if saved is not None:
        try:
            state = trainer.restore(saved)
        except Exception:
            trainer.close()
            raise
        if job.is_main:  # the flags given with --resume (say a larger --epochs) hold for later resumes, too
            write_text(run_dir / "config.json", cfg.to_json())
        if state.epoch < cfg.epochs:  # a finished run says so below instead
            log.info("resuming %s at epoch %d of %d%s, on %s in %s", run_dir, state.epoch + 1, cfg.epochs,
                     f", step {state.step + 1}" if state.step else "", describe_device(device), cfg.precision)
    else:
        state = RunState()
        if job.is_main:
            write_text(run_dir / "config.json", cfg.to_json())
        log.info("training %s (%s parameters) on %s: %d train / %d %s images of %s, %d epochs, on %s in %s",
                 cfg.model, f"{sum(p.numel() for p in trainer.model.parameters()):,}", cfg.data, len(train_set),
                 len(val_set), cfg.val_split, "x".join(map(str, train_set.image_size)), cfg.epochs,
                 describe_device(device), cfg.precision)
    if cfg.warmup_epochs >= cfg.epochs:
        log.warning("the %g-epoch warm-up lasts the whole %d-epoch run, so the learning rate never comes down; "
                    "lower --warmup-epochs", cfg.warmup_epochs, cfg.epochs)
    if cfg.map_targets is not None:
        log.info("map guidance: %s targets for %d of %d training images, %s loss x %g", cfg.map_targets,
                 guided_count(train_set), len(train_set), cfg.map_loss, cfg.map_weight)
    if job.is_main:
        trainer.last_metrics = _keep_metrics_before(run_dir / "metrics.jsonl", state.epoch)
    if state.epoch >= cfg.epochs:
        log.info("%s has already trained all %d epochs; pass a larger --epochs to continue", run_dir, cfg.epochs)
    return trainer, state


# Settings that decide which images each step trains on: a resumed run must keep them.
RESUME_FIXED = ("model", "data", "batch_size", "seed", "limit_train", "image_size", "val_fraction", "val_split",
                "coarse")


def check_resumable(cfg: TrainConfig, meta: CheckpointMeta, run_dir: Path) -> None:
    """Refuse to resume a run with settings that would make its saved step point at other images."""
    before = TrainConfig.from_run(meta.train_config, f"{run_dir / STATE_FILE}'s settings").resolved()
    changed = [f"--{k.replace('_', '-')} {getattr(before, k)} -> {getattr(cfg, k)}" for k in RESUME_FIXED
               if getattr(before, k) != getattr(cfg, k)]
    if changed:
        raise AbnetError(f"cannot resume {run_dir} with other data settings ({', '.join(changed)}); resume "
                         "without them, or start a new run (--weights can start it from this one)")


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
    if cfg.pretrained:
        if not cfg.model.startswith(("tv:", "timm:")):
            raise AbnetError(f"--pretrained applies to tv:<name> and timm:<name> models, not {cfg.model}; "
                             "start other models from a file with --weights")
        kwargs.update(pretrained=True)
    try:
        return create_model(cfg.model, weights=cfg.weights, **kwargs)
    except ClassCountError as err:
        raise AbnetError(f"--weights {cfg.weights} holds a model for {err.held} classes, but {cfg.data} has "
                         f"{err.asked}; start from weights trained on {cfg.data}, or without --weights") from None


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


def deterministic_kernels() -> None:
    """Make GPU runs repeatable: deterministic cuDNN convolutions and cuBLAS workspaces, no autotuning. CPU
    kernels here are deterministic already. (Ops without a deterministic CUDA kernel warn; ABN's only ones,
    global average pools, get one gradient per input element, so their atomic adds are exact.)"""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


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


def _keep_metrics_before(path: Path, epoch: int) -> dict[str, Any]:
    """On resume, drop metric lines of epochs that will be trained again; returns the last kept line."""
    if not path.exists():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epoch]
    write_text(path, "".join(ln + "\n" for ln in lines))
    return json.loads(lines[-1]) if lines else {}


def _log_to(path: Path) -> logging.Handler:
    """Also log to ``path``, until the handler returned is removed."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler
