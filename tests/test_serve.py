"""The HTTP service through FastAPI's TestClient: /predict with one and several images, /health, /classes,
the batching queue, every kind of bad input (each answered with a JSON error while the server goes on),
the body limit before the body is read, and uploads that never touch the disk."""

import asyncio
import base64
import io
import struct
import tempfile
import threading
import time
import warnings
import zlib

import httpx
import numpy as np
import pytest
import starlette.formparsers
from PIL import Image

from cifar_resnet import TrainConfig, fit
from cifar_resnet.data import CIFAR100_CLASSES
from cifar_resnet.images import prepare_image
from cifar_resnet.inference import load_predictor
from cifar_resnet.serve import BatchQueue, ServeLimits, create_app
from cifar_resnet.serve.app import EXAMPLES_DIR, STATIC_DIR

with warnings.catch_warnings():  # this Starlette would rather have httpx2 for its test client
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.usefixtures("one_thread")

RNG = np.random.default_rng(0)


def png_bytes(pixels: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def random_pixels(h=32, w=32) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, write_npz):
    """A tiny model trained for one epoch on 100-class noise: CIFAR-100's class and superclass names."""
    tmp = tmp_path_factory.mktemp("serve")
    npz = write_npz(tmp / "data.npz", n=300, classes=100)
    config = TrainConfig(
        data=str(npz),
        val_split=100,
        model="fast",
        model_kwargs={"widths": [8, 16, 16], "stem_width": 8},
        optimizer="sgd",
        lr=0.05,
        grad_clip=0.0,
        epochs=1,
        batch_size=50,
        device="cpu",
    )
    fit(config, out_dir=tmp / "run", log=None, progress=False)
    return tmp / "run" / "best.pt"


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return load_predictor(checkpoint, "cpu")


@pytest.fixture(scope="module")
def client(checkpoint):
    app = create_app(checkpoint, ServeLimits(max_upload_mb=1, max_files=4), device="cpu")
    with TestClient(app) as c:
        yield c


def post(client, *files, field="files", **kwargs):
    return client.post("/predict", files=[(field, f) for f in files], **kwargs)


def assert_still_serving(client):
    r = post(client, ("ok.png", png_bytes(random_pixels()), "image/png"))
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------------
# what a good request gets
# ------------------------------------------------------------------------------------------------


def test_health_and_classes(client, predictor):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == predictor.info["model"] == "fast"
    assert health["classes"] == 100 and health["checksum"] == predictor.info["checksum"]
    assert health["temperature"] == predictor.info["temperature"]
    # a checkpoint is served in the precision its run trained in (this one's: auto, resolved for the CPU)
    assert health["precision"] == predictor.info["precision"] == predictor.options.precision
    assert {"batches", "images", "mean_batch_size"} <= set(health)
    classes = client.get("/classes").json()
    assert classes["classes"] == list(CIFAR100_CLASSES)
    assert classes["superclasses"][CIFAR100_CLASSES.index("apple")] == "fruit_and_vegetables"


def test_one_image(client, predictor):
    pixels = random_pixels(48, 64)  # not square, not 32x32: centre-cropped and shrunk like `predict`
    r = post(client, ("photo.png", png_bytes(pixels), "image/png"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "fast" and body["temperature"] == predictor.info["temperature"]
    (result,) = body["results"]
    assert result["filename"] == "photo.png" and result["size"] == [64, 48]
    seen = prepare_image(Image.fromarray(pixels))
    expected = np.asarray(predictor.probabilities(seen[None]))[0]
    order = np.argsort(-expected)[:5]
    assert [t["class"] for t in result["top"]] == [CIFAR100_CLASSES[i] for i in order]
    assert np.allclose([t["prob"] for t in result["top"]], expected[order], atol=1e-6)
    assert [t["superclass"] for t in result["top"]] == [predictor.superclasses[i] for i in order]
    assert result["superclass"] == result["top"][0]["superclass"] is not None
    # the 32x32 image the model saw, as a PNG data URL
    prefix = "data:image/png;base64,"
    assert result["input_png"].startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(result["input_png"][len(prefix) :]))) as img:
        assert img.size == (32, 32) and (np.asarray(img.convert("RGB")) == seen).all()


def test_several_images_formats_fields_and_top_k(client, predictor):
    a, b, c = random_pixels(), random_pixels(100, 100), random_pixels(40, 30)
    files = [
        ("a.png", png_bytes(a), "image/png"),
        ("b.jpg", png_bytes(b, "JPEG", quality=95), "image/jpeg"),
        ("c.webp", png_bytes(c, "WEBP", lossless=True), "application/octet-stream"),
    ]
    r = post(client, *files, params={"top_k": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["a.png", "b.jpg", "c.webp"]
    assert all(len(x["top"]) == 3 for x in results)
    # each image got its own answer, in order
    for x, pixels in ((results[0], a), (results[2], c)):  # lossless: exactly what the model gets
        expected = np.asarray(predictor.probabilities(prepare_image(Image.fromarray(pixels))[None]))[0]
        assert x["top"][0]["class"] == CIFAR100_CLASSES[int(expected.argmax())]
    probs = [t["prob"] for t in results[1]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # top_k as a form field; more than there are classes gives them all; the field "file" works too
    r = post(client, files[0], data={"top_k": "7"})
    assert len(r.json()["results"][0]["top"]) == 7
    r = post(client, files[0], field="file", params={"top_k": 1000})
    assert r.status_code == 200 and len(r.json()["results"][0]["top"]) == 100
    assert abs(sum(t["prob"] for t in r.json()["results"][0]["top"]) - 1) < 1e-4


# ------------------------------------------------------------------------------------------------
# bad input: a JSON error, and the server goes on
# ------------------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "case, status, fragment",
    [
        ("text file", 415, "not an image type"),
        ("not an image", 415, "not an image of a supported format"),
        ("truncated", 400, "truncated"),
        ("empty file", 400, "empty"),
        ("json body", 415, "multipart/form-data"),
        ("no files", 400, "no image"),
        ("file in another field", 400, "field 'files'"),
        ("bad top_k", 400, "top_k"),
        ("zero top_k", 400, "top_k"),
        ("too many files", 413, "too many images"),
        ("too large by Content-Length", 413, "too large"),
        ("bomb", 413, "pixels"),
        ("absurd dimensions", 413, "pixels"),
        ("malformed multipart", 400, "multipart"),
    ],
)
def test_bad_input_gets_a_json_error_and_the_server_goes_on(client, case, status, fragment):
    good = ("ok.png", png_bytes(random_pixels()), "image/png")
    whole = png_bytes(random_pixels(64, 64))
    requests = {
        "text file": lambda: post(client, ("notes.txt", b"just some text", "text/plain")),
        "not an image": lambda: post(client, ("fake.png", b"GIF89a but not really" * 10, "image/png")),
        "truncated": lambda: post(client, ("cut.png", whole[: len(whole) // 2], "image/png")),
        "empty file": lambda: post(client, ("empty.png", b"", "image/png")),
        "json body": lambda: client.post("/predict", json={"files": "x"}),
        "no files": lambda: client.post("/predict", data={"top_k": "5"}, files=[("other", (None, "x"))]),
        "file in another field": lambda: post(client, good, field="image"),
        "bad top_k": lambda: post(client, good, params={"top_k": "many"}),
        "zero top_k": lambda: post(client, good, data={"top_k": "0"}),
        "too many files": lambda: post(client, *[good] * 5),
        "too large by Content-Length": lambda: post(client, ("big.png", b"\0" * 1_100_000, "image/png")),
        "bomb": lambda: post(client, ("bomb.png", png_header_only(100_000, 100_000), "image/png")),
        "absurd dimensions": lambda: post(client, ("wide.png", png_header_only(9000, 9000), "image/png")),
        "malformed multipart": lambda: client.post(
            "/predict",
            content=b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
            b"abc\r\n--abc--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        ),
    }
    r = requests[case]()
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and fragment in detail, detail
    assert_still_serving(client)


def test_wrong_method(client):
    assert client.get("/predict").status_code == 405
    assert client.post("/health").status_code == 405
    assert client.delete("/classes").status_code == 405


def _asgi_call(app, headers, chunks):
    """Call the ASGI app directly with a body of ``chunks``; returns (status, JSON body, chunks read)."""
    read = 0
    sent = []

    async def receive():
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], httpx.Response(200, content=body).json(), read


def test_body_over_the_limit_is_refused_before_it_is_read(checkpoint, predictor):
    app = create_app(predictor, ServeLimits(max_upload_mb=1))
    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
    chunks = [head] + [b"x" * 65536] * 100  # 6.5 MB
    # Content-Length says so: 413 without reading a byte
    status, body, read = _asgi_call(
        app, {"content-type": "multipart/form-data; boundary=b", "content-length": str(sum(map(len, chunks)))}, chunks
    )
    assert status == 413 and "too large" in body["detail"] and read == 0
    # no Content-Length (chunked): 413 as soon as the count passes 1 MB
    status, body, read = _asgi_call(app, {"content-type": "multipart/form-data; boundary=b"}, chunks)
    assert status == 413 and "too large" in body["detail"] and read == 1 + 1_000_000 // 65536 + 1


def test_uploads_never_touch_the_disk(predictor, monkeypatch):
    """A 3 MB upload, over the 1 MB at which Starlette's own form parser would spool a file to disk, with
    every way of making a temporary file broken."""

    def refuse(*args, **kwargs):
        raise AssertionError("an upload went to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    big = png_bytes(random_pixels(1000, 1000))
    assert len(big) > 2_500_000
    with TestClient(create_app(predictor, ServeLimits(max_upload_mb=8))) as c:
        r = post(c, ("big.png", big, "image/png"))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["size"] == [1000, 1000]


def test_limits_are_checked_when_the_app_is_made(predictor):
    for kwargs in ({"max_batch": 0}, {"max_wait_ms": -1}, {"max_upload_mb": 0}, {"max_files": 0}):
        with pytest.raises(ValueError):
            create_app(predictor, ServeLimits(**kwargs))


# ------------------------------------------------------------------------------------------------
# batching, and an event loop that is never blocked
# ------------------------------------------------------------------------------------------------


class SlowPredictor:
    """Stands for a model: probabilities that encode each image's first pixel, after ``delay`` seconds."""

    def __init__(self, delay=0.0, fail_once=False):
        self.delay, self.fail_once, self.batches = delay, fail_once, []
        self.classes, self.superclasses = [f"c{i}" for i in range(4)], [None] * 4
        self.info = {"model": "slow", "num_classes": 4, "checksum": None, "temperature": 1.0, "format": "test"}

    def probabilities(self, images):
        self.batches.append(len(images))
        time.sleep(self.delay)
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("out of memory, say")
        probs = np.full((len(images), 4), 0.1, dtype=np.float32)
        probs[np.arange(len(images)), images[:, 0, 0, 0] % 4] = 0.7
        return probs


def test_queue_batches_concurrent_requests_and_keeps_them_apart():
    model = SlowPredictor()
    queue = BatchQueue(model.probabilities, max_batch=8, max_wait_ms=100)

    async def main():
        requests = [np.full((n, 32, 32, 3), i, dtype=np.uint8) for i, n in enumerate([1, 3, 2, 5, 1, 8, 20])]
        answers = await asyncio.gather(*(queue.submit(r) for r in requests))
        await queue.close()
        return requests, answers

    requests, answers = asyncio.run(main())
    for images, probs in zip(requests, answers):
        assert probs.shape == (len(images), 4) and (probs.argmax(1) == images[0, 0, 0, 0] % 4).all()
    assert max(model.batches) <= 8 and sum(model.batches) == 40
    assert len(model.batches) <= 7  # 40 images in batches of at most 8: fewer passes than requests
    assert queue.stats.batches == len(model.batches) and queue.stats.images == 40 and queue.stats.requests == 7


def test_a_lone_request_waits_at_most_max_wait():
    model = SlowPredictor()
    queue = BatchQueue(model.probabilities, max_batch=64, max_wait_ms=20)

    async def main():
        start = time.perf_counter()
        await queue.submit(np.zeros((1, 32, 32, 3), np.uint8))
        return time.perf_counter() - start

    assert asyncio.run(main()) < 1.0 and model.batches == [1]


def test_announced_requests_are_waited_for_and_a_lone_one_is_not():
    model = SlowPredictor()
    queue = BatchQueue(model.probabilities, max_batch=64, max_wait_ms=5000, track_incoming=True)

    async def late():
        with queue.incoming():  # its body is still being read
            await asyncio.sleep(0.2)
            images = np.ones((2, 32, 32, 3), np.uint8)
        return await queue.submit(images)

    async def main():
        start = time.perf_counter()
        await queue.submit(np.zeros((1, 32, 32, 3), np.uint8))  # nobody else on the way: no wait
        alone = time.perf_counter() - start
        task = asyncio.create_task(late())
        await asyncio.sleep(0)  # late() has announced itself
        first = await queue.submit(np.zeros((1, 32, 32, 3), np.uint8))
        return alone, time.perf_counter() - start, first, await task

    alone, both, first, second = asyncio.run(main())
    assert alone < 1.0 and both < 2.0  # far from the 5 s max_wait
    assert model.batches == [1, 3] and first.shape == (1, 4) and second.shape == (2, 4)


def test_concurrent_http_requests_share_a_forward_pass(predictor):
    app = create_app(predictor, ServeLimits(max_wait_ms=300))
    images = [random_pixels() for _ in range(6)]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            answers = await asyncio.gather(
                *(c.post("/predict", files={"files": (f"{i}.png", png_bytes(x))}) for i, x in enumerate(images))
            )
            return answers, (await c.get("/health")).json()

    answers, health = asyncio.run(main())
    assert all(r.status_code == 200 for r in answers)
    assert health["images"] == 6 and health["batches"] < 6 and health["mean_batch_size"] > 1
    expected = np.asarray(predictor.probabilities(np.stack(images)))
    for r, row in zip(answers, expected):  # each request got the answer for its own image
        assert r.json()["results"][0]["top"][0]["class"] == CIFAR100_CLASSES[int(row.argmax())]


def test_the_event_loop_answers_while_a_forward_pass_runs():
    app = create_app(SlowPredictor(delay=1.0), ServeLimits(max_wait_ms=0))

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            slow = asyncio.create_task(c.post("/predict", files={"files": ("a.png", png_bytes(random_pixels()))}))
            await asyncio.sleep(0.2)  # the forward pass has begun
            start = time.perf_counter()
            health = await c.get("/health")
            took = time.perf_counter() - start
            done_before = slow.done()
            return (await slow), health, took, done_before

    slow, health, took, done_before = asyncio.run(main())
    assert slow.status_code == 200 and health.status_code == 200
    assert took < 0.5 and not done_before


def test_a_failed_forward_pass_answers_500_and_the_next_succeeds():
    with TestClient(create_app(SlowPredictor(fail_once=True))) as c:
        r = post(c, ("a.png", png_bytes(random_pixels()), "image/png"))
        assert r.status_code == 500 and "out of memory" in r.json()["detail"]
        r = post(c, ("a.png", png_bytes(random_pixels()), "image/png"))
        assert r.status_code == 200 and r.json()["results"][0]["superclass"] is None
        assert c.get("/health").json()["failed_batches"] == 1


def test_requests_from_many_threads(client):
    """TestClient from several threads at once: every answer is right and nothing is lost."""
    pixels = [random_pixels() for _ in range(8)]
    answers = [None] * 8

    def one(i):
        answers[i] = post(client, (f"{i}.png", png_bytes(pixels[i]), "image/png"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.status_code == 200 and a.json()["results"][0]["filename"] == f"{i}.png" for i, a in enumerate(answers))


# ------------------------------------------------------------------------------------------------
# the page and its files
# ------------------------------------------------------------------------------------------------


def test_the_page_needs_nothing_but_this_server(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert 'role="alert"' in html and 'type="file"' in html and 'accept="image/*"' in html
    assert 'name="viewport"' in html
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC_DIR / name).read_text()
        assert "://" not in text.replace("http://www.w3.org", ""), f"{name} refers to another server"
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/docs").status_code == 200 and "/predict" in client.get("/openapi.json").json()["paths"]


def test_examples_are_small_cifar100_images_named_after_their_class(client):
    examples = client.get("/examples").json()
    assert 6 <= len(examples) <= 8
    total = 0
    for example in examples:
        assert example["label"] in CIFAR100_CLASSES
        r = client.get(example["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        total += len(r.content)
        with Image.open(io.BytesIO(r.content)) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    assert total < 30_000
    assert len(list(EXAMPLES_DIR.glob("*.png"))) == len(examples)


def test_examples_are_the_real_images_they_say(real_data):
    """Each example is image <index> of the real CIFAR-100 training file, of the class in its name."""
    for path in EXAMPLES_DIR.glob("*.png"):
        label, index = path.stem.rsplit("-", 1)
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
        assert (pixels == real_data.train.images[int(index)]).all(), path.name
        assert real_data.classes[int(real_data.train.labels[int(index)])] == label, path.name
