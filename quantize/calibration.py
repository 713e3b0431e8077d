"""Calibration images: real photos, either the ones scikit-image ships (offline, no download) or
a folder the user gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevfm.quantize.errors import CalibrationError
from edgevfm.runtime.image import IMAGE_SUFFIXES, list_images

# scikit-image's bundled photographs (colour first); greyscale ones are converted to RGB by the
# runtime's preprocessing, as the model's processor does.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field",
                  "immunohistochemistry", "colorwheel", "logo", "camera", "horse", "page", "moon",
                  "coins", "text", "brick", "grass", "gravel")


def skimage_photos() -> list[np.ndarray]:
    import skimage.data

    photos = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        photos.append((image * 255).astype(np.uint8) if image.dtype == bool else image)
    return photos


def calibration_images(folder: str | Path | None = None, samples: int = 32) -> list:
    """Up to ``samples`` images: paths from ``folder`` or arrays from scikit-image's photos, each
    also mirrored left-right when more samples are asked for than there are photos."""
    if samples < 1:
        raise CalibrationError(f"samples must be at least 1, found {samples}: calibration needs data")
    if folder is not None:
        if not Path(folder).is_dir():
            raise CalibrationError(f"calibration folder {str(folder)!r} does not exist: pass a folder of images")
        images = list_images(folder)
        if not images:
            raise CalibrationError(
                f"no images in {str(folder)!r} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}): "
                "give a folder of real photos, or leave --calib out to use scikit-image's"
            )
        return images[:samples]
    photos = skimage_photos()
    photos += [np.ascontiguousarray(p[:, ::-1]) for p in photos]
    return photos[:samples]
