"""Per-family calibration data: for each part, the feeds that represent real use.

Each family registers ``calibration_feeds(pipeline, images, samples, captions=(), questions=())``
-> {part: [feeds]}: ``captions`` or ``questions`` (aligned with ``images``) come from a
calibration folder that is a data set (:func:`..calibration.calibration_data`); empty, the family
uses texts of its own."""

from edgevfm.runtime.registry import Registry

CALIBRATION = Registry("family")

from . import blip, blip2, clip, llava, sam  # noqa: E402,F401
