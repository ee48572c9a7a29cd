"""The web demo (lrm/app.py): its handlers without a browser, then the page in headless Chromium.

The browser test needs the `app` and `app-test` extras and Debian's chromium + chromium-driver; `make test`
installs them (`make install-app install-browser`) where it can, otherwise the test is skipped with the reason.
LRM_APP_SCREENSHOT=1 also saves the page as docs/images/app_duck.png.
"""
import importlib.util
import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from lrm import pipeline as P
from lrm.app import DOWNLOADS, DemoApp
from lrm.checkpoint import DEFAULT_CHECKPOINT
from lrm.preprocess import InputError, preprocess

ROOT = Path(__file__).resolve().parent.parent
DUCK = ROOT / "examples" / "duck.png"
SCREENSHOT = os.environ.get("LRM_APP_SCREENSHOT") == "1"  # also save docs/images/app_duck.png (default mesh size)
# small settings: this suite runs on 2 busy CPU cores
FAST = {"mc_resolution": None if SCREENSHOT else 65, "video_frames": 2}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(not (DEFAULT_CHECKPOINT / "model.safetensors").is_file(),
                                reason="the shipped checkpoint checkpoints/default is missing")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return DemoApp(out_dir=tmp_path_factory.mktemp("app"), defaults=FAST)


def run_page(app, image, **values):
    """The Reconstruct button's handler, as gradio calls it (positional widget values)."""
    out = app.run(image, "default", *[values.get(o.name, o.default) for o in app.options])
    status, model, video, timings, *files = out
    return dict(status=status, model=model, video=video, timings=timings, **dict(zip(DOWNLOADS, files)))


@pytest.fixture(scope="module")
def duck(app):
    return run_page(app, str(DUCK))


def test_handler_gives_glb_video_timings_and_downloads(duck):
    import imageio
    import trimesh
    from safetensors.torch import load_file

    assert duck["status"].startswith("done"), duck["status"]
    glb = Path(duck["model"])
    assert glb.read_bytes()[:4] == b"glTF"
    assert len(trimesh.load(glb, force="mesh").faces) > 0
    assert len(imageio.mimread(duck["video"])) == FAST["video_frames"]
    for stage in ("preprocess", "model", "density_grid", "marching_cubes", "texture", "turntable", "export"):
        assert f"| {stage} |" in duck["timings"]
    assert duck["glb"] == duck["model"]
    for fmt in ("obj", "ply"):
        assert len(trimesh.load(duck[fmt], force="mesh").faces) > 0, fmt
    assert load_file(duck["triplane"])["triplane"].dim() == 5


def _message(image) -> str:
    with pytest.raises(InputError) as e:
        preprocess(image)
    return str(e.value)


@pytest.mark.parametrize("case", ["non-image", "empty alpha", "no image"])
def test_bad_upload_gives_the_pipelines_message(app, tmp_path, case):
    if case == "non-image":
        image = tmp_path / "notes.png"
        image.write_text("not an image")
    elif case == "empty alpha":
        image = tmp_path / "clear.png"
        Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(image)
    else:
        image = None
    page = run_page(app, str(image) if image else None)
    expected = _message(image) if image else "no image: upload one or pick an example"
    assert page["status"] == f"error: {expected}"
    assert "Traceback" not in page["status"] and "\n" not in page["status"]
    assert page["model"] is None and page["video"] is None and page["glb"] is None
    if image:
        assert app.preview(str(image))[1] == f"error: {expected}"


def test_preview_is_the_model_input(app):
    image, status = app.preview(str(DUCK))
    assert status.startswith("ready") and "alpha" in status
    assert np.allclose(image, app.pipeline("default").preprocess(str(DUCK)).image)


def test_options_come_from_the_pipeline(app, monkeypatch):
    """A stage the pipeline adds (here a fake `refine` run option) shows up in the app and reaches Pipeline.run."""
    assert [o.name for o in app.options] == [o.name for o in P.USER_OPTIONS]
    seen = {}
    monkeypatch.setattr(P, "USER_OPTIONS", P.USER_OPTIONS + (P.Option("refine", "bool", "refine", applies="run"),))

    def fake_run(self, image, progress=None, **kw):
        seen.update(kw)
        raise InputError("stop here")

    monkeypatch.setattr(P.Pipeline, "run", fake_run)
    extended = DemoApp(defaults=FAST)
    assert "refine" in [o.name for o in extended.options]
    page = run_page(extended, str(DUCK), refine=True)
    assert page["status"] == "error: stop here" and seen == {"video": True, "refine": True}


def test_unknown_checkpoint_is_one_line(app):
    out = app.run(str(DUCK), "nowhere", *[o.default for o in app.options])
    assert out[0].startswith("error: unknown checkpoint 'nowhere'")


def test_flags_set_typed_initial_values(tmp_path, capsys):
    from lrm.app import main, parse_args

    args = parse_args(["--mc-resolution", "33", "--texture", "uv", "--mc-threshold", "3.5", "--video-frames", "3"])
    opts = {o.name: o.default for o in DemoApp(defaults=vars(args)).options}
    assert (opts["mc_resolution"], opts["texture"], opts["mc_threshold"], opts["video_frames"]) == (33, "uv", 3.5, 3)
    assert main(["--checkpoints", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err


# ---------------------------------------------------------------------------------------------- served
def _browser_skip_reason():
    for module, extra in (("gradio", "app"), ("selenium", "app-test")):
        if importlib.util.find_spec(module) is None:
            return f'{module} is not installed: pip install -e ".[{extra}]" (make install-app)'
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: make install-browser (Debian chromium + chromium-driver, needs root + apt)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, poll, timeout, every=0.5):
    """Poll ``poll()`` until it returns something truthy; fail with ``what`` and the last value."""
    end, last = time.monotonic() + timeout, None
    while time.monotonic() < end:
        try:
            last = poll()
        except Exception as e:  # noqa: BLE001 - the page is still changing
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture
def outbound(monkeypatch):
    """Every non-loopback address the server process tries to connect to (it must stay offline)."""
    tried = []
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            tried.append(host)
            raise OSError(f"test: no network ({host})")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried


def chrome(width=1400, height=1500):
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--disable-background-networking"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=opts)


def requested_urls(driver):
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            yield msg["params"]["request"]["url"]


def canvas_has_model(driver):
    """The viewer's WebGL canvas shows something other than its white clear colour."""
    import io

    from selenium.webdriver.common.by import By

    png = driver.find_element(By.CSS_SELECTOR, "#viewer canvas").screenshot_as_png
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return (np.abs(rgb - 255).sum(-1) > 60).mean() > 0.01


def fetch(url) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


@pytest.fixture
def served(app, outbound):
    """The page on a free localhost port, in this process; yields its URL."""
    if importlib.util.find_spec("gradio") is None:
        pytest.skip('gradio is not installed: pip install -e ".[app]" (make install-app)')
    from lrm.app import launch

    port = free_port()
    demo = launch(app, port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
    assert not outbound, f"the server tried to reach {outbound}"


def test_queue_serves_concurrent_requests(app, served):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)
    values = [o.default for o in app.options]
    jobs = [client.submit(handle_file(str(DUCK)), "default", *values, api_name="/reconstruct") for _ in range(2)]
    statuses = [job.result(timeout=600)[0] for job in jobs]
    assert all(s.startswith("done") for s in statuses), statuses


@pytest.fixture
def browser():
    """Headless Debian Chromium driven by its own chromedriver (skipped with the reason when missing)."""
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)
    driver = chrome()
    yield driver
    driver.quit()


def test_page_in_headless_chromium(app, browser, served, tmp_path, record_property):
    import trimesh
    from selenium.webdriver.common.by import By

    t0 = time.perf_counter()
    driver = browser
    driver.get(served)
    upload = wait_for("the upload input", lambda: driver.find_element(
        By.CSS_SELECTOR, "#input-image input[type=file]"), 60)
    upload.send_keys(str(DUCK))
    status = lambda: driver.find_element(By.ID, "status").text.strip()  # noqa: E731
    wait_for("the preprocessed preview", lambda: status().startswith("ready") and driver.find_element(
        By.CSS_SELECTOR, "#preview img"), 60)
    driver.find_element(By.ID, "run").click()
    t_run = time.perf_counter()
    wait_for("the run to finish", lambda: status().startswith(("done", "error")), 300)
    assert status().startswith("done"), status()
    t_done = time.perf_counter()
    link = wait_for("the viewer's model link", lambda: driver.find_element(
        By.CSS_SELECTOR, "#viewer a[data-testid=model3d-download-link]").get_attribute("href"), 60)
    wait_for("the model drawn in the viewer's canvas", lambda: canvas_has_model(driver), 90, every=2)
    t_drawn = time.perf_counter()
    for url in (link, driver.find_element(By.CSS_SELECTOR, "#download-glb a").get_attribute("href")):
        assert urlparse(url).path.endswith(".glb"), url
        data = fetch(url)
        assert data[:4] == b"glTF", url
        assert len(trimesh.load(trimesh.util.wrap_as_stream(data), file_type="glb", force="mesh").faces) > 0
    for kind in ("obj", "ply", "triplane"):
        assert driver.find_element(By.CSS_SELECTOR, f"#download-{kind} a").get_attribute("href"), kind
    shot = tmp_path / "app_duck.png"
    driver.save_screenshot(str(shot))
    if SCREENSHOT:
        shutil.copy(shot, ROOT / "docs" / "images" / "app_duck.png")
    offsite = [u for u in requested_urls(driver)
               if urlparse(u).scheme in ("http", "https", "ws", "wss")
               and urlparse(u).hostname not in ("127.0.0.1", "localhost")]
    assert not offsite, f"the page fetched from outside localhost: {offsite[:5]}"
    timing = (f"page + upload + preview {t_run - t0:.1f}s, reconstruct {t_done - t_run:.1f}s, "
              f"viewer drawn {t_drawn - t_done:.1f}s, total {time.perf_counter() - t0:.1f}s "
              f"(after server + browser start); screenshot {shot}")
    record_property("browser_timing", timing)
    print(timing)
