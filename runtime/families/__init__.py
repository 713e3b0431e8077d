"""One module per family; importing this package registers every family's pipeline."""

from . import blip, blip2, blip_caption, blip_retrieval, blip_vqa, clip, llava, sam  # noqa: F401
