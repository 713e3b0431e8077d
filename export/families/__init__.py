"""One module per family; importing this package registers every family's export spec."""

from . import blip, blip2, clip, llava, sam  # noqa: F401
