"""The HTTP service: :func:`create_app`, a FastAPI app around one model, and :func:`serve`, which runs it on uvicorn.

Routes: ``GET /`` (the web page), ``POST /predict``, ``GET /health``, ``GET /classes``, ``GET /examples``.
The model is loaded once, when the app is made, and nothing slow runs on the event loop: uploads are parsed
in memory from the request stream (:class:`BodyLimit` caps the body), images are decoded in worker threads by
:func:`decode_image` (formats :data:`IMAGE_FORMATS`, at most :data:`MAX_PIXELS` pixels), and forward passes go
through the batching queue (:class:`~cifar_resnet.serve.batching.BatchQueue`). Bad input is refused with a
JSON ``{"detail": ...}`` and a 4xx status, and the server goes on serving; the limits are a :class:`ServeLimits`.
The routes, limits, status codes and batching are described in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import socket
import time
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..console import one_line
from ..data import CIFAR100_CLASSES, DataError
from ..engine import prepare_data
from ..images import SIZE, ImageFileError, prepare_image
from ..inference import load_predictor
from ..serve_limits import MAX_PIXELS, ServeLimits
from ..version import __version__
from .batching import BatchQueue

__all__ = [
    "IMAGE_FORMATS",
    "MAX_PIXELS",
    "STATIC_DIR",
    "BodyLimit",
    "ServeLimits",
    "create_app",
    "decode_image",
    "serve",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
EXAMPLES_DIR = STATIC_DIR / "examples"

# The formats PIL may open: what browsers and cameras produce. Not every format PIL knows: each decoder is
# attack surface, and a server has no use for EPS (Ghostscript), FITS or PSD.
# (JPEG's opener also reads the MPO files of some cameras; AVIF only where this Pillow was built with it.)
Image.init()
IMAGE_FORMATS = tuple(f for f in ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF", "PPM") if f in Image.OPEN)
FILE_FIELDS = ("files", "file")
DEFAULT_TOP_K = 5
MAX_FIELD_BYTES = 1024  # a form field that is not a file (top_k)

# The page's Content-Security-Policy: its own files only (the images it shows are data: or blob: URLs).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class ImageRejected(Exception):
    """An upload refused, with the HTTP status to answer."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


# ------------------------------------------------------------------------------------------------
# the request body: size limit and multipart parsing in memory
# ------------------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, before the body is read when the
    Content-Length header says so, else as soon as the bytes received pass the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await JSONResponse({"detail": "invalid Content-Length header"}, 400)(scope, receive, send)
            if declared > self.max_bytes:
                return await self._too_large(declared)(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # raised inside the route while it reads the body; FastAPI turns it into the response
                    raise HTTPException(413, self._detail(received, "at least "))
            return message

        return await self.app(scope, counting_receive, send)

    def _detail(self, size: int, qualifier: str = "") -> str:
        return (
            f"request body too large: {qualifier}{size / 1e6:.1f} MB, the limit is "
            f"{self.max_bytes / 1e6:.1f} MB (--max-upload-mb)"
        )

    def _too_large(self, size: int) -> JSONResponse:
        # the body is left unread: uvicorn closes the connection after this response
        return JSONResponse({"detail": self._detail(size)}, 413, headers={"Connection": "close"})


class _Part:
    __slots__ = ("content_type", "data", "filename", "headers", "name")

    def __init__(self):
        self.headers: dict[bytes, bytes] = {}
        self.name = self.filename = self.content_type = None
        self.data = bytearray()


class _Form:
    """The parts of a multipart/form-data body as python-multipart's callbacks hand them over: image files
    (fields ``files``/``file``) and the other fields; the first refusal is kept in ``error``."""

    CALLBACKS = (
        "on_part_begin",
        "on_header_field",
        "on_header_value",
        "on_header_end",
        "on_headers_finished",
        "on_part_data",
        "on_part_end",
        "on_end",
    )

    def __init__(self, max_files: int):
        self.max_files = max_files
        self.files: list[_Part] = []
        self.fields: dict[str, str] = {}
        self.part: _Part | None = None
        self.field, self.value = b"", b""
        self.error: tuple[int, str] | None = None
        self.ended = False

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in self.CALLBACKS}

    def fail(self, status: int, detail: str) -> None:
        if self.error is None:
            self.error = (status, detail)

    def raise_error(self) -> None:
        if self.error is not None:
            raise HTTPException(*self.error)

    def on_part_begin(self):
        self.part = _Part()

    def on_header_field(self, data, start, end):
        self.field += data[start:end]

    def on_header_value(self, data, start, end):
        self.value += data[start:end]

    def on_header_end(self):
        self.part.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def on_headers_finished(self):
        part = self.part
        _, disposition = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        part.filename = None if filename is None else filename.decode("utf-8", "replace")
        declared = part.headers.get(b"content-type")
        part.content_type = None if declared is None else parse_options_header(declared)[0].decode("latin-1")
        if part.filename is not None and part.name not in FILE_FIELDS:
            self.fail(400, f"a file in the field {part.name!r}: send images in the field 'files' (or 'file')")
        elif part.name in FILE_FIELDS:
            self.files.append(part)
            if len(self.files) > self.max_files:
                self.fail(413, f"too many images in one request: the limit is {self.max_files} (--max-files)")

    def on_part_data(self, data, start, end):
        part = self.part
        part.data += data[start:end]
        if part.name not in FILE_FIELDS and len(part.data) > MAX_FIELD_BYTES:
            self.fail(400, f"form field {part.name!r} is too long")

    def on_part_end(self):
        part = self.part
        if part.name not in FILE_FIELDS and part.name:
            self.fields[part.name] = part.data.decode("utf-8", "replace")

    def on_end(self):
        self.ended = True


def _boundary(request: Request) -> bytes:
    """The multipart boundary of ``request``; 415 when it is not multipart/form-data, 400 without one."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        shown = ctype.decode("latin-1") or "none"
        raise HTTPException(
            415, f"send the images as multipart/form-data in the field 'files' (Content-Type was {shown})"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary")
    return boundary


async def read_form(request: Request, max_files: int) -> tuple[list[tuple[str, bytes, str | None]], dict[str, str]]:
    """The image files (``(filename, bytes, declared type)``, fields ``files``/``file``) and the other fields
    of a multipart/form-data request, read from the body stream into memory (never to disk)."""
    form = _Form(max_files)
    parser = MultipartParser(_boundary(request), form.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            form.raise_error()
        parser.finalize()
    except MultipartParseError as e:
        raise HTTPException(400, f"malformed multipart/form-data body ({one_line(e)})") from None
    form.raise_error()
    if not form.ended:  # python-multipart's finalize() accepts a body cut short
        raise HTTPException(400, "malformed multipart/form-data body: it ends before its closing boundary")
    uploads = [(p.filename or f"image{i}", bytes(p.data), p.content_type) for i, p in enumerate(form.files, 1)]
    return uploads, form.fields


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------


def decode_image(
    data: bytes, filename: str = "image", max_pixels: int = MAX_PIXELS, size: int = SIZE
) -> tuple[np.ndarray, tuple]:
    """Bytes of an image file -> ``((size, size, 3) uint8, (width, height))``, from memory; :class:`ImageRejected`
    with the HTTP status and a one-line reason when it cannot be used."""
    if not data:
        raise ImageRejected(400, f"{filename}: the file is empty")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRejected(
                    413,
                    f"{filename}: {width}x{height} pixels is too many (the limit is {max_pixels / 1e6:.0f} megapixels)",
                )
            img.draft(None, (4 * size, 4 * size))  # a large JPEG is decoded at a reduced scale
            img.load()  # a truncated or corrupt file fails here
            return prepare_image(img, "crop", size), (width, height)
    except UnidentifiedImageError:
        raise ImageRejected(
            415, f"{filename}: not an image of a supported format ({', '.join(IMAGE_FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        raise ImageRejected(413, f"{filename}: refused, too many pixels (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, ImageFileError) as e:  # truncated data, bad headers or chunks
        raise ImageRejected(400, f"{filename}: unreadable or truncated image ({one_line(e, 160)})") from None


def png_data_url(image: np.ndarray) -> str:
    """An (S, S, 3) uint8 image as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _decode_all(uploads, max_pixels: int, size: int) -> list[tuple[np.ndarray, tuple, str]]:
    out = []
    for filename, data, declared in uploads:
        if declared and not declared.startswith("image/") and declared != "application/octet-stream":
            raise ImageRejected(415, f"{filename}: {declared} is not an image type")
        image, shape = decode_image(data, filename, max_pixels, size)
        out.append((image, shape, png_data_url(image)))
    return out


def _top_k(value) -> int:
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise HTTPException(400, f"top_k must be a whole number >= 1, got {value!r}") from None
    if k < 1:
        raise HTTPException(400, f"top_k must be >= 1, got {k}")
    return k


EXAMPLES = 6  # example images of the page for a model of its own classes


def _examples() -> list[dict]:
    """The example images of the page: static/examples/<true class>-<index in cifar100-train.npz>.png."""
    return [
        {
            "url": f"/static/examples/{p.name}",
            "label": p.stem.rsplit("-", 1)[0],
            "filename": p.name,
            "title": f"a CIFAR-100 image of {p.stem.rsplit('-', 1)[0]}",
        }
        for p in sorted(EXAMPLES_DIR.glob("*.png"))
    ]


def _own_examples(predictor) -> tuple[list[dict], list[bytes]] | None:
    """For a model of other classes than CIFAR-100's: the page's examples from its own data, one image of
    each of its first :data:`EXAMPLES` classes from the split its run evaluated on (the validation images),
    as ``(descriptions, PNG files)``; no examples where that data cannot be read (an exported model, a moved
    folder); None for a CIFAR-100 model, whose examples are the static ones."""
    if list(predictor.classes) == list(CIFAR100_CLASSES):
        return None
    config = getattr(getattr(predictor, "ckpt", None), "config", None)
    try:
        name, split = prepare_data(config, download=False).eval_split() if config is not None else ("", None)
    except (DataError, OSError, ValueError):
        split = None
    described, files = [], []
    for label, cls in enumerate(predictor.classes[:EXAMPLES] if split is not None else []):
        where = np.flatnonzero(split.labels == label)
        if not len(where):
            continue
        buffer = io.BytesIO()
        Image.fromarray(split.images[where[0]]).save(buffer, format="PNG")
        n = len(files)
        files.append(buffer.getvalue())
        title = f"a {'validation' if name == 'val' else name} image of {cls} from {Path(config.data).name}"
        described.append({"url": f"/examples/{n}.png", "label": cls, "filename": f"{cls}-{n}.png", "title": title})
    return described, files


# ------------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------------

_PREDICT_OPENAPI = {
    "parameters": [
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "default": DEFAULT_TOP_K},
            "description": "how many classes to return per image (also accepted as a form field)",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more image files (the field 'file' works too)",
                        },
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                }
            }
        },
    },
    "responses": {
        "400": {"description": "a truncated image, a malformed form, no image, a bad top_k"},
        "413": {"description": "body, number of files or image dimensions over the limits"},
        "415": {"description": "not multipart/form-data, or a file that is not an image"},
    },
}


def create_app(model, limits: ServeLimits = ServeLimits(), *, device: str = "auto") -> FastAPI:
    """The FastAPI app serving ``model`` within ``limits``: a checkpoint or exported model path (loaded
    here, once, on ``device`` with ``load_predictor``: a checkpoint runs in the precision its run was
    trained in), or an already loaded predictor (``.classes``, ``.superclasses``, ``.info``,
    ``.probabilities(images)``)."""

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(predictor.probabilities(images), dtype=np.float32)

    queue = BatchQueue(run, max_batch=limits.max_batch, max_wait_ms=limits.max_wait_ms, track_incoming=True)
    predictor = load_predictor(model, device) if isinstance(model, (str, os.PathLike)) else model
    info = dict(predictor.info)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await queue.close()

    app = FastAPI(
        title="cifar-resnet",
        version=__version__,
        lifespan=lifespan,
        description=f"Image classification with {info.get('model')} ({len(predictor.classes)} classes).",
    )
    app.state.predictor, app.state.queue, app.state.info = predictor, queue, info
    app.add_middleware(BodyLimit, max_bytes=int(limits.max_upload_mb * 1e6))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_routes(app, limits)
    return app


def _add_example_routes(app: FastAPI, predictor) -> None:
    """``/examples`` (the page's example images) and, for a model of its own classes, ``/examples/N.png``."""
    own = _own_examples(predictor)

    @app.get("/examples", summary="The example images of the web page (from the model's own validation images)")
    async def examples():
        return _examples() if own is None else own[0]

    @app.get("/examples/{index}.png", include_in_schema=False)
    async def example_image(index: int):
        if own is None or not 0 <= index < len(own[1]):
            raise HTTPException(404, f"no example {index}")
        return Response(own[1][index], media_type="image/png")


def _add_routes(app: FastAPI, limits: ServeLimits) -> None:
    """The routes of ``app`` (its ``state`` holds the predictor, its batching queue and its info)."""
    predictor, queue, info = app.state.predictor, app.state.queue, app.state.info
    classes, superclasses = list(predictor.classes), list(predictor.superclasses)
    max_files, max_bytes, max_pixels = int(limits.max_files), int(limits.max_upload_mb * 1e6), limits.max_pixels
    decode_slots = asyncio.Semaphore(os.cpu_count() or 2)  # bounds the memory of images being decoded at once
    size = getattr(predictor, "image_size", SIZE)  # the side of the images the model takes
    started = time.monotonic()

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/health", summary="The model served, and how requests have been batched")
    async def health():
        return {
            "status": "ok",
            "model": info.get("model"),
            "classes": len(classes),
            "checksum": info.get("checksum"),
            "temperature": info.get("temperature"),
            "format": info.get("format"),
            "epoch": info.get("epoch"),
            "precision": info.get("precision"),
            "max_batch": queue.max_batch,
            "max_wait_ms": queue.max_wait * 1000.0,
            "max_upload_mb": max_bytes / 1e6,
            "max_files": max_files,
            "uptime_s": time.monotonic() - started,
            **queue.stats.as_dict(),
        }

    @app.get("/classes", summary="The class names, in the model's order, and the superclass of each")
    async def get_classes():
        return {"classes": classes, "superclasses": superclasses}

    _add_example_routes(app, predictor)

    @app.post("/predict", summary="Classify one or several images", openapi_extra=_PREDICT_OPENAPI)
    async def predict(request: Request):
        with queue.incoming():  # a batch being formed waits for this request (at most max_wait_ms)
            uploads, fields = await read_form(request, max_files)
            k = _top_k(fields.get("top_k", request.query_params.get("top_k", DEFAULT_TOP_K)))
            if not uploads:
                raise HTTPException(400, "no image: send one or more files in the multipart field 'files'")
            async with decode_slots:
                try:
                    decoded = await asyncio.to_thread(_decode_all, uploads, max_pixels, size)
                except ImageRejected as e:
                    raise HTTPException(e.status, e.detail) from None
            images = np.stack([image for image, _, _ in decoded])
        try:
            probs = await queue.submit(images)  # no await since the block: counted exactly once
        except Exception as e:  # noqa: BLE001 - one failed forward pass answers 500; the server goes on
            return JSONResponse({"detail": f"inference failed: {type(e).__name__}: {one_line(e)}"}, 500)
        results = _results(uploads, decoded, probs, min(k, len(classes)), classes, superclasses)
        return {"model": info.get("model"), "temperature": info.get("temperature"), "results": results}


def _results(uploads, decoded, probs: np.ndarray, k: int, classes: list, superclasses: list) -> list[dict]:
    """The answer for each image: its ``k`` most probable classes, its superclass, size and 32x32 PNG."""
    results = []
    for (filename, _, _), (_, size, url), row in zip(uploads, decoded, probs):
        order = np.argsort(-row, kind="stable")[:k]
        top = [{"class": classes[i], "prob": float(row[i]), "superclass": superclasses[i]} for i in order]
        results.append(
            {"filename": filename, "top": top, "superclass": top[0]["superclass"], "size": list(size), "input_png": url}
        )
    return results


# ------------------------------------------------------------------------------------------------
# running it
# ------------------------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(
    model, limits: ServeLimits = ServeLimits(), *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto"
) -> None:
    """Load ``model`` and serve it within ``limits`` until Ctrl-C (or SIGTERM), printing one line with the
    URL. ``port`` 0 picks a free port (the line says which)."""
    app = create_app(model, limits, device=device)
    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    info = app.state.info
    print(
        f"serving {info.get('model')} ({len(app.state.predictor.classes)} classes, {info.get('precision', 'fp32')}) "
        f"at http://{shown}:{bound_port}/"
        f"  (API docs at /docs; Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the signal
        pass
    finally:
        sock.close()
