import base64
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
from PIL import Image

from abnet.explain.report import ReportItem, render_report, write_report

EVIL_CLASS = "<script>alert(1)</script>"
EVIL_FILE = 'a"b<img src=x onerror=alert(2)>.png'
MAGENTA = (255, 0, 255)


def _square(colour, size=32):
    image = np.zeros((size, size, 3), np.uint8)
    image[:] = colour
    return image


def _items():
    """Three coloured squares, each with two overlays carrying a bright magenta block."""
    specs = [
        ("test #12", (255, 0, 0), "cat", 0.61, "cat", True),
        (EVIL_FILE, (0, 160, 0), EVIL_CLASS, 0.93, "cat", False),
        ("test #2", (0, 0, 255), "dog", 0.75, None, None),
    ]
    items = []
    for name, colour, predicted, p, truth, correct in specs:
        image = _square(colour)
        abn = image.copy()
        abn[8:24, 8:24] = MAGENTA
        items.append(
            ReportItem(
                name=name,
                image=image,
                overlays={"abn": abn, "gradcam++": abn[::-1].copy()},
                predictions={"perception": [(predicted, p), ("ship", 0.05)], "attention": [(predicted, p - 0.1)]},
                truth=truth,
                correct=correct,
                note="resized from 500x375 to 32x32",
            )
        )
    return items


class _Elements(HTMLParser):
    """Every start tag of a page, as (tag, attributes) in document order."""

    def __init__(self, page):
        super().__init__()
        self.found = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def tags(self, name):
        return [attrs for tag, attrs in self.found if tag == name]


def _decode(uri):
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_user_text_is_escaped_everywhere():
    page = render_report(
        _items(),
        title="<b>title</b>",
        metrics=[{"<th x>": "<td y>"}],
        failures=[(EVIL_FILE, "<i>bad</i>")],
        info={"<k>": '"><script>alert(3)</script>'},
    )
    for raw in (EVIL_CLASS, EVIL_FILE, "<b>title</b>", "<th x>", "<td y>", "<i>bad</i>", "<k>", "alert(3)</script>"):
        assert raw not in page
    assert html.escape(EVIL_CLASS) in page and html.escape(EVIL_FILE) in page
    elements = _Elements(page)
    assert len(elements.tags("script")) == 1  # ours only
    assert len(elements.tags("img")) == 9  # 3 images + 6 overlays, none injected
    assert not any(name.startswith("on") for _, attrs in elements.found for name in attrs)
    cards = elements.tags("article")
    assert [c["data-name"] for c in cards] == ["test #12", EVIL_FILE, "test #2"]  # attributes round-trip
    assert json.loads(cards[1]["data-classes"]) == [EVIL_CLASS, "cat"]
    assert page.isascii()  # non-ASCII text as character references: no encoding trouble anywhere


def test_every_image_is_embedded_and_nothing_is_fetched(tmp_path):
    items = _items()
    big = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    items.append(ReportItem("big.jpg", big, {"abn": big}, {"perception": [("cat", 1.0)]}))
    write_report(tmp_path / "r.html", items, "t", info={"link": "http://example.com/x.png"})
    page = (tmp_path / "r.html").read_text()
    imgs = _Elements(page).tags("img")
    expected = [array for item in items for array in (item.image, *item.overlays.values())]
    assert len(imgs) == len(expected)
    for img, array in zip(imgs, expected):
        assert np.array_equal(_decode(img["src"]), array)
    small, large = imgs[0], imgs[-1]
    assert (small["width"], small["height"], small.get("class")) == ("128", "128", "px")  # 32 px scaled up x4
    assert (large["width"], large["height"], large.get("class")) == ("256", "192", None)
    assert re.search(r"image-rendering:\s*pixelated", page)
    # no resource from anywhere but the page itself: the info text mentions a URL, but nothing loads it
    assert not re.search(r"""(?:src|href|action|poster)\s*=\s*["']?\s*(?:https?:|//)""", page, re.IGNORECASE)
    assert not re.search(r"url\(|@import|<link|<iframe|<object|<embed", page, re.IGNORECASE)
    assert "default-src 'none'" in page


def test_csp_hashes_allow_exactly_the_inline_script_and_style():
    page = render_report(_items(), "t")
    for tag in ("script", "style"):
        (content,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(content.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in page


def test_metrics_table_failures_info_and_cards():
    rows = [
        {"method": "abn", "iou": 0.51234, "n": 100},
        {"method": "gradcam", "deletion": np.float32(0.25), "iou": None},
    ]
    page = render_report(
        _items(),
        "run",
        metrics=rows,
        failures=[("broken.png", "cannot identify image file")],
        info={"model": "resnet20", "date": "2024-05-01"},
    )
    table = re.search(r'<table class="metrics">.*?</table>', page).group(0)
    assert re.findall(r"<th>(.*?)</th>", table) == ["method", "iou", "n", "deletion"]  # union, first appearance
    cells = re.findall(r"<td>(.*?)</td>", table)
    assert cells == ["abn", "0.512", "100", "&#8211;", "gradcam", "&#8211;", "&#8211;", "0.250"]
    assert '<span class="file">broken.png</span> &#8212; cannot identify image file' in page
    assert "<dt>model</dt><dd>resnet20</dd>" in page and "<dt>date</dt><dd>2024-05-01</dd>" in page
    assert '<li class="hit">cat 0.61</li><li>ship 0.05</li>' in page  # perception, the truth in bold
    assert '<li class="hit">cat 0.51</li>' in page  # attention branch
    assert re.findall(r'<span class="badge (\w+)">', page) == ["correct", "wrong", "unknown"]
    assert page.count("resized from 500x375 to 32x32") == 3
    options = re.search(r'<select id="f-class">(.*?)</select>', page).group(1)
    assert re.findall(r'<option value="([^"]*)"', options) == ["", html.escape(EVIL_CLASS), "cat", "dog"]


def test_empty_report_and_bad_images(tmp_path):
    page = render_report([], "nothing")
    assert "No items." in page and 'data-images="0"' in page
    bad = ReportItem("x", np.zeros((4, 4), np.uint8), {}, {})
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        write_report(tmp_path / "r.html", [bad], "t")
    floats = ReportItem("x", np.zeros((4, 4, 3), np.uint8), {"abn": np.zeros((4, 4, 3))}, {})
    with pytest.raises(ValueError, match="abn"):
        write_report(tmp_path / "r.html", [floats], "t")
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    write_report(target, _items()[:1], "first")
    before = target.read_text()

    def half_then_crash(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        write_report(target, _items(), "second")
    assert target.read_text() == before  # the old report, whole
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


# -- a real browser -------------------------------------------------------------------------------------------


@pytest.fixture
def chromium() -> str:
    """Path of a Chromium to run headless; skips without one unless ABNET_REQUIRE_BROWSER=1 (CI), then fails."""
    found = os.environ.get("ABNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "no Chromium found (install Debian's chromium, or point ABNET_CHROMIUM at one)"
        if os.environ.get("ABNET_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ABNET_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    return found


def _headless(chromium: str, tmp_path: Path, url: str, *args: str) -> str:
    """Run Chromium headless on ``url`` with a fresh profile and no network; returns its stdout."""
    profile = tempfile.mkdtemp(prefix="profile-", dir=tmp_path)
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _cards(dom: str) -> list[dict]:
    return _Elements(dom).tags("article")


@pytest.mark.browser
def test_browser_decodes_every_image_and_filters(chromium, tmp_path):
    report = tmp_path / "report.html"
    write_report(report, _items(), "browser test", metrics=[{"acc": 0.5}], failures=[("bad.png", "unreadable")])
    dom = _headless(chromium, tmp_path, report.as_uri(), "--dump-dom")
    body = _Elements(dom).tags("body")[0]
    assert body.get("data-ready") == body["data-images"] == "9", "script did not run or images did not decode"
    assert body["data-shown"] == "3" and not any("hidden" in c for c in _cards(dom))
    assert all(img["src"].startswith("data:image/png;base64,") for img in _Elements(dom).tags("img"))  # no XSS img

    dom = _headless(chromium, tmp_path, report.as_uri() + "#sort=confidence", "--dump-dom")
    assert [c["data-name"] for c in _cards(dom)] == [EVIL_FILE, "test #2", "test #12"]
    dom = _headless(chromium, tmp_path, report.as_uri() + "#sort=name&correct=correct", "--dump-dom")
    cards = _cards(dom)
    assert [c["data-name"] for c in cards] == [EVIL_FILE, "test #2", "test #12"]  # numeric-aware: 2 before 12
    assert ["hidden" in c for c in cards] == [True, True, False]
    assert _Elements(dom).tags("body")[0]["data-shown"] == "1"
    dom = _headless(chromium, tmp_path, report.as_uri() + "#" + urlencode({"class": EVIL_CLASS}), "--dump-dom")
    assert ["hidden" in c for c in _cards(dom)] == [True, False, True]


@pytest.mark.browser
def test_browser_screenshot_shows_images_and_overlays(chromium, tmp_path):
    report = tmp_path / "report.html"
    write_report(report, _items(), "screenshot test")
    shot = tmp_path / "shot.png"
    _headless(chromium, tmp_path, report.as_uri(), f"--screenshot={shot}", "--window-size=1200,900")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (900, 1200, 3)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # not blank

    def area(colour):
        return int((np.abs(pixels - np.array(colour)).max(-1) <= 12).sum())

    # the first card: a 32 px red square shown at 128 px (16384 px) and two overlays, each 64x64 magenta
    assert area((255, 0, 0)) > 16384 and area(MAGENTA) >= 2 * 64 * 64
