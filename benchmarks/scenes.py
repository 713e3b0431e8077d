"""Generated scenes with exact ground truth: the data the trained presets learn from and are judged on.

A scene is a few shapes (:data:`SHAPES`) in named colours (:data:`COLOURS`) and two sizes, drawn
one over the other on a textured, gradient or photo background (scikit-image's photos), under a
random light and sensor noise. Everything a task needs is derived from how it was drawn:

- ``masks``: one boolean (H, W) mask per object, the pixels where that object is on top
  (pixel-exact: shapes are rasterised without anti-aliasing, and every object keeps at least
  :data:`MIN_VISIBLE` of its area visible);
- ``captions``: reference sentences ("a small red circle left of a large blue square"), the first
  the canonical one, objects named left to right;
- ``questions``: (question, answer, kind) triples on colour, shape, count, yes/no and relative
  position, each answer a single word;
- ``label``: the shape of the largest object, the zero-shot class.

:func:`scene` is a pure function of ``(seed, index)``: the same pixels in every process and on
every machine (numpy's PCG64 streams and integer drawing only). Splits are seeds: training uses
:data:`TRAIN_SEED`, the benchmarks :data:`HELD_OUT_SEED`, which no training script reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (240, 210, 40),
           "purple": (150, 60, 200), "cyan": (40, 200, 215)}
SIZES = {"small": (0.09, 0.12), "large": (0.17, 0.22)}  # radius as a share of the canvas side
NUMBERS = ("zero", "one", "two", "three", "four")
SIZE = 128  # the canvas side in pixels
MIN_VISIBLE = 0.6
TRAIN_SEED, HELD_OUT_SEED = 1, 2024


@dataclass(frozen=True)
class Shape:
    """One drawn object: centre (x, y) and radius in pixels, rotation in radians."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float
    angle: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """A rendered scene: ``image`` HWC uint8 RGB; ``objects`` in drawing order (later on top);
    ``masks`` (objects, H, W) bool, visible pixels of each."""

    image: np.ndarray
    objects: list[Shape]
    masks: np.ndarray
    captions: list[str] = field(default_factory=list)
    questions: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return max(self.objects, key=lambda o: o.radius).shape


def relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b``: "left of", "right of", "above" or "below" (the axis of
    the larger offset; image y grows downwards)."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _clear(a: Shape, b: Shape) -> bool:
    """The relation of two objects is unambiguous: one axis' offset is 1.5x the other's and at
    least half the smaller radius."""
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    return max(dx, dy) >= 1.5 * min(dx, dy) and max(dx, dy) >= 0.5 * min(a.radius, b.radius)


# -- drawing ----------------------------------------------------------------------------------
def _polygon(shape: str, radius: float, angle: float) -> np.ndarray:
    """Vertices (n, 2) around (0, 0) of a polygon shape."""
    if shape == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        r = np.full(4, radius)
    elif shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        r = np.full(3, radius * 1.1)
    elif shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius * 1.1, radius * 0.45)
    else:  # cross: a plus sign of arms a third of the span wide
        w = radius / 3
        pts = np.array([(-w, -radius), (w, -radius), (w, -w), (radius, -w), (radius, w), (w, w), (w, radius),
                        (-w, radius), (-w, w), (-radius, w), (-radius, -w), (-w, -w)])
        c, s = np.cos(angle), np.sin(angle)
        return pts @ np.array([[c, s], [-s, c]])
    t = t + angle
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def shape_mask(obj: Shape, size: int) -> np.ndarray:
    """(size, size) bool: the pixels whose centre lies inside ``obj``."""
    from skimage.draw import polygon

    if obj.shape in ("circle", "ring"):
        yy, xx = np.mgrid[:size, :size]
        d2 = (xx + 0.5 - obj.x) ** 2 + (yy + 0.5 - obj.y) ** 2
        inside = d2 <= obj.radius ** 2
        return inside & (d2 >= (0.55 * obj.radius) ** 2) if obj.shape == "ring" else inside
    pts = _polygon(obj.shape, obj.radius, obj.angle)
    mask = np.zeros((size, size), bool)
    rows, cols = polygon(pts[:, 1] + obj.y - 0.5, pts[:, 0] + obj.x - 0.5, (size, size))
    mask[rows, cols] = True
    return mask


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from edgevfm.quantize.calibration import skimage_photos

    return tuple(p if p.ndim == 3 else np.repeat(p[..., None], 3, 2) for p in
                 (p[..., :3] for p in skimage_photos()))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float in [0, 255]: a gradient, stripes, a checkerboard, or a photo crop,
    muted towards grey so that the shapes stay the most saturated things in the picture."""
    from PIL import Image

    kind = int(rng.integers(4))
    yy, xx = np.mgrid[:size, :size] / size
    a, b = rng.integers(40, 216, 3), rng.integers(40, 216, 3)
    if kind == 0:
        t = np.cos(rng.uniform(0, 2 * np.pi)) * xx + np.sin(rng.uniform(0, 2 * np.pi)) * yy
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
    elif kind == 1:
        t = (np.sin(2 * np.pi * rng.uniform(3, 9) * (xx * np.cos(rng.uniform(0, np.pi)) + yy * np.sin(rng.uniform(0, np.pi)))) > 0) * 1.0
    elif kind == 2:
        cells = int(rng.integers(4, 12))
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 1.0
    else:
        photo = _photos()[int(rng.integers(len(_photos())))]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        grey = np.full((size, size, 3), 128.0)
        return 0.5 * np.asarray(crop, np.float64) + 0.5 * grey
    back = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    return 0.55 * back + 0.45 * 128.0


def _place(rng: np.random.Generator, count: int, size: int) -> list[Shape] | None:
    objects: list[Shape] = []
    for _ in range(count):
        kind = "small" if rng.random() < 0.5 else "large"
        radius = rng.uniform(*SIZES[kind]) * size
        margin = radius * 1.1 + 1
        objects.append(Shape(SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))],
                             kind, rng.uniform(margin, size - margin), rng.uniform(margin, size - margin), radius,
                             rng.uniform(-0.35, 0.35)))
    names = [o.name for o in objects]
    if len(set(names)) < len(names):
        return None  # two objects of one colour and shape: questions about "the red circle" would be ambiguous
    if any(not _clear(a, b) for i, a in enumerate(objects) for b in objects[i + 1:]):
        return None
    return objects


def scene(seed: int, index: int, objects: tuple[int, int] = (1, 3), size: int = SIZE) -> Scene:
    """Scene ``index`` of split ``seed`` with ``objects[0]``..``objects[1]`` shapes."""
    rng = np.random.default_rng([seed, index])
    count = int(rng.integers(objects[0], objects[1] + 1))
    while True:
        placed = _place(rng, count, size)
        if placed is None:
            continue
        full = [shape_mask(o, size) for o in placed]
        visible, covered = [], np.zeros((size, size), bool)
        for mask in reversed(full):  # the last drawn is on top
            visible.append(mask & ~covered)
            covered |= mask
        visible.reverse()
        if all(v.sum() >= MIN_VISIBLE * max(f.sum(), 1) and f.any() for v, f in zip(visible, full)):
            break
    image = _background(rng, size)
    for obj, mask in zip(placed, visible):
        colour = np.array(COLOURS[obj.colour], np.float64) + rng.uniform(-18, 18, 3)
        image[mask] = colour
    yy, xx = np.mgrid[:size, :size] / size
    light = rng.uniform(0.7, 1.15) * (1 + rng.uniform(-0.2, 0.2) * (xx - 0.5) + rng.uniform(-0.2, 0.2) * (yy - 0.5))
    image = image * light[..., None] + rng.normal(0, rng.uniform(2, 9), image.shape)
    out = Scene(np.clip(np.rint(image), 0, 255).astype(np.uint8), placed, np.stack(visible))
    out.captions = captions(placed)
    out.questions = questions(placed, rng)
    return out


# -- texts -------------------------------------------------------------------------------------
def _a(obj: Shape, with_size: bool = True) -> str:
    return f"a {obj.size} {obj.name}" if with_size else f"a {obj.name}"


def captions(objects: list[Shape]) -> list[str]:
    """Reference captions, the canonical one first: objects named left to right."""
    order = sorted(objects, key=lambda o: o.x)
    if len(order) == 1:
        (o,) = order
        return [_a(o), f"a {o.name}", f"a picture of {_a(o)}", f"a photo of a {o.shape}", f"{_a(o)} on a background"]
    if len(order) == 2:
        a, b = order
        return [f"{_a(a)} {relation(a, b)} {_a(b)}", f"{_a(b)} {relation(b, a)} {_a(a)}",
                f"{_a(a, False)} {relation(a, b)} {_a(b, False)}", f"{_a(a)} and {_a(b)}",
                f"two shapes: {_a(a)} and {_a(b)}"]
    names = [_a(o) for o in order]
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    short = ", ".join(_a(o, False) for o in order[:-1]) + " and " + _a(order[-1], False)
    return [listed, short, f"{NUMBERS[len(order)]} shapes: {listed}", f"from left to right {listed}",
            f"{NUMBERS[len(order)]} shapes: {short}"]


def questions(objects: list[Shape], rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(question, one-word answer, kind) on colour, shape, count, presence and position."""
    out = [("how many shapes are there?", NUMBERS[len(objects)], "count")]
    shapes = [o.shape for o in objects]
    colours = [o.colour for o in objects]
    for o in objects:
        if shapes.count(o.shape) == 1:
            out.append((f"what colour is the {o.shape}?", o.colour, "colour"))
        if colours.count(o.colour) == 1:
            out.append((f"what shape is the {o.colour} one?", o.shape, "shape"))
    present = objects[int(rng.integers(len(objects)))]
    absent_shape = SHAPES[int(rng.integers(len(SHAPES)))]
    absent_colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    out.append((f"is there a {present.name}?", "yes", "yes/no"))
    if f"{absent_colour} {absent_shape}" not in {o.name for o in objects}:
        out.append((f"is there a {absent_colour} {absent_shape}?", "no", "yes/no"))
    if len(objects) >= 2:
        a, b = objects[0], objects[1]
        if shapes.count(a.shape) == 1 and shapes.count(b.shape) == 1:
            rel = relation(a, b)
            out.append((f"where is the {a.shape} relative to the {b.shape}?", rel.split()[0], "position"))
            ask = ("left of", "right of", "above", "below")[int(rng.integers(4))]
            out.append((f"is the {a.shape} {ask} the {b.shape}?", "yes" if ask == rel else "no", "yes/no"))
    return out


def scenes(seed: int, count: int, objects: tuple[int, int] = (1, 3), size: int = SIZE, start: int = 0) -> list[Scene]:
    return [scene(seed, i, objects, size) for i in range(start, start + count)]


def vocabulary() -> list[str]:
    """Every sentence form the scenes say, for a tokenizer trained on them."""
    words = list(SHAPES) + list(COLOURS) + list(SIZES) + list(NUMBERS)
    lines = ["a small red circle left of a large blue square", "a picture of a large green star on a background",
             "two shapes: a purple ring and a yellow triangle", "three shapes: a cyan cross, a red star and a blue ring",
             "a square right of a circle above a star below a ring", "how many shapes are there? what colour is the",
             "what shape is the one? is there a yes no where is the relative to left right above below",
             "a photo of a " + " a photo of a ".join(words)]
    return lines
