"""Per-family calibration data: for each part, the feeds that represent real use."""

from edgevfm.runtime.registry import Registry

CALIBRATION = Registry("family")

from . import blip, blip2, clip, llava, sam  # noqa: E402,F401
