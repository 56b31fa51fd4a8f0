#!/usr/bin/env python
"""Load benchmark of ``cifar-resnet serve``: requests/s, latency and the batches the server formed, under
N concurrent clients on loopback. Prints a markdown table and can write the figures as JSON::

    python benchmarks/serve_load.py                          # fast_small (untrained), N = 1, 8, 64, 10 s each
    python benchmarks/serve_load.py --model runs/demo/best.pt --clients 1,4,16 --duration 20
    python benchmarks/serve_load.py --image photo.jpg        # a phone photo instead of a 32x32 PNG

The server runs as its own process (``python -m cifar_resnet serve MODEL --port 0``); the clients are
asyncio tasks, each with its own keep-alive HTTP/1.1 connection, each sending one image per request
(``POST /predict``, ``top_k=5``) as soon as its previous answer came back, for ``--duration`` seconds per
N after ``--warmup`` seconds of the same load. Per N: requests answered, failed requests (any status but
200, or a transport error), requests/s, p50 and p99 latency, the mean batch size the server formed (from
the ``images`` and ``batches`` counters of ``GET /health`` before and after), and the server's resident
memory (``VmRSS`` of ``/proc/PID/status`` at the end, and its peak ``VmHWM``).

The clients run on the same machine as the server and take CPU time from it: on a small machine the
figures are those of server plus clients. Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
try:
    import cifar_resnet  # noqa: F401
except ImportError:  # run from a checkout without installing: use the src/ beside this folder
    sys.path.insert(0, str(SRC))

from cifar_resnet.config import TrainConfig
from cifar_resnet.data import CIFAR100_CLASSES, CifarData, Split
from cifar_resnet.train import fit

EXAMPLES = SRC / "cifar_resnet" / "serve" / "static" / "examples"


def make_checkpoint(out_dir: Path, model: str = "fast_small", model_kwargs: dict | None = None) -> Path:
    """A checkpoint of ``model`` after one short epoch on random images: its speed is that of a trained one."""
    rng = np.random.default_rng(0)
    n = 400
    labels = np.arange(n) % 100
    split = Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels)
    val = Split(rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8), np.arange(100))
    data = CifarData(
        name="cifar100", train=split, test=None, val=val, classes=CIFAR100_CLASSES, coarse_classes=None, source="random"
    )
    config = TrainConfig(
        model=model,
        model_kwargs=model_kwargs or {},
        optimizer="sgd",
        lr=0.01,
        grad_clip=0.0,
        epochs=1,
        batch_size=100,
        device="cpu",
    )
    fit(config, data, out_dir=out_dir, log=None, progress=False)
    return Path(out_dir) / "best.pt"


class Server:
    """``python -m cifar_resnet serve`` as a process on a free port of 127.0.0.1."""

    def __init__(self, model: Path, *, max_batch: int, max_wait_ms: float, device: str = "cpu", timeout: float = 120.0):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        cmd = [
            sys.executable,
            "-m",
            "cifar_resnet",
            "serve",
            str(model),
            "--port",
            "0",
            "--device",
            device,
            "--max-batch",
            str(max_batch),
            "--max-wait-ms",
            str(max_wait_ms),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output: list[str] = []
        found = threading.Event()
        self.url = None

        def read():
            for line in self.proc.stdout:
                self.output.append(line)
                if self.url is None and "http://" in line:
                    self.url = line.split("http://", 1)[1].split()[0].rstrip("/")
                    self.url = "http://" + self.url
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(timeout) or self.url is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.output))

    def memory_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the server process in MB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _request_bytes(host: str, image: tuple[str, bytes, str]) -> bytes:
    """One ``POST /predict?top_k=5`` with the image as multipart/form-data, encoded once, sent many times."""
    name, data, mime = image
    boundary = "serve-load-boundary-7d3f"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: {mime}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /predict?top_k=5 HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(reader, writer, request: bytes) -> tuple[int, bytes, bool]:
    """Send one request on a keep-alive connection: (status, body, whether the server closes it)."""
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length, close = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == "content-length":
            length = int(value)
        elif key == "connection" and value == "close":
            close = True
    return status, await reader.readexactly(length), close


async def _drive(url: str, image: tuple[str, bytes, str], clients: int, seconds: float) -> dict:
    """``clients`` connections each posting ``image`` back to back for ``seconds``: latencies and failures.

    The clients speak HTTP/1.1 over asyncio streams with the request encoded once: a few tens of
    microseconds of client CPU per request, so that on a small machine the clients, which share its
    cores, measure the server rather than themselves (httpx's pool with 64 connections took a whole core
    on 2 cores and starved the server)."""
    host_port = url.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    request = _request_bytes(host_port, image)
    latencies: list[float] = []
    failures: list[str] = []
    end = time.perf_counter() + seconds

    async def one_client():
        conn = None
        while time.perf_counter() < end:
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, int(port))
                status, body, close = await _exchange(*conn, request)
                if status != 200 or b'"results"' not in body:
                    failures.append(f"{status} {body[:100]!r}")
                else:
                    latencies.append(time.perf_counter() - start)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                failures.append(f"{type(e).__name__}: {e}")
                close = True
            if close and conn is not None:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    began = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return {"latencies": latencies, "failures": failures, "elapsed_s": time.perf_counter() - began}


def measure(server: Server, image: tuple[str, bytes, str], clients: int, duration: float, warmup: float) -> dict:
    if warmup > 0:
        asyncio.run(_drive(server.url, image, clients, warmup))
    before = httpx.get(f"{server.url}/health").json()
    run = asyncio.run(_drive(server.url, image, clients, duration))
    after = httpx.get(f"{server.url}/health").json()
    rss, peak = server.memory_mb()
    lat_ms = np.asarray(run["latencies"]) * 1000.0
    batches = after["batches"] - before["batches"]
    images = after["images"] - before["images"]
    return {
        "clients": clients,
        "requests": len(lat_ms),
        "failed": len(run["failures"]),
        "failures_sample": run["failures"][:5],
        "elapsed_s": run["elapsed_s"],
        "requests_per_s": len(lat_ms) / run["elapsed_s"],
        "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else float("nan"),
        "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else float("nan"),
        "batches": batches,
        "images": images,
        "mean_batch_size": images / batches if batches else float("nan"),
        "largest_batch_so_far": after["largest_batch"],
        "server_rss_mb": rss,
        "server_peak_rss_mb": peak,
    }


def format_table(meta: dict, rows: list[dict]) -> str:
    precision = f" ({meta['precision']})" if meta.get("precision") else ""
    lines = [
        f"### Serving load: {meta['model']}{precision} on {meta['machine']}",
        "",
        (
            f"{meta['duration_s']:g} s per row after {meta['warmup_s']:g} s warm-up; one {meta['image']} per "
            f"request; server --max-batch {meta['max_batch']} --max-wait-ms {meta['max_wait_ms']:g}; "
            f"clients on the same machine (asyncio streams); load average at start {meta['loadavg']}"
        ),
        "",
        "| clients | requests | failed | req/s | p50 ms | p99 ms | mean batch | server RSS MB (peak) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['failed']} | {r['requests_per_s']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch_size']:.2f} | "
            f"{r['server_rss_mb']:.0f} ({r['server_peak_rss_mb']:.0f}) |"
        )
    return "\n".join(lines)


def _machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, help="checkpoint or .onnx to serve (default: an untrained --arch)")
    p.add_argument("--arch", default="fast_small", help="model made when --model is not given (default fast_small)")
    p.add_argument("--clients", default="1,8,64", help="comma-separated numbers of concurrent clients")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per number of clients")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of the same load before each measurement")
    p.add_argument("--image", type=Path, help="the image each request sends (default: a CIFAR-100 example)")
    p.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms")
    p.add_argument("--device", default="cpu", help="the server's --device")
    p.add_argument("--json", type=Path, help="write the figures here as JSON")
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1:
        raise SystemExit("--clients: give numbers >= 1, such as 1,8,64")
    image_path = args.image or min(EXAMPLES.glob("*.png"))
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
    image = (image_path.name, image_path.read_bytes(), mime.get(image_path.suffix.lower(), "application/octet-stream"))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            print(f"making an untrained {args.arch} checkpoint...", file=sys.stderr, flush=True)
            model = make_checkpoint(Path(tmp), args.arch)
        loadavg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        server = Server(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, device=args.device)
        rows = []
        try:
            health = httpx.get(f"{server.url}/health").json()
            for n in clients:
                print(f"{n} client(s) for {args.duration:g} s...", file=sys.stderr, flush=True)
                rows.append(measure(server, image, n, args.duration, args.warmup))
        finally:
            server.stop()
    meta = {
        "model": health["model"],
        "precision": health.get("precision"),
        "checkpoint": str(args.model or f"untrained {args.arch}"),
        "machine": _machine(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "image": f"{image_path.name} ({len(image[1]):,} bytes)",
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "loadavg": loadavg,
        "python": platform.python_version(),
        "command": " ".join(["python", "benchmarks/serve_load.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    table = format_table(meta, rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    failed = sum(r["failed"] for r in rows)
    if failed:
        print(
            f"{failed} request(s) failed, e.g. {next(r['failures_sample'] for r in rows if r['failed'])}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
