"""`abnet edit`: the editor's server (its token, images by index only, re-inference with an edited map, saving in
the target layout) and its page in a real headless Chromium driven by Selenium."""

import io
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli, save_random_image
from PIL import Image

import abnet
from abnet.data.base import ImageSet
from abnet.data.folder import scan
from abnet.data.images import image_files
from abnet.data.loader import normalize
from abnet.data.shapes import CLASSES
from abnet.engine.checkpoint import load_checkpoint, save_weights
from abnet.errors import AbnetError
from abnet.explain.editor import Editor, EditorServer, dataset_items, file_items, serve

SIZE = 32
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def write_checkpoint(path: Path, name: str = "resnet20_abn", **kwargs) -> Path:
    """An untrained model for the shapes classes whose batch-norm statistics come from random images, so that its
    maps vary across an image."""
    torch.manual_seed(0)
    model = abnet.create_model(name, num_classes=len(CLASSES), **kwargs)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(16, 3, SIZE, SIZE) * 4 - 2)
    path.mkdir(parents=True)
    save_weights(path / "best.safetensors", model, {"model_config": model.abnet_config, "classes": list(CLASSES),
                                                    "mean": MEAN, "std": STD, "image_size": [SIZE, SIZE],
                                                    "data": "shapes", "multi_label": name.endswith("_mt")})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """resnet20_abn with mask mode multiply: the perception branch reads g * M, so a zero map changes its output."""
    return write_checkpoint(tmp_path_factory.mktemp("editor") / "run", mask="multiply")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir()
    save_random_image(folder / "a.png", (SIZE, SIZE, 3), rng)
    save_random_image(folder / "b.jpg", (30, 48, 3), rng)
    save_random_image(folder / "sub" / "c.png", (SIZE, SIZE, 3), rng)
    return folder


@pytest.fixture
def server(checkpoint, images, tmp_path):
    """A running editor for the three image files, saving into tmp_path/maps."""
    model, meta = load_checkpoint(checkpoint)
    srv = serve(model, meta, file_items(image_files([images]), SIZE), tmp_path / "maps")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(server: EditorServer, path: str, token: str | None = "", body: bytes | None = None,
            header: str | None = None) -> tuple[int, bytes]:
    """(status, body) of a request to the server; ``token`` "" means the server's own, None none at all."""
    token = server.token if token == "" else token
    sep = "&" if "?" in path else "?"
    url = f"http://127.0.0.1:{server.server_port}{path}" + (f"{sep}token={token}" if token is not None else "")
    req = urllib.request.Request(url, data=body, headers={"X-Abnet-Token": header} if header else {})
    try:
        with urllib.request.urlopen(req, timeout=20) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def perception_probabilities(server: EditorServer, i: int, attention: torch.Tensor | None = None) -> torch.Tensor:
    """The model's perception probabilities for image i, computed here (not by the server)."""
    editor = server.editor
    x = normalize(editor.items.inputs.images[i:i + 1], MEAN, STD)
    with torch.no_grad():
        return editor.model(x, attention=attention).logits.softmax(1)[0]


# -- the server -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/items", "/api/image/0", "/api/map/0", "/api/item/0", "/nowhere"])
def test_a_request_without_the_token_or_with_a_wrong_one_is_refused(server, path):
    assert server.server_address[0] == "127.0.0.1"
    assert request(server, path, token=None)[0] == 403
    assert request(server, path, token="wrong")[0] == 403
    assert request(server, path, token=None, header="wrong")[0] == 403
    assert request(server, path, token=server.token[:-1])[0] == 403
    assert request(server, "/api/save/0", token=None, body=bytes(SIZE * SIZE))[0] == 403
    assert not (Path(server.editor.out)).exists()


def test_only_the_page_and_the_given_images_by_index_are_served(server, images):
    status, page = request(server, "/")
    assert status == 200 and b"<canvas" in page
    assert request(server, "/", token=None, header=server.token)[0] == 200  # the page's own requests use the header
    info = json.loads(request(server, "/api/items")[1])
    assert info["count"] == 3 and info["size"] == [SIZE, SIZE] and info["names"] == ["a.png", "b.jpg", "c.png"]
    status, png = request(server, "/api/image/2")
    assert status == 200
    shown = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(shown, np.asarray(Image.open(images / "sub" / "c.png").convert("RGB")))
    for path in ["/api/image/3", "/api/map/3", "/api/item/999999999", "/api/image/-1", "/api/image/0/../1",
                 "/api/image/../../etc/passwd", "/etc/passwd", "/a.png", "/sub/c.png", "/api/image/a.png",
                 "/api/image/%30", "/api/image/", "/api/infer/0", "/api/save/0"]:
        assert request(server, path)[0] == 404, path
    assert request(server, "/api/image/0", body=b"x")[0] == 404  # POST only to infer and save
    assert request(server, "/api/infer/3", body=bytes(SIZE * SIZE))[0] == 404


def test_re_inference_reads_the_edited_map(server):
    item = json.loads(request(server, "/api/item/0")[1])
    own = torch.tensor(item["predictions"]["probabilities"])
    torch.testing.assert_close(own, perception_probabilities(server, 0), atol=1e-5, rtol=0)
    zeros = json.loads(request(server, "/api/infer/0", body=bytes(SIZE * SIZE))[1])["probabilities"]
    ones = json.loads(request(server, "/api/infer/0", body=b"\xff" * SIZE * SIZE)[1])["probabilities"]
    assert (torch.tensor(zeros) - own).abs().max() > 1e-3  # g * 0: the prediction changed
    torch.testing.assert_close(torch.tensor(zeros), perception_probabilities(server, 0, torch.zeros(1, 1, 1, 1)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(ones), perception_probabilities(server, 0, torch.ones(1, 1, 1, 1)),
                               atol=1e-5, rtol=0)
    # a map bright in the left half only, area-averaged to the model's map size: 1 in its left half, 0 elsewhere
    half = np.zeros((SIZE, SIZE), np.uint8)
    half[:, :SIZE // 2] = 255
    left = json.loads(request(server, "/api/infer/0", body=half.tobytes())[1])["probabilities"]
    h, w = server.editor.own_output(0).attention.shape[2:]
    assert (h, w) != (SIZE, SIZE) and w % 2 == 0  # a real down-sampling
    expected = torch.zeros(1, 1, h, w)
    expected[..., :w // 2] = 1
    torch.testing.assert_close(torch.tensor(left), perception_probabilities(server, 0, expected), atol=1e-5, rtol=0)
    status, reply = request(server, "/api/infer/0", body=bytes(10))
    assert status == 400 and "1024 bytes" in json.loads(reply)["error"]


def test_the_own_map_is_the_models_at_the_display_size(server):
    status, raw = request(server, "/api/map/1")
    maps = np.frombuffer(raw, np.uint8).reshape(SIZE, SIZE)
    x = normalize(server.editor.items.inputs.images[1:2], MEAN, STD)
    with torch.no_grad():
        attention = server.editor.model(x).attention
    expected = torch.nn.functional.interpolate(attention, size=(SIZE, SIZE), mode="bilinear")[0, 0]
    assert status == 200 and maps.std() > 1  # the map varies
    assert np.abs(maps.astype(float) - 255 * expected.numpy()).max() <= 0.5 + 1e-3


def test_save_writes_the_map_as_a_grayscale_png_of_its_stem(server):
    out = Path(server.editor.out)
    edited = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    status, reply = request(server, "/api/save/2", body=edited.tobytes())
    assert status == 200 and json.loads(reply)["files"] == ["c.png"]  # sub/c.png -> OUT/c.png
    saved = Image.open(out / "c.png")
    assert saved.mode == "L" and np.array_equal(np.asarray(saved), edited)
    assert sorted(p.name for p in out.iterdir()) == ["c.png"]  # no temporary file left
    assert json.loads(request(server, "/api/item/2")[1])["saved"] is True
    assert json.loads(request(server, "/api/item/0")[1])["saved"] is False


def test_data_set_maps_go_to_split_class_stem(checkpoint, tmp_path):
    model, meta = load_checkpoint(checkpoint)
    rng = np.random.default_rng(0)
    for name in ("ring/r1.png", "star/s1.jpg", "star/s2.png"):
        (tmp_path / "val" / name).parent.mkdir(parents=True, exist_ok=True)
        save_random_image(tmp_path / "val" / name, (SIZE, SIZE, 3), rng)
    folder = dataset_items(scan(tmp_path / "val", ["ring", "star"], SIZE), "val")
    assert folder.files == [[Path("val/ring/r1.png")], [Path("val/star/s1.png")], [Path("val/star/s2.png")]]
    images = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    memory = dataset_items(ImageSet(images, torch.tensor([4, 0, 4]), list(CLASSES)), "test")
    assert memory.files == [[Path("test/ring/0.png")], [Path("test/circle/1.png")], [Path("test/ring/2.png")]]
    editor = Editor(model, meta, memory, tmp_path / "maps")
    maps = np.full((1, SIZE, SIZE), 7, np.uint8)
    assert editor.save(1, maps) == [tmp_path / "maps" / "test" / "circle" / "1.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "maps" / "test" / "circle" / "1.png")), maps[0])


def test_a_multi_task_model_saves_one_map_per_attribute(tmp_path):
    model, meta = load_checkpoint(write_checkpoint(tmp_path / "mt", "resnet20_abn_mt"))
    images = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8)
    items = dataset_items(ImageSet(images, torch.ones(1, len(CLASSES)), list(CLASSES)), "test", list(CLASSES))
    editor = Editor(model, meta, items, tmp_path / "maps")
    assert items.files == [[Path(f"test/0.{c}.png") for c in CLASSES]] and editor.num_maps == len(CLASSES)
    maps = np.stack([np.full((SIZE, SIZE), 40 * t, np.uint8) for t in range(len(CLASSES))])
    files = editor.save(0, maps)
    assert [f.name for f in files] == [f"0.{c}.png" for c in CLASSES]
    assert [int(np.asarray(Image.open(f)).mean()) for f in files] == [40 * t for t in range(len(CLASSES))]
    assert len(editor.infer(0, maps)["probabilities"]) == len(CLASSES)


def test_two_images_with_one_stem_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a/x.png", "b/x.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        save_random_image(tmp_path / name, (8, 8, 3), rng)
    with pytest.raises(AbnetError, match="both save their map to x.png"):
        file_items(image_files([tmp_path]), SIZE)


# -- the command line -------------------------------------------------------------------------------------------


def test_cli_serves_on_localhost_with_a_token(checkpoint, tmp_path, capsys, monkeypatch):
    served = []
    monkeypatch.setattr(EditorServer, "serve_forever", lambda self: served.append(self))
    code, out, _ = run_cli(capsys, "edit", str(checkpoint), "--data", "shapes", "--limit", "3", "--out",
                           str(tmp_path / "maps"))
    assert code == 0 and len(served) == 1
    assert f"http://127.0.0.1:{served[0].server_port}/?token={served[0].token}" in out
    assert len(served[0].token) >= 32
    assert served[0].editor.items.files[0][0].parts[0] == "test" and len(served[0].editor) == 3


def test_cli_refuses_a_plain_model_and_missing_inputs(tmp_path, images, capsys, checkpoint):
    torch.manual_seed(0)
    plain = abnet.create_model("resnet20", num_classes=len(CLASSES))
    (tmp_path / "plain").mkdir()
    save_weights(tmp_path / "plain" / "best.safetensors", plain, {
        "model_config": plain.abnet_config, "classes": list(CLASSES), "mean": MEAN, "std": STD,
        "image_size": [SIZE, SIZE]})
    code, _, err = run_cli(capsys, "edit", str(tmp_path / "plain"), str(images), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "abnet edit: error:", "plain classifier")
    code, _, err = run_cli(capsys, "edit", str(checkpoint), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "image files/folders or --data")
    code, _, err = run_cli(capsys, "edit", str(checkpoint), str(images), "--port", "70000", "--out",
                           str(tmp_path / "o"))
    assert_one_line_error(code, err, "--port 70000")
    assert not (tmp_path / "o").exists()


# -- a real browser ---------------------------------------------------------------------------------------------


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """Selenium driving Debian's headless chromium through chromium-driver; skips when they are absent (fails
    instead under ABNET_REQUIRE_BROWSER=1)."""
    chromium = os.environ.get("ABNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    missing = [name for name, found in (("chromium", chromium), ("chromedriver", chromedriver)) if found is None]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"no {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("ABNET_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ABNET_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    monkeypatch.setenv("SE_AVOID_STATS", "true")  # nor send usage statistics
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    yield browser
    browser.quit()


@pytest.mark.browser
def test_a_stroke_in_the_browser_changes_the_saved_map_only_where_it_went(server, driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait_for(name: str, value: str) -> None:
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(name) == value)

    def saved() -> np.ndarray:
        return np.asarray(Image.open(Path(server.editor.out) / "a.png")).astype(int)

    driver.get(server.url)
    wait_for("data-ready", "1")
    driver.find_element(By.ID, "save").click()  # the map as the page received it
    wait_for("data-saves", "1")
    before = saved()
    assert np.array_equal(before, server.editor.own_maps(0)[0])

    canvas = driver.find_element(By.ID, "map")
    scale = canvas.size["width"] / SIZE  # CSS pixels per map pixel
    assert driver.find_element(By.ID, "add").is_selected() and scale >= 4
    brush = int(driver.find_element(By.ID, "size").get_attribute("value"))  # diameter in map pixels
    # from map pixel x = 8 to x = 24 along y = 16 (the canvas's centre line), in four moves
    actions = ActionChains(driver).move_to_element_with_offset(canvas, round(-8 * scale), 0).click_and_hold()
    for _ in range(4):
        actions = actions.move_by_offset(round(4 * scale), 0)
    actions.release().perform()
    wait_for("data-predictions", "1")  # re-inferred after the stroke
    assert driver.find_element(By.ID, "edited").text.split()[0] in CLASSES
    driver.find_element(By.ID, "save").click()
    wait_for("data-saves", "2")
    after = saved()

    changed = after != before
    rows, cols = np.nonzero(changed)
    reach = brush / 2 + 1  # the brush's radius, and a pixel for rounding the pointer's position
    assert changed.any() and (after >= before).all()  # the add brush only raises the map
    assert (np.abs(rows + 0.5 - 16) <= reach).all()
    assert (cols + 0.5 >= 8 - reach).all() and (cols + 0.5 <= 24 + reach).all()
    line = (slice(15, 17), slice(9, 23))  # the pixels the stroke went through
    assert (after[line] > before[line]).sum() >= 0.9 * (before[line] < 255).sum()

    driver.find_element(By.ID, "undo").click()  # back to the map before the stroke
    wait_for("data-predictions", "2")
    driver.find_element(By.ID, "save").click()
    wait_for("data-saves", "3")
    assert np.array_equal(saved(), before)
