"""One module per family: its workload, how to run the PyTorch reference and a bundle on it,
its accuracy metrics and its goals. Importing this package registers them."""

from edgevfm.runtime.registry import Registry

BENCH = Registry("family")

from . import blip, blip2, clip, llava, sam  # noqa: E402,F401
