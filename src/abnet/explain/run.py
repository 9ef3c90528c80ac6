"""`abnet explain`: maps for image files or a data set, a grid PNG, a self-contained HTML report and,
on request, localisation and faithfulness metrics for ABN and each baseline on the same model, and
predictions with edited maps beside the model's own."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..data.images import Inputs
from ..data.loader import normalize
from ..engine.attributes import attribute_pointing_game
from ..engine.device import model_device
from ..errors import AbnetError
from ..fileio import write_text
from ..metrics import deletion_insertion, energy_in_mask, iou_at_threshold, pointing_game
from ..models import perception_logits
from ..models.abn import probabilities
from ..models.inference import inference_model
from ..models.meta import CheckpointMeta
from .edits import EditedMaps, predict_with_edits
from .methods import Explanation, explain, minmax
from .overlay import overlay, save_grid
from .report import ReportItem, write_report


@dataclass
class MethodResult:
    explanation: Explanation
    seconds: float


def compute_maps(model: nn.Module, x: Tensor, methods: Sequence[str], fast: nn.Module | None,
                 batch_size: int) -> dict[str, MethodResult]:
    """Each method's maps; ``abn`` runs on the fast inference copy, the baselines on the model itself."""
    results = {}
    for method in methods:
        runner = fast if method == "abn" and fast is not None else model
        started = time.perf_counter()
        results[method] = MethodResult(explain(runner, x, method, batch_size=batch_size),
                                       time.perf_counter() - started)
    return results


def probability_fn(fast: nn.Module, multi_label: bool) -> Callable[[Tensor], Tensor]:
    """Model input -> class probabilities of the perception branch (softmax, or sigmoid per attribute); the
    input moves to the model's device."""
    device = model_device(fast)

    def predict(x: Tensor) -> Tensor:
        return probabilities(perception_logits(fast(x.to(device))), multi_label)

    return predict


def method_metrics(results: dict[str, MethodResult], x: Tensor, inputs: Inputs, predict: Callable[[Tensor], Tensor],
                   steps: int, batch_size: int) -> list[dict[str, Any]]:
    """One row per method: localisation against masks (when known), deletion/insertion AUC, cost."""
    rows = []
    for method, result in results.items():
        e = result.explanation
        row: dict[str, Any] = {"method": method, "images": len(x)}
        maps = minmax(e.maps)  # every method on the same footing: each map spans [0, 1]
        if e.maps.dim() == 4:  # multi-task: localisation per attribute, over the images that have it
            row.update(_attribute_localisation(maps, inputs))
        else:
            if inputs.masks is not None and inputs.masks.dim() == 3:
                row["pointing_game"] = pointing_game(maps.unsqueeze(1), inputs.masks).float().mean().item()
                row["energy_in_mask"] = energy_in_mask(maps.unsqueeze(1), inputs.masks).mean().item()
                row["iou@0.5"] = iou_at_threshold(maps, inputs.masks).nanmean().item()
            deletion, insertion = deletion_insertion(predict, x, maps, e.targets, steps=steps, batch_size=batch_size)
            row["deletion_auc"] = deletion.mean().item()
            row["insertion_auc"] = insertion.mean().item()
        row["ms_per_image"] = 1000 * result.seconds / max(1, len(x))
        rows.append(row)
    return rows


def _attribute_localisation(maps: Tensor, inputs: Inputs) -> dict[str, Any]:
    """Pointing game and energy per attribute for (N, T, H, W) maps and masks, over the images that have it."""
    if inputs.masks is None or inputs.masks.dim() != 4:
        return {}
    hits, counts = attribute_pointing_game(maps, inputs.masks)
    n, t, h, w = inputs.masks.shape
    energy = energy_in_mask(maps.reshape(n * t, 1, h, w), inputs.masks.reshape(n * t, h, w)).view(n, t)
    present = inputs.masks.flatten(2).any(2)
    seen = counts > 0
    per_attribute = hits / counts.clamp_min(1)
    return {"pointing_game": per_attribute[seen].mean().item(),
            "energy_in_mask": ((energy * present).sum(0) / counts.clamp_min(1))[seen].mean().item(),
            "pointing_game_per_attribute": per_attribute.tolist()}


def top_k_predictions(logits: Tensor, classes: list[str], k: int, multi_label: bool) -> list[tuple[str, float]]:
    """One image's ``k`` most probable classes (attributes: by their own sigmoid) with their probabilities."""
    values, index = probabilities(logits, multi_label).topk(min(k, len(classes)))
    return [(classes[i], v) for i, v in zip(index.tolist(), values.tolist())]


def labelled_maps(results: dict[str, MethodResult], classes: list[str]) -> dict[str, Tensor]:
    """The maps to show, (N, 1, H, W) each scaled to [0, 1], by label: the method's name, or for a
    multi-task ABN one per attribute ("abn: eyeglasses")."""
    shown = {}
    for method, result in results.items():
        maps = minmax(result.explanation.maps)
        if maps.dim() == 4:
            shown.update({f"{method}: {name}": maps[:, t:t + 1] for t, name in enumerate(classes)})
        else:
            shown[method] = maps.unsqueeze(1)
    return shown


def report_items(inputs: Inputs, results: dict[str, MethodResult], classes: list[str], top_k: int,
                 show: int, multi_label: bool) -> list[ReportItem]:
    """The first ``show`` images as report entries: image, one overlay per method (or per attribute), top-k."""
    first = next(iter(results.values())).explanation
    n = min(show, len(inputs.images))
    overlays = {label: overlay(inputs.images[:n], maps[:n]) for label, maps in labelled_maps(results, classes).items()}
    items = []
    for i in range(n):
        predictions = {"perception": top_k_predictions(first.logits[i], classes, top_k, multi_label)}
        if first.att_logits is not None:
            predictions["attention"] = top_k_predictions(first.att_logits[i], classes, top_k, multi_label)
        truth, correct = truth_and_correct(inputs, i, classes, first.logits[i], multi_label)
        items.append(ReportItem(
            name=inputs.names[i], image=inputs.images[i].permute(1, 2, 0).numpy(),
            overlays={label: o[i] for label, o in overlays.items()}, predictions=predictions,
            truth=truth, correct=correct, note=inputs.notes[i] if inputs.notes else None))
    return items


def truth_and_correct(inputs: Inputs, i: int, classes: list[str], logits: Tensor,
                      multi_label: bool) -> tuple[str | None, bool | None]:
    """Image i's true class (attributes: those present) in words, and whether ``logits`` decide it right (every
    attribute, for attribute data); both None without labels."""
    if inputs.labels is None:
        return None, None
    label = inputs.labels[i]
    if multi_label:
        present = [classes[t] for t in label.nonzero().flatten().tolist()]
        return ", ".join(present) or "(none)", bool(((logits > 0) == (label > 0.5)).all())
    return classes[int(label)], int(logits.argmax()) == int(label)


def edit_records(inputs: Inputs, edits: EditedMaps, own: Tensor, edited: Tensor, classes: list[str], top_k: int,
                 multi_label: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per image, its prediction with its own map and, where an edited map was given, with that; and a
    summary: how many images were edited, for how many the top class (attributes: any decision) changed,
    and, with labels, the accuracy of the edited images with their own and with the edited maps."""
    records = []
    for i, given in enumerate(edits.found.any(1).tolist()):
        truth, correct = truth_and_correct(inputs, i, classes, own[i], multi_label)
        record = {"name": inputs.names[i], "truth": truth, "edited": given,
                  "prediction": top_k_predictions(own[i], classes, top_k, multi_label), "correct": correct,
                  "edited_prediction": None, "edited_correct": None, "changed": False}
        if given:
            decisions = (own[i] > 0, edited[i] > 0) if multi_label else (own[i].argmax(), edited[i].argmax())
            record.update(edited_prediction=top_k_predictions(edited[i], classes, top_k, multi_label),
                          edited_correct=truth_and_correct(inputs, i, classes, edited[i], multi_label)[1],
                          changed=not bool((decisions[0] == decisions[1]).all()))
        records.append(record)
    done = [r for r in records if r["edited"]]
    summary: dict[str, Any] = {"images": len(records), "edited": len(done), "changed": sum(r["changed"] for r in done)}
    if inputs.labels is not None and done:
        summary["accuracy"] = sum(bool(r["correct"]) for r in done) / len(done)
        summary["edited_accuracy"] = sum(bool(r["edited_correct"]) for r in done) / len(done)
    return records, summary


def _add_edits(items: list[ReportItem], inputs: Inputs, edits: EditedMaps, records: list[dict[str, Any]],
               classes: list[str]) -> None:
    """Each report entry with an edited map gets its overlay (one per attribute given) and the prediction with it."""
    n = len(items)
    tasks = edits.maps.shape[1]
    for t in range(tasks):
        label = "edited map" if tasks == 1 else f"edited: {classes[t]}"
        shown = overlay(inputs.images[:n], edits.maps[:n, t:t + 1].float() / 255)
        for i in edits.found[:n, t].nonzero().flatten().tolist():
            items[i].overlays[label] = shown[i]
    for item, record in zip(items, records):
        if record["edited"]:
            item.predictions["perception, edited map"] = record["edited_prediction"]
            if record["changed"]:
                change = "the edited map changes the prediction"
                item.note = f"{item.note}; {change}" if item.note else change


def edit_info(summary: dict[str, Any]) -> str:
    """The edits' summary in words."""
    text = f"{summary['edited']} of {summary['images']} images, prediction changed for {summary['changed']}"
    if "accuracy" in summary:
        text += (f"; their accuracy {summary['accuracy']:.3f} with their own maps, "
                 f"{summary['edited_accuracy']:.3f} with the edited ones")
    return text


def run_explain(
    model: nn.Module,
    meta: CheckpointMeta,
    inputs: Inputs,
    out: str | Path,
    methods: Sequence[str] = ("abn",),
    metrics: bool = False,
    show: int = 48,
    top_k: int = 3,
    steps: int = 16,
    batch_size: int = 128,
    compile: bool = False,
    info: dict[str, str] | None = None,
    edits: EditedMaps | None = None,
) -> dict[str, Any]:
    """Explain ``inputs`` with ``model`` by each method and write ``grid.png``, ``report.html`` and, with
    ``metrics``, ``metrics.json``, into ``out``; with ``edits`` (an ABN's edited maps, see
    :mod:`abnet.explain.edits`) also each image's prediction with its edited map, in the report and in
    ``edits.json``. Returns a summary (files, metrics rows, failures, and the edits' summary)."""
    out = Path(out)
    if len(inputs.images) == 0:
        raise AbnetError("none of the images could be read: " + "; ".join(f"{f}: {r}" for f, r in inputs.failures[:3]))
    classes = list(meta.classes)
    x = normalize(inputs.images, meta.mean, meta.std)
    fast = inference_model(model, compile=compile) if "abn" in methods else None
    results = compute_maps(model, x, methods, fast, batch_size)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    # Attribute data: from the checkpoint, or (checkpoints written before it said so) from the labels or maps.
    multi_label = meta.multi_label or next(iter(results.values())).explanation.maps.dim() == 4 or (
        inputs.labels is not None and inputs.labels.is_floating_point())
    if metrics:
        predict = probability_fn(fast or inference_model(model), multi_label)
        rows = method_metrics(results, x, inputs, predict, steps, batch_size)
        write_text(out / "metrics.json", json.dumps({"rows": rows, **(info or {})}, indent=2) + "\n")
    items = report_items(inputs, results, classes, top_k, show, multi_label)
    edit_summary = None
    if edits is not None:
        records, edit_summary = edit_records(inputs, edits, *predict_with_edits(model, x, edits, batch_size),
                                             classes, top_k, multi_label)
        _add_edits(items, inputs, edits, records, classes)
        write_text(out / "edits.json", json.dumps({"summary": edit_summary, "images": records}, indent=2) + "\n")
    grid_maps = labelled_maps(results, classes)
    n_grid = min(len(items), 16 if len(grid_maps) <= 2 else 8)
    save_grid(out / "grid.png", inputs.images[:n_grid], {k: v[:n_grid] for k, v in grid_maps.items()},
              [item.name + (f"\n{item.truth}" if item.truth else "") for item in items[:n_grid]],
              correct=None if inputs.labels is None else [bool(item.correct) for item in items[:n_grid]],
              columns=max(1, 10 // (1 + len(grid_maps))))
    report_info = {**(info or {}), "images": str(len(inputs.images)), "methods": ", ".join(methods),
                   "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if edit_summary is not None:
        report_info["edited maps"] = edit_info(edit_summary)
    table = [{k: v for k, v in row.items() if not isinstance(v, list)} for row in rows] or None
    write_report(out / "report.html", items, title=f"abnet explain: {meta.model_name}",
                 metrics=table, failures=inputs.failures, info=report_info)
    files = ["report.html", "grid.png"] + (["metrics.json"] if metrics else [])
    files += ["edits.json"] if edits is not None else []
    return {"files": files, "metrics": rows, "failures": inputs.failures, "images": len(inputs.images),
            "edits": edit_summary}
