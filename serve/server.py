"""Runs the app on uvicorn: the command's arguments -> :class:`.app.Options`, the listening socket
bound first (a taken port is a clear error before anything loads), SIGTERM and Ctrl-C drain the
requests in flight, then the process exits 0."""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path

import uvicorn

from edgevfm.runtime.errors import EdgeVfmError, InputError, UsageError

from .app import Options, create_app
from .images import ImageLimits
from .models import Served

DRAIN_SECONDS = 30


class Server(uvicorn.Server):
    """uvicorn's server, except that SIGTERM, once the requests in flight are drained, ends the
    process with 0 (a service manager's ordinary stop), where uvicorn raises the signal again."""

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)


def parse_bundles(values: list[str]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` or ``PATH`` (named after its folder) -> (name, path); names must be unique."""
    found: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).resolve().name, value
        if not name or not Path(path).is_dir() or not (Path(path) / "manifest.json").is_file():
            raise InputError(f"{value!r}: expected [NAME=]BUNDLE, BUNDLE a folder written by edgevfm export or "
                             "quantize (with a manifest.json)")
        if name in found:
            raise UsageError(f"two bundles are named {name!r}: name them, as NAME=BUNDLE")
        found[name] = Path(path)
    return list(found.items())


def read_keys(path: str | None) -> frozenset[str]:
    if path is None:
        return frozenset()
    try:
        keys = frozenset(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
    except OSError as exc:
        raise InputError(f"--api-key-file {path!r} cannot be read ({exc})") from None
    if not keys:
        raise InputError(f"--api-key-file {path!r} holds no key: one key per line")
    return keys


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EdgeVfmError(f"cannot listen on {host}:{port} ({exc.strerror}): is another server using that port? "
                           "Stop it, or choose another with --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def one_blas_thread() -> None:
    """numpy's BLAS (OpenBLAS) down to one thread in this process. Its threads spin between calls;
    under concurrent requests they took the cores from ONNX Runtime and the HTTP thread for products
    as small as SAM's mask resize (``benchmarks/serve.py`` measures the server with it)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def main(args) -> None:
    one_blas_thread()
    served = [Served(name, path, workers=args.workers, queue_size=args.queue_size, timeout=args.timeout,
                     threads=args.threads) for name, path in parse_bundles(args.bundles)]
    if args.queue_size < 0 or args.timeout <= 0 or args.max_body_mb <= 0 or args.sam_cache_mb <= 0:
        raise UsageError("--queue-size must be >= 0, and --timeout, --max-body-mb and --sam-cache-mb above 0")
    options = Options(images=ImageLimits(max_pixels=args.max_pixels, max_bytes=int(args.max_body_mb * (1 << 20)),
                                         allow_remote=args.allow_remote_images),
                      max_body_bytes=int(args.max_body_mb * (1 << 20)), api_keys=read_keys(args.api_key_file),
                      cors_origins=tuple(args.cors_origin), sam_cache_bytes=int(args.sam_cache_mb * (1 << 20)))
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"edgevfm serve: http://{host}:{port}/ ({', '.join(s.name for s in served)}; loading: GET /health says "
          "when they are ready)", flush=True)
    config = uvicorn.Config(create_app(served, options), log_level=args.log_level,
                            timeout_graceful_shutdown=DRAIN_SECONDS)
    Server(config).run(sockets=[sock])
