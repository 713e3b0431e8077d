"""Calibration data: real photos, either the ones scikit-image ships (offline, no download) or a
folder the user gives; a folder that is an annotated data set (COCO captions or VQA, as ``bench
--data`` reads and ``edgevfm scenes`` writes) gives its captions or questions too, so the text
parts calibrate on the words the model will see (:func:`calibration_data`)."""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Calibration:
    """Images, and where the folder is a data set, each image's caption or question (aligned with
    ``images``; empty: the family's own texts)."""

    images: list
    captions: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)


def calibration_data(folder: str | Path | None = None, samples: int = 32) -> Calibration:
    """:func:`calibration_images`, or ``samples`` items of the data set in ``folder`` when it holds
    annotation JSON: each image with its first caption, or each question with its image."""
    if samples < 1:
        raise CalibrationError(f"samples must be at least 1, found {samples}: calibration needs data")
    found = _data_set(folder, samples)
    if found is None:
        return Calibration(calibration_images(folder, samples))
    kind, items = found
    images = [item.image for item in items]
    if kind == "vqa":
        return Calibration(images, questions=[item.question for item in items])
    return Calibration(images, captions=[item.truths[0] for item in items])


def calibration_texts(folder: str | Path | None) -> str:
    """What the text parts calibrate on, for the manifest: the data set's captions or questions, or
    the family's own texts."""
    found = _data_set(folder, 1)
    if found is None:
        return "the family's own"
    return "the data set's questions" if found[0] == "vqa" else "the data set's captions"


def _data_set(folder, limit: int):
    """(kind, items) of the data set in ``folder``; None for no folder or one without JSON files."""
    if folder is None or not any(Path(folder).glob("*.json")):
        return None
    from .annotations import read_annotations

    try:
        return read_annotations(folder, limit=limit)
    except ValueError as exc:
        raise CalibrationError(f"calibration folder {str(folder)!r} holds JSON files but is not a data set "
                               f"calibration can read: {exc}. Pass a folder of images, or a data set as edgevfm "
                               "scenes writes") from None
