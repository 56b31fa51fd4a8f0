"""The web page in a real browser: `cifar-resnet serve` started as a process, Chromium driven by Playwright.

An example image clicked, a file dropped and a file chosen give the top classes and bars the API gives for
the same file; a non-image gives an error on the page (role="alert"); the page asks nothing of any server
but its own and fits a phone's width. Takes a screenshot (the README's docs/figures/serve-page.png when
CIFAR_RESNET_UPDATE_FIGURES=1) of a small model trained on the real images (conftest's ``real_run``)."""

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the dev extra's playwright package is not installed
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "src" / "cifar_resnet" / "serve" / "static" / "examples"
# the README's screenshot: rewritten only when asked (tools/make_figures.sh sets it), so that running the
# tests leaves the repository as it was
README_SCREENSHOT = ROOT / "docs" / "figures" / "serve-page.png"
UPDATE_FIGURES = os.environ.get("CIFAR_RESNET_UPDATE_FIGURES") == "1"

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None,
        reason="the playwright package is not installed (pip install playwright; its own browsers are not needed)",
    ),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(real_run, tmp_path_factory):
    """``cifar-resnet serve`` on a free port of 127.0.0.1, as its own process; its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cifar_resnet",
                "serve",
                str(real_run / "best.pt"),
                "--port",
                str(port),
                "--device",
                "cpu",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with status {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /health within 60 s:\n{log.read_text()}")
            time.sleep(0.2)
        assert f"at {base}/" in log.read_text()  # the one line it prints
        yield base
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: uvicorn shuts down cleanly
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, log.read_text()


@pytest.fixture(scope="module")
def page(server):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 760})
            page.requests, page.errors = [], []
            page.on("request", lambda r: page.requests.append(r.url))
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.on(
                "console",
                lambda m: m.type == "error" and "Failed to load resource" not in m.text and page.errors.append(m.text),
            )
            page.goto(server)
            page.locator(".example").first.wait_for()
            yield page
        finally:
            browser.close()


def api_answer(server, name: str, data: bytes, mime: str = "image/png") -> dict:
    r = httpx.post(f"{server}/predict", files={"files": (name, data, mime)}, params={"top_k": 5}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def shown_result(page) -> dict:
    """What the page shows: the rows (class, probability, bar fill as a fraction of the bar, text)."""
    rows = page.eval_on_selector_all(
        "#predictions .prediction",
        """rows => rows.map(row => ({
        cls: row.dataset.class, prob: Number(row.dataset.prob), text: row.querySelector('.pct').textContent,
        name: row.querySelector('.name').textContent, superclass: row.querySelector('.super').textContent,
        fill: row.querySelector('.fill').getBoundingClientRect().width
              / row.querySelector('.bar').getBoundingClientRect().width}))""",
    )
    return {
        "rows": rows,
        "top1": page.locator("#top1").inner_text(),
        "seen": page.get_attribute("#seen", "src"),
        "superclass": page.locator("#superclass").inner_text(),
    }


def assert_page_matches_api(shown: dict, answer: dict) -> None:
    rows = shown["rows"]
    assert [r["cls"] for r in rows] == [t["class"] for t in answer["top"]]
    for row, top in zip(rows, answer["top"]):
        assert abs(row["prob"] - top["prob"]) < 1e-6
        assert abs(row["fill"] - top["prob"]) < 0.01, (row, top)  # the bar is as long as the probability
        assert row["text"] == f"{100 * top['prob']:.1f}%"
        assert row["name"] == top["class"].replace("_", " ")
        assert row["superclass"] == (top["superclass"] or "").replace("_", " ")
    assert shown["top1"].startswith(answer["top"][0]["class"].replace("_", " "))
    assert answer["superclass"].replace("_", " ") in shown["superclass"]
    assert shown["seen"] == answer["input_png"]  # the 32x32 image the model saw


def test_example_click_drop_and_pick_show_what_the_api_answers(server, page, tmp_path):
    assert "fast_small" in page.locator("#model-info").inner_text()
    # click an example: a real CIFAR-100 image
    path = EXAMPLES / next(p.name for p in sorted(EXAMPLES.glob("sunflower-*.png")))
    answer = api_answer(server, path.name, path.read_bytes())
    page.locator('.example[data-label="sunflower"]').click()
    page.wait_for_function("src => document.querySelector('#seen').src === src", arg=answer["input_png"])
    assert_page_matches_api(shown_result(page), answer)
    assert page.locator("#error").is_hidden()
    screenshot = README_SCREENSHOT if UPDATE_FIGURES else tmp_path / "serve-page.png"
    page.screenshot(path=str(screenshot), full_page=True)

    # drop another example onto the page
    dropped = next(EXAMPLES.glob("orange-*.png"))
    handle = page.evaluate_handle(
        """([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: 'image/png'}));
        return transfer; }""",
        [base64.b64encode(dropped.read_bytes()).decode(), dropped.name],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": handle})
    answer = api_answer(server, dropped.name, dropped.read_bytes())
    page.wait_for_function("src => document.querySelector('#seen').src === src", arg=answer["input_png"])
    assert_page_matches_api(shown_result(page), answer)

    # pick a photo-sized JPEG with the file input (a phone's camera or gallery)
    with Image.open(next(EXAMPLES.glob("apple-*.png"))) as img:
        buf = io.BytesIO()
        img.convert("RGB").resize((480, 360), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
    photo = buf.getvalue()
    page.set_input_files("#file-input", files=[{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": photo}])
    answer = api_answer(server, "photo.jpg", photo, "image/jpeg")
    page.wait_for_function("src => document.querySelector('#seen').src === src", arg=answer["input_png"])
    assert_page_matches_api(shown_result(page), answer)
    assert page.errors == []


def test_a_non_image_shows_an_error_on_the_page(server, page):
    page.set_input_files(
        "#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"this is not an image"}]
    )
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible")
    text = alert.inner_text()
    assert "415" in text and "notes.txt" in text and "not an image" in text, text
    assert page.locator("#result").is_hidden()
    # a good file afterwards clears the error
    page.locator('.example[data-label="shark"]').click()
    page.locator("#result").wait_for(state="visible")
    assert page.locator("#error").is_hidden()
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_paste_an_image(server, page):
    pasted = next(EXAMPLES.glob("chair-*.png"))
    page.evaluate(
        """([b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'image.png', {type: 'image/png'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: transfer}));
    }""",
        [base64.b64encode(pasted.read_bytes()).decode()],
    )
    answer = api_answer(server, "pasted.png", pasted.read_bytes())
    page.wait_for_function("src => document.querySelector('#seen').src === src", arg=answer["input_png"])
    assert_page_matches_api(shown_result(page), answer)


def test_the_page_fits_a_phone_and_asks_no_other_server(server, page):
    page.set_viewport_size({"width": 360, "height": 740})
    page.locator('.example[data-label="skunk"]').click()
    page.locator("#result").wait_for(state="visible")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing sticks out sideways
    box = page.locator("#predictions").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 360
    others = [u for u in page.requests if not u.startswith((server, "data:", "blob:"))]
    assert others == [], others
    assert page.errors == []
