"""``edgevfm serve``: its arguments and the call (see :mod:`edgevfm.runtime.commands`). The server
itself (:mod:`.server`) is imported when the command runs: it needs the ``[serve]`` extra."""

from __future__ import annotations

from edgevfm.runtime.commands import Command, import_layer, register_command
from edgevfm.runtime.tasks import positive_int


def arguments(p) -> None:
    p.add_argument("bundles", nargs="+", metavar="[NAME=]BUNDLE",
                   help="bundles to serve, each under NAME (default: its folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one, printed)")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="requests each model runs at once (default 2: one decodes its images while another runs "
                   "the model)")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait per model; one more is a 503 "
                   "with Retry-After (default 16)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take, waiting included, "
                   "before a 504 (default 120)")
    p.add_argument("--threads", type=positive_int, help="runtime threads per request (default: the backend's, all "
                   "cores: the lowest latency for one client; under steady load from many clients, the cores divided "
                   "by --workers gives more throughput)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (default 32 MB; over: 413)")
    p.add_argument("--max-pixels", type=positive_int, default=25_000_000,
                   help="largest image, in pixels (default 25 M; over: 413, checked before decoding)")
    p.add_argument("--sam-cache-mb", type=float, default=512.0,
                   help="SAM image embeddings kept for /v1/sam/segment by image_id (default 512 MB per model)")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="a file of API keys, one per line: requests then need 'Authorization: Bearer KEY' "
                        "(/health and the page are open)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN to call the API (repeat; default: none)")
    p.add_argument("--allow-remote-images", action="store_true",
                   help="fetch http(s) image URLs (default: only data URIs, so the server fetches nothing)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args) -> None:
    server = import_layer("edgevfm.serve.server", "serve", "edgevfm serve")
    server.main(args)


register_command(Command("serve", "serve bundles over HTTP: OpenAI-compatible API, SAM prompts, a web page",
                         arguments, run, order=35))
