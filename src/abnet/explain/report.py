"""A self-contained HTML report of explanations: one file, images inlined, filterable and sortable in the browser.

Everything shown comes from users (class and file names, notes, info, metrics) and is HTML-escaped;
the page loads nothing from outside (images are PNG data URIs, CSS and JS inline) and its content
security policy allows only its own script and style, by hash, so even a missed escape could not run
code. Per-item data for the filters lives in escaped ``data-*`` attributes, not in the script.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import write_text

MIN_SIDE = 128  # images with a longer side below this are scaled up by an integer factor, pixelated
MAX_SIDE = 256  # and larger ones shown at most this big


@dataclass
class ReportItem:
    """One explained image: the picture, its overlays, both branches' top-k predictions and the truth if known."""

    name: str
    image: np.ndarray
    overlays: dict[str, np.ndarray]
    predictions: dict[str, list[tuple[str, float]]]
    truth: str | None = None
    correct: bool | None = None
    note: str | None = None


_VERDICTS = [("", "all"), ("correct", "correct"), ("wrong", "wrong"), ("unknown", "unknown")]
_ORDERS = [("given", "given order"), ("name", "name"), ("confidence", "confidence"), ("predicted", "predicted class")]

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { margin: 0 0 .3em; font-size: 1.5em; }
h2 { font-size: 1.1em; margin: .2em 0; word-break: break-all; }
dl.info { display: grid; grid-template-columns: max-content 1fr; gap: .1em 1em; margin: .5em 0; }
dl.info dt { font-weight: 600; }
dl.info dd { margin: 0; word-break: break-all; }
table.metrics { border-collapse: collapse; margin: .5em 0 1em; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
table.metrics th { background: #eee; }
.failures li { color: #a00; }
.controls { position: sticky; top: 0; background: #fafafa; padding: .5em 0; border-bottom: 1px solid #ddd; z-index: 1; }
.controls label { margin-right: 1em; }
.item { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em .8em; margin: .8em 0; }
.item header { display: flex; align-items: center; gap: .8em; }
.figs { display: flex; flex-wrap: wrap; gap: .6em; margin: .4em 0; }
figure { margin: 0; }
figcaption { font-size: .85em; color: #555; text-align: center; max-width: 256px; word-break: break-all; }
img { display: block; background: #eee; }
img.px { image-rendering: pixelated; }
.preds { display: flex; flex-wrap: wrap; gap: 2em; }
.preds h3 { font-size: .9em; margin: 0; color: #555; }
.preds ol { margin: 0; padding-left: 2.2em; font-family: ui-monospace, monospace; }
.preds li.hit { font-weight: 700; }
.badge { border-radius: 3px; padding: 0 .5em; font-size: .85em; color: #fff; }
.badge.correct { background: #2a7d2a; }
.badge.wrong { background: #b42020; }
.badge.unknown { background: #888; }
.note, .truth { margin: .2em 0; color: #555; }
"""

# Reads the filter state from the URL fragment (e.g. report.html#correct=wrong&sort=confidence), applies
# it, and keeps the fragment in step with the controls. After load, body[data-ready] is the number of
# decoded images and body[data-shown] the number of items shown: tests read them.
_JS = """
(function () {
  "use strict";
  var list = document.getElementById("items");
  var cards = Array.prototype.slice.call(list.querySelectorAll(".item"));
  var controls = {class: document.getElementById("f-class"), correct: document.getElementById("f-correct"),
                  sort: document.getElementById("f-sort")};
  function conf(c) { var v = parseFloat(c.dataset.confidence); return isNaN(v) ? -1 : v; }
  function given(a, b) { return a.dataset.index - b.dataset.index; }
  var orders = {
    given: given,
    name: function (a, b) {
      return a.dataset.name.localeCompare(b.dataset.name, undefined, {numeric: true}) || given(a, b);
    },
    confidence: function (a, b) { return conf(b) - conf(a) || given(a, b); },
    predicted: function (a, b) {
      return a.dataset.predicted.localeCompare(b.dataset.predicted) || conf(b) - conf(a) || given(a, b);
    }
  };
  function apply() {
    var want = controls.class.value, correct = controls.correct.value, shown = 0;
    cards.slice().sort(orders[controls.sort.value] || given).forEach(function (c) {
      var ok = (!want || JSON.parse(c.dataset.classes).indexOf(want) >= 0) &&
               (!correct || c.dataset.correct === correct);
      c.hidden = !ok;
      if (ok) { shown += 1; }
      list.appendChild(c);
    });
    document.getElementById("shown").textContent = shown + " of " + cards.length + " shown";
    document.body.dataset.shown = String(shown);
  }
  var state = new URLSearchParams(location.hash.slice(1));
  Object.keys(controls).forEach(function (key) {
    if (state.has(key)) { controls[key].value = state.get(key); }
    controls[key].addEventListener("change", function () {
      var next = new URLSearchParams();
      Object.keys(controls).forEach(function (k) { if (controls[k].value) { next.set(k, controls[k].value); } });
      apply();
      location.replace("#" + next.toString());
    });
  });
  apply();
  window.addEventListener("load", function () {
    var ready = 0;
    Array.prototype.forEach.call(document.images, function (img) {
      if (img.complete && img.naturalWidth > 0) { ready += 1; }
    });
    document.body.dataset.ready = String(ready);
  });
})();
"""


def _esc(value: object) -> str:
    """HTML-escape anything, quotes included, so it is safe in text and in attribute values."""
    return html.escape(str(value), quote=True)


def _csp_hash(text: str) -> str:
    """The CSP source expression allowing exactly this inline script or style."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _img(array: np.ndarray, alt: str) -> str:
    """An <img> with the array inlined as a PNG data URI, small images scaled up (pixelated), big ones down."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ValueError(f"{alt}: images must be uint8 (H, W, 3), got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    h, w = array.shape[:2]
    side = max(h, w)
    scale = math.ceil(MIN_SIDE / side) if side < MIN_SIDE else min(1.0, MAX_SIDE / side)
    pixelated = ' class="px"' if scale > 1 else ""
    return f'<img src="{uri}" width="{round(w * scale)}" height="{round(h * scale)}" alt="{_esc(alt)}"{pixelated}>'


def _figure(array: np.ndarray, label: str) -> str:
    """An image with its label underneath."""
    return f"<figure>{_img(array, label)}<figcaption>{_esc(label)}</figcaption></figure>"


def _top(item: ReportItem) -> tuple[str, float] | None:
    """The top perception prediction (or of the first branch, when none is called perception)."""
    ranked = item.predictions.get("perception") or next(iter(item.predictions.values()), [])
    return (str(ranked[0][0]), float(ranked[0][1])) if ranked else None


def _filter_classes(item: ReportItem) -> list[str]:
    """What the class filter matches this item on: each branch's top-1 class and the truth."""
    classes = [str(ranked[0][0]) for ranked in item.predictions.values() if ranked]
    if item.truth is not None:
        classes.append(str(item.truth))
    return list(dict.fromkeys(classes))


def _verdict(item: ReportItem) -> str:
    """The correctness filter's value for this item."""
    return "unknown" if item.correct is None else ("correct" if item.correct else "wrong")


def _card(index: int, item: ReportItem) -> str:
    """One item: name, badge, note, image and overlays, each branch's predictions, truth."""
    top = _top(item)
    verdict = _verdict(item)
    truths = set() if item.truth is None else {str(item.truth), *(t.strip() for t in str(item.truth).split(","))}
    figures = [_figure(item.image, "image")] + [_figure(array, label) for label, array in item.overlays.items()]
    hit = ' class="hit"'
    branches = []
    for branch, ranked in item.predictions.items():
        lines = "".join(f"<li{hit if str(c) in truths else ''}>{_esc(c)} {float(p):.2f}</li>" for c, p in ranked)
        branches.append(f'<div class="branch"><h3>{_esc(branch)}</h3><ol>{lines}</ol></div>')
    attrs = {
        "index": str(index),
        "name": item.name,
        "predicted": top[0] if top else "",
        "confidence": f"{top[1]:.6f}" if top else "",
        "classes": json.dumps(_filter_classes(item), ensure_ascii=True),
        "correct": verdict,
    }
    data = " ".join(f'data-{key}="{_esc(value)}"' for key, value in attrs.items())
    note = f'<p class="note">{_esc(item.note)}</p>' if item.note else ""
    truth = f'<p class="truth">truth: <b>{_esc(item.truth)}</b></p>' if item.truth is not None else ""
    return (
        f'<article class="item" {data}><header><h2>{_esc(item.name)}</h2>'
        f'<span class="badge {verdict}">{verdict}</span></header>{note}'
        f'<div class="figs">{"".join(figures)}</div><div class="preds">{"".join(branches)}</div>{truth}</article>'
    )


def _cell(value: object) -> str:
    """A metrics-table cell: floats to 3 decimals, None (or missing) as a dash, the rest as text."""
    if value is None:
        return "\u2013"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    return str(value)


def _metrics_table(rows: Sequence[dict]) -> str:
    """A table whose columns are the union of the rows' keys, in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows)
    return f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _select(id_: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    """A labelled <select> of (value, text) options."""
    opts = "".join(f'<option value="{_esc(v)}">{_esc(t)}</option>' for v, t in options)
    return f'<label>{_esc(label)} <select id="{id_}">{opts}</select></label>'


def render_report(
    items: Sequence[ReportItem],
    title: str,
    metrics: Sequence[dict] | None = None,
    failures: Sequence[tuple[str, str]] = (),
    info: dict[str, str] | None = None,
) -> str:
    """The report page as one string of ASCII HTML (non-ASCII text as character references)."""
    cards = [_card(i, item) for i, item in enumerate(items)]
    n_images = sum(1 + len(item.overlays) for item in items)
    verdicts = [_verdict(item) for item in items]
    classes = sorted({c for item in items for c in _filter_classes(item)})
    parts = [f"<h1>{_esc(title)}</h1>"]
    if info:
        pairs = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in info.items())
        parts.append(f'<dl class="info">{pairs}</dl>')
    summary = f"{len(items)} items: {verdicts.count('correct')} correct, {verdicts.count('wrong')} wrong"
    parts.append(f'<p class="summary">{summary}, {verdicts.count("unknown")} without truth</p>')
    if metrics:
        parts.append("<h2>Metrics</h2>" + _metrics_table(metrics))
    if failures:
        lines = "".join(f'<li><span class="file">{_esc(f)}</span> \u2014 {_esc(r)}</li>' for f, r in failures)
        parts.append(f'<section class="failures"><h2>Failures ({len(failures)})</h2><ul>{lines}</ul></section>')
    parts.append(
        '<div class="controls">'
        + _select("f-class", "class", [("", "all classes")] + [(c, c) for c in classes])
        + _select("f-correct", "show", _VERDICTS)
        + _select("f-sort", "sort by", _ORDERS)
        + '<span id="shown"></span></div>'
    )
    parts.append('<main id="items">' + "".join(cards) + "</main>")
    if not items:
        parts.append('<p class="empty">No items.</p>')
    csp = (
        f"default-src 'none'; img-src data:; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; "
        "base-uri 'none'; form-action 'none'"
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n"
        f'<body data-images="{n_images}">\n' + "\n".join(parts) + f"\n<script>{_JS}</script>\n</body></html>\n"
    )
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")


def write_report(
    path: str | Path,
    items: Sequence[ReportItem],
    title: str,
    metrics: Sequence[dict] | None = None,
    failures: Sequence[tuple[str, str]] = (),
    info: dict[str, str] | None = None,
) -> None:
    """Write the report (see ``render_report``) atomically: a failure leaves no partial file behind."""
    write_text(path, render_report(items, title, metrics, failures, info))
