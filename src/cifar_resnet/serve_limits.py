"""What the HTTP service accepts and how it batches: :class:`ServeLimits`, the one place its defaults live.

Kept apart from :mod:`cifar_resnet.serve` (which needs FastAPI) so that the command line can declare
``cifar-resnet serve``'s flags, defaults and help from these fields without the ``serve`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAX_PIXELS", "ServeLimits"]

# Most pixels an upload may have: a 48-megapixel phone photo passes; a decompression bomb (a small file of
# huge dimensions) is refused from its header, before PIL allocates anything for its pixels.
MAX_PIXELS = 50_000_000


def _limit(default, help: str | None = None):
    """A field with the help text of its ``--flag`` (None: no flag)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServeLimits:
    """How a server batches and what it accepts (``cifar-resnet serve --max-batch ...``;
    docs/serving.md says how each limit is enforced)."""

    max_batch: int = _limit(64, "most images in one forward pass")
    max_wait_ms: float = _limit(5.0, "how long a request waits for others to share its batch, in ms")
    max_upload_mb: float = _limit(8.0, "largest request body in MB")
    max_files: int = _limit(32, "most images in one request")
    max_pixels: int = _limit(MAX_PIXELS)  # most pixels of one image, read from its header before decoding

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if int(self.max_files) < 1:
            raise ValueError(f"max_files must be >= 1, got {self.max_files}")
        if int(self.max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
