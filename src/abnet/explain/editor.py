"""`abnet edit`: a local page where a person paints an ABN's attention map up and down, sees the prediction the
perception branch makes with the edited map (``model(x, attention=M)``), and saves the maps as target maps in the
layout ``abnet train --map-targets DIR`` and ``abnet explain --attention DIR`` read.

The server binds to 127.0.0.1 only and answers only requests carrying its random token (in the URL, as Jupyter
does); it serves its page and the given images by index, so no request names a file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import secrets
import threading
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ..data.images import Inputs, dataset_inputs, read_images
from ..data.loader import normalize
from ..engine.device import model_device
from ..engine.guidance import area_resize
from ..errors import AbnetError
from ..fileio import atomic_write
from ..models.abn import ABNOutput, probabilities
from ..models.meta import CheckpointMeta
from .edits import Place, data_edit_places, file_edit_places, readable_places, require_abn
from .run import top_k_predictions, truth_and_correct

log = logging.getLogger("abnet")

PAGE = "editor.html"
HOST = "127.0.0.1"
TOKEN_HEADER = "X-Abnet-Token"
_ROUTE = re.compile(r"/api/(image|map|item|infer|save)/([0-9]{1,9})")
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


@dataclass
class EditItems:
    """Images to edit and where each one's edited maps go: ``files[i]``, image i's map files relative to the
    output folder, in the layout ``abnet explain --attention`` reads (:mod:`abnet.explain.edits`): one file, or
    one per attribute of a multi-task model."""

    inputs: Inputs
    files: list[list[Path]]

    def __len__(self) -> int:
        return len(self.files)


def file_items(files: Sequence[Path], size: int, attributes: Sequence[str] | None = None) -> EditItems:
    """Image files read as explain reads them (``size`` x ``size``, shorter side, centre crop); map i goes to
    ``OUT/<stem>.png`` (``attributes``: the task names of a multi-task model, ``OUT/<stem>.<attribute>.png``).
    Unreadable files are listed in ``inputs.failures``."""
    return _checked(read_images(files, size), file_edit_places(Path(), files, attributes))


def dataset_items(data: Any, split: str, attributes: Sequence[str] | None = None) -> EditItems:
    """A data set split (an ImageSet in memory, or a FolderIndex of files): map i goes to
    ``OUT/<split>/<class>/<stem>.png`` as :func:`abnet.explain.edits.data_edit_places` lays it out."""
    return _checked(dataset_inputs(data, split), data_edit_places(Path(), data, split, attributes))


def _checked(inputs: Inputs, places: Sequence[Place]) -> EditItems:
    """The readable images with their map files; refuses files that would leave the output folder or that two
    images share."""
    items = EditItems(inputs, [files for files, _ in readable_places(places, inputs)])
    seen: dict[Path, str] = {}
    for name, files in zip(inputs.names, items.files):
        for file in files:
            for part in file.parts:
                if part == ".." or any(c in part for c in "/\\\0"):
                    raise AbnetError(f"{part!r} cannot be part of a map file's name; rename the class or image")
            if file in seen:
                raise AbnetError(f"{seen[file]} and {name} would both save their map to {file}; give the images "
                                 "distinct file names")
            seen[file] = name
    return items


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Editor:
    """The model side of the editor: each image's prediction and maps, re-inference with edited maps, and
    saving them. Maps travel as uint8 (T, H, W) at the image's display size (the model's input size),
    255 = attend."""

    def __init__(self, model: nn.Module, meta: CheckpointMeta, items: EditItems, out: str | Path, top_k: int = 3):
        require_abn(model, "editing attention maps")
        if len(items) == 0:
            raise AbnetError("no image to edit could be read: "
                             + "; ".join(f"{f}: {r}" for f, r in items.inputs.failures[:3]))
        self.model, self.meta, self.items, self.out, self.top_k = model.eval(), meta, items, Path(out), top_k
        self.classes = list(meta.classes)
        labels = items.inputs.labels
        self.multi_label = meta.multi_label or (labels is not None and labels.is_floating_point())
        self.size = tuple(items.inputs.images.shape[2:])
        self._lock = threading.Lock()
        self._own: dict[int, ABNOutput] = {}
        self.num_maps = self.own_output(0).attention.shape[1]
        if any(len(files) != self.num_maps for files in items.files):
            raise ValueError(f"the items have {len(items.files[0])} map files per image, the model {self.num_maps} "
                             "maps: make them with attributes=map_attributes(model, classes)")
        self.map_names = self.classes if self.num_maps > 1 else None

    def __len__(self) -> int:
        return len(self.items)

    def _x(self, i: int) -> Tensor:
        x = normalize(self.items.inputs.images[i:i + 1], self.meta.mean, self.meta.std)
        return x.to(model_device(self.model))

    def own_output(self, i: int) -> ABNOutput:
        """The model's output for image i with its own map (computed once)."""
        with self._lock:
            if i not in self._own:
                with torch.inference_mode():
                    out = self.model(self._x(i))
                self._own[i] = ABNOutput(*(t.float().cpu() for t in out))
            return self._own[i]

    def _predictions(self, output: ABNOutput, attention: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            "perception": top_k_predictions(output.logits[0], self.classes, self.top_k, self.multi_label),
            "probabilities": probabilities(output.logits[0], self.multi_label).tolist()}
        if attention:
            result["attention"] = top_k_predictions(output.att_logits[0], self.classes, self.top_k,
                                                    self.multi_label)
        return result

    def info(self) -> dict[str, Any]:
        """What the page needs to know once: the model, the images, the map size and names, the colour map."""
        import matplotlib  # only here: the colours of explain's overlays

        colours = np.round(255 * matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3]).astype(int)
        return {"model": self.meta.model_name, "count": len(self), "size": list(self.size), "maps": self.num_maps,
                "map_names": self.map_names, "classes": self.classes, "out": str(self.out),
                "names": self.items.inputs.names, "colormap": colours.tolist()}

    def item(self, i: int) -> dict[str, Any]:
        """Image i: its name, truth, note, the files its maps save to, and its prediction with its own map."""
        inputs, output, files = self.items.inputs, self.own_output(i), self.files(i)
        truth, correct = truth_and_correct(inputs, i, self.classes, output.logits[0], self.multi_label)
        return {"index": i, "name": inputs.names[i], "truth": truth, "correct": correct,
                "note": inputs.notes[i] if inputs.notes else None,
                "files": [str(f) for f in self.items.files[i]], "saved": all(f.is_file() for f in files),
                "predictions": self._predictions(output, attention=True)}

    def image_png(self, i: int) -> bytes:
        """Image i as the model sees it (its display size), as PNG bytes for the page."""
        return _png(self.items.inputs.images[i].permute(1, 2, 0).numpy())

    def own_maps(self, i: int) -> np.ndarray:
        """Image i's own maps at its display size, uint8 (T, H, W)."""
        maps = F.interpolate(self.own_output(i).attention, size=self.size, mode="bilinear", align_corners=False)
        return np.round(255 * maps[0].clamp(0, 1).numpy()).astype(np.uint8)

    def maps_from_bytes(self, body: bytes) -> np.ndarray:
        """Edited maps sent by the page: T * H * W bytes, row-major."""
        expected = self.num_maps * self.size[0] * self.size[1]
        if len(body) != expected:
            raise AbnetError(f"expected {expected} bytes of maps ({self.num_maps} x {self.size[0]} x "
                             f"{self.size[1]}), got {len(body)}")
        return np.frombuffer(body, dtype=np.uint8).reshape(self.num_maps, *self.size)

    def infer(self, i: int, maps: np.ndarray) -> dict[str, Any]:
        """The perception branch's prediction for image i reading the edited maps, area-averaged to the model's
        map size."""
        h, w = self.own_output(i).attention.shape[2:]
        device = model_device(self.model)
        edited = area_resize(torch.from_numpy(maps.copy()).float().div_(255).unsqueeze(0), (h, w))
        with self._lock, torch.inference_mode():
            out = self.model(self._x(i), attention=edited.to(device))
        return self._predictions(ABNOutput(*(t.float().cpu() for t in out)), attention=False)

    def files(self, i: int) -> list[Path]:
        """Where image i's maps are saved."""
        return [self.out / f for f in self.items.files[i]]

    def save(self, i: int, maps: np.ndarray) -> list[Path]:
        """Write image i's maps as 8-bit grayscale PNGs at its display size, each atomically."""
        files = self.files(i)
        for path, array in zip(files, maps):
            path.parent.mkdir(parents=True, exist_ok=True)
            data = _png(np.ascontiguousarray(array))
            atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data))
        return files


class EditorServer(ThreadingHTTPServer):
    """The editor's HTTP server on 127.0.0.1: ``serve_forever()`` (e.g. in a thread), ``shutdown()``,
    ``server_close()``; ``url`` holds the token."""

    daemon_threads = True

    def __init__(self, editor: Editor, port: int = 0):
        if not 0 <= port <= 65535:
            raise AbnetError(f"--port {port} is not a port; give 1-65535, or 0 for a free one")
        try:
            super().__init__((HOST, port), _Handler)
        except OSError as err:
            raise AbnetError(f"cannot listen on {HOST}:{port} ({err.strerror}); choose another --port, or 0 "
                             "for a free one") from None
        self.editor = editor
        self.token = secrets.token_urlsafe(24)
        self.page, self.policy = _page()

    @property
    def url(self) -> str:
        """The page's address, with the token every request must carry."""
        return f"http://{HOST}:{self.server_port}/?token={self.token}"


def serve(model: nn.Module, meta: CheckpointMeta, items: EditItems, out: str | Path, port: int = 0,
          top_k: int = 3, open_browser: bool = False) -> EditorServer:
    """An editor server for ``items``, bound (``port`` 0: a free port) but not yet serving: call its
    ``serve_forever()``. Maps are saved under ``out``; ``open_browser`` opens its page in the default browser."""
    server = EditorServer(Editor(model, meta, items, out, top_k), port)
    if open_browser:
        webbrowser.open(server.url)
    return server


def _page() -> tuple[bytes, str]:
    """The page, and a content security policy that allows its own inline script and style (by hash), requests
    to this server and nothing else."""
    text = resources.files(__package__).joinpath(PAGE).read_text(encoding="utf-8")
    hashes = {"script": [], "style": []}
    for kind, body in _INLINE.findall(text):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    policy = (f"default-src 'none'; script-src {' '.join(hashes['script'])}; style-src {' '.join(hashes['style'])}; "
              "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return text.encode(), policy


class _Handler(BaseHTTPRequestHandler):
    """Token first (403 without it), then the page, the item list, or an item's endpoint by index (404 for
    anything else)."""

    server: EditorServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        given = self.headers.get(TOKEN_HEADER) or parse_qs(url.query).get("token", [""])[0]
        if not secrets.compare_digest(given.encode(), self.server.token.encode()):
            return self._send(403, b"forbidden: this editor needs the token of its URL\n", "text/plain")
        editor = self.server.editor
        try:
            if method == "GET" and url.path == "/":
                return self._send(200, self.server.page, "text/html; charset=utf-8")
            if method == "GET" and url.path == "/api/items":
                return self._json(editor.info())
            route = _ROUTE.fullmatch(url.path)
            if route is None or int(route[2]) >= len(editor) or (method == "POST") != (route[1] in ("infer", "save")):
                return self._send(404, b"not found\n", "text/plain")
            self._item(editor, route[1], int(route[2]))
        except AbnetError as err:
            self._json({"error": str(err)}, 400)
        except Exception as err:  # a bug: the page shows it, the console logs it
            log.exception("abnet edit: %s %s failed", method, url.path)
            self._json({"error": f"{type(err).__name__}: {err}"}, 500)

    def _item(self, editor: Editor, action: str, i: int) -> None:
        if action == "image":
            return self._send(200, editor.image_png(i), "image/png")
        if action == "map":
            return self._send(200, editor.own_maps(i).tobytes(), "application/octet-stream")
        if action == "item":
            return self._json(editor.item(i))
        maps = editor.maps_from_bytes(self._body(editor))
        if action == "infer":
            return self._json(editor.infer(i, maps))
        editor.save(i, maps)
        self._json({"files": [str(f) for f in editor.items.files[i]]})

    def _body(self, editor: Editor) -> bytes:
        length = self.headers.get("Content-Length", "")
        limit = editor.num_maps * editor.size[0] * editor.size[1]
        if not length.isdigit() or int(length) > limit:
            raise AbnetError(f"a request body of at most {limit} bytes with its Content-Length is expected")
        return self.rfile.read(int(length))

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if kind.startswith("text/html"):
            self.send_header("Content-Security-Policy", self.server.policy)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        """Requests are not printed: their URLs carry the token."""
