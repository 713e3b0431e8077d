"""One module per family; importing this package registers every family's pipeline."""

from . import blip, blip2, clip, llava, sam  # noqa: F401
