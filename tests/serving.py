"""A real uvicorn server in a thread of the test process, on a free port of 127.0.0.1, for the
server's tests (the official openai client and a browser talk to it over sockets)."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import uvicorn
from PIL import Image

from edgevfm.serve.app import Options, create_app
from edgevfm.serve.models import Served
from edgevfm.serve.server import bind


class LiveServer:
    def __init__(self, bundles: dict, options: Options = Options(), **served_options):
        self.served = [Served(name, path, **served_options) for name, path in bundles.items()]
        self.app = create_app(self.served, options)
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self.wait_healthy()

    def wait_healthy(self, seconds: float = 120) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server at {self.url} did not become healthy in {seconds} s")

    @property
    def loop(self):
        return self.app.state.loop

    def post(self, path: str, body=None, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=120, **kwargs)

    def metric(self, name: str, model: str) -> float:
        """A gauge's value for ``model`` from /metrics."""
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith(f'{name}{{model="{model}"}}'):
                return float(line.split()[-1])
        raise AssertionError(f"/metrics has no {name} for {model}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def data_uri(image: np.ndarray | Image.Image, form: str = "PNG") -> str:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=form)
    return f"data:image/{form.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()
