"""Concurrent requests -> one forward pass: :class:`BatchQueue`, the batching queue of the HTTP service.

Each request hands :meth:`BatchQueue.submit` its images, (N, S, S, 3) uint8, and awaits its rows of
probabilities. A collector task on the event loop gathers waiting requests until the batch holds ``max_batch``
images, the oldest has waited ``max_wait_ms`` or (with ``track_incoming``) no request announced by
:meth:`BatchQueue.incoming` is still on its way, then runs ``run`` on the batch in its own worker thread and
resolves each request's future with its rows. :class:`BatchStats` counts the batches formed
(``GET /health`` reports them). The queue's behaviour is described in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchQueue", "BatchStats"]


@dataclass
class BatchStats:
    """Counters since the queue was made (only the event loop's thread changes them)."""

    requests: int = 0  # submit() calls answered
    images: int = 0  # images that went through a forward pass
    batches: int = 0  # forward passes
    largest: int = 0  # most images in one forward pass
    failed: int = 0  # forward passes that raised

    @property
    def mean_batch_size(self) -> float:
        return self.images / self.batches if self.batches else 0.0

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "images": self.images,
            "batches": self.batches,
            "mean_batch_size": self.mean_batch_size,
            "largest_batch": self.largest,
            "failed_batches": self.failed,
        }


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future
    queued_at: float


class BatchQueue:
    """Batches the images of concurrent :meth:`submit` calls into one call of ``run``.

    ``run`` maps (N, S, S, 3) uint8 to (N, C) probabilities; it runs in a dedicated worker thread, one
    call at a time (a second thread would only compete for the same cores). Use from one event loop.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        track_incoming: bool = False,
    ):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not float(max_wait_ms) >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._run = run
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.track_incoming = bool(track_incoming)
        self.stats = BatchStats()
        self._incoming = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._pending: collections.deque[_Item] = collections.deque()
        self._pending_images = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @contextlib.contextmanager
    def incoming(self):
        """Marks a request on its way to :meth:`submit` (body being read, images being decoded): with
        ``track_incoming``, a batch waits for it (at most ``max_wait_ms``). Call ``submit`` right after the
        block, with no ``await`` between, so that the request is never counted twice or not at all."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            if self._wakeup is not None:
                self._wakeup.set()

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for ``images`` (N >= 1), computed in a batch with other requests' images."""
        images = np.asarray(images)
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"expected a non-empty (N, H, W, 3) batch of images, got shape {images.shape}")
        if self._closed:
            raise RuntimeError("the batching queue is closed")
        self._ensure_started()
        loop = self._loop
        futures = []
        for start in range(0, len(images), self.max_batch):
            item = _Item(images[start : start + self.max_batch], loop.create_future(), loop.time())
            self._pending.append(item)
            self._pending_images += len(item.images)
            futures.append(item.future)
        self._wakeup.set()
        parts = await asyncio.gather(*futures)
        self.stats.requests += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        # first use, or a new event loop (a test client may run each request on its own loop)
        self._loop, self._wakeup = loop, asyncio.Event()
        self._pending.clear()
        self._pending_images = 0
        self._task = loop.create_task(self._collect(), name="batch-collector")

    def _take_batch(self) -> list[_Item]:
        """The oldest pending items that fit in one batch (always at least the oldest one)."""
        batch = [self._pending.popleft()]
        n = len(batch[0].images)
        while self._pending and n + len(self._pending[0].images) <= self.max_batch:
            item = self._pending.popleft()
            batch.append(item)
            n += len(item.images)
        self._pending_images -= n
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # wait for company until the batch is full, nobody announced is still on the way (with
            # track_incoming) or the oldest request has waited max_wait
            deadline = self._pending[0].queued_at + self.max_wait
            while self._pending_images < self.max_batch and not (self.track_incoming and self._incoming <= 0):
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11
                    break
            batch = [item for item in self._take_batch() if not item.future.done()]  # done: its client left
            if not batch:
                continue
            images = batch[0].images if len(batch) == 1 else np.concatenate([item.images for item in batch])
            try:
                probs = await loop.run_in_executor(self._executor, self._run, images)
                probs = np.asarray(probs, dtype=np.float32)
                if probs.ndim != 2 or len(probs) != len(images):
                    raise RuntimeError(f"the model returned shape {probs.shape} for {len(images)} images")
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                self.stats.failed += 1
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            self.stats.batches += 1
            self.stats.images += len(images)
            self.stats.largest = max(self.stats.largest, len(images))
            start = 0
            for item in batch:
                end = start + len(item.images)
                if not item.future.done():
                    item.future.set_result(probs[start:end])
                start = end

    async def close(self) -> None:
        """Stop the collector; pending requests fail. The queue cannot be used afterwards."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, RuntimeError):
                pass
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)
