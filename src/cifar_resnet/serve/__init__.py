"""The HTTP service and its web page: ``cifar-resnet serve MODEL`` (needs the ``serve`` extra: FastAPI,
uvicorn, python-multipart).

* :mod:`.batching`: the queue that puts the images of concurrent requests in one forward pass;
* :mod:`.app`: the FastAPI app (``create_app``) and ``serve``, which runs it on uvicorn;
* ``static/``: the page (``index.html``, ``app.js``, ``style.css``, no build step, no CDN) and its example
  images, real CIFAR-100 training images named after their class.
"""

from .app import ServeLimits, create_app, serve
from .batching import BatchQueue

__all__ = ["BatchQueue", "ServeLimits", "create_app", "serve"]
