"""The synthetic images of the sample dataset: shapes (polygons in unit coordinates) drawn on noisy backgrounds.

:mod:`seresnext.sample_data` plans and writes the dataset; this module draws one image.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["ShapeKind", "SHAPE_KINDS", "STYLES", "MAX_CLASSES", "SampleClass", "render_image"]

Polygon = list[tuple[float, float]]


# ----------------------------------------------------------------------------------------------
# Shapes: each kind is polygons to fill and polygons to cut out, in unit coordinates (radius ~1).


def _regular_polygon(vertices: int, radius: float = 1.0, start_deg: float = -90.0,
                     center: tuple[float, float] = (0.0, 0.0)) -> Polygon:
    cx, cy = center
    return [(cx + radius * math.cos(math.radians(start_deg + 360.0 * k / vertices)),
             cy + radius * math.sin(math.radians(start_deg + 360.0 * k / vertices)))
            for k in range(vertices)]


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _star(points: int = 5, inner: float = 0.42) -> Polygon:
    outer = _regular_polygon(points)
    inner_points = _regular_polygon(points, inner, start_deg=-90.0 + 180.0 / points)
    return [p for pair in zip(outer, inner_points) for p in pair]


def _stripes(rng: np.random.Generator, outlined: bool) -> list[Polygon]:
    bars = int(rng.integers(2, 4) if outlined else rng.integers(3, 5))  # with equal gaps between them
    bar_height = 1.6 / (2 * bars - 1)
    return [_rectangle(-0.85, -0.8 + 2 * k * bar_height, 0.85, -0.8 + (2 * k + 1) * bar_height)
            for k in range(bars)]


def _checkerboard(rng: np.random.Generator, outlined: bool) -> list[Polygon]:
    cells = 3 if outlined else int(rng.integers(3, 5))
    side = 1.6 / cells
    return [_rectangle(-0.8 + i * side, -0.8 + j * side, -0.8 + (i + 1) * side, -0.8 + (j + 1) * side)
            for i in range(cells) for j in range(cells) if (i + j) % 2 == 0]


_CIRCLE = _regular_polygon(64)
_ARROW = [(-1.0, -0.22), (0.15, -0.22), (0.15, -0.62), (1.0, 0.0), (0.15, 0.62), (0.15, 0.22), (-1.0, 0.22)]
_CROSS = [(-0.3, -1.0), (0.3, -1.0), (0.3, -0.3), (1.0, -0.3), (1.0, 0.3), (0.3, 0.3), (0.3, 1.0),
          (-0.3, 1.0), (-0.3, 0.3), (-1.0, 0.3), (-1.0, -0.3), (-0.3, -0.3)]


@dataclass(frozen=True)
class ShapeKind:
    """One base shape: its polygons to fill and to cut out (given the RNG and whether it is outlined), how far
    it may rotate (degrees, either way) and its outline's width as a fraction of its radius."""

    name: str
    max_rotation: float
    polygons: Callable[[np.random.Generator, bool], tuple[list[Polygon], list[Polygon]]]
    outline_width: float = 0.14


# Order matters: the first num_classes kinds (filled, then outlined) become the classes.
SHAPE_KINDS: tuple[ShapeKind, ...] = (
    ShapeKind("circle", 180.0, lambda rng, outlined: ([_CIRCLE], [])),
    ShapeKind("square", 20.0, lambda rng, outlined: ([_rectangle(-0.8, -0.8, 0.8, 0.8)], [])),
    ShapeKind("triangle", 180.0, lambda rng, outlined: ([_regular_polygon(3)], [])),
    ShapeKind("star", 180.0, lambda rng, outlined: ([_star()], [])),
    ShapeKind("cross", 20.0, lambda rng, outlined: ([_CROSS], [])),
    ShapeKind("ring", 180.0, lambda rng, outlined: ([_CIRCLE], [_regular_polygon(64, 0.55)])),
    ShapeKind("diamond", 20.0, lambda rng, outlined: ([[(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)]], [])),
    ShapeKind("crescent", 180.0, lambda rng, outlined: ([_CIRCLE], [_regular_polygon(64, 0.85, center=(0.5, 0.0))])),
    ShapeKind("arrow", 180.0, lambda rng, outlined: ([_ARROW], [])),
    ShapeKind("horizontal stripes", 15.0, lambda rng, outlined: (_stripes(rng, outlined), []), 0.1),
    ShapeKind("checkerboard", 15.0, lambda rng, outlined: (_checkerboard(rng, outlined), []), 0.1),
    ShapeKind("hexagon", 180.0, lambda rng, outlined: ([_regular_polygon(6)], [])),
)
STYLES = ("filled", "outline")
MAX_CLASSES = len(SHAPE_KINDS) * len(STYLES)


@dataclass(frozen=True)
class SampleClass:
    """One class of the sample dataset: its WNID, its human name and how its images are drawn."""

    index: int
    wnid: str
    shape_index: int
    outlined: bool

    @property
    def name(self) -> str:
        shape_name = SHAPE_KINDS[self.shape_index].name
        return f"{shape_name} outline" if self.outlined else shape_name



# ----------------------------------------------------------------------------------------------
# Drawing one image.


def _luminance(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour whose luminance is far from the background's, so even grayscale copies show the shape."""
    for _ in range(64):
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        if abs(_luminance(colour) - _luminance(background)) >= 90:
            return colour
    return np.full(3, 0.0 if _luminance(background) > 127.5 else 255.0, dtype=np.float32)


def _image_size(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[int, int]:
    """Width and height within [min_size, max_size], mostly at common photo aspect ratios."""
    if rng.random() < 0.6:
        aspect = float(rng.choice([4 / 3, 3 / 4, 1.0, 3 / 2, 2 / 3, 5 / 4, 4 / 5]))
    else:
        aspect = math.exp(rng.uniform(math.log(0.6), math.log(1 / 0.6)))
    long_side = int(rng.integers(min_size, max_size + 1))
    if aspect >= 1:
        width, height = long_side, round(long_side / aspect)
    else:
        width, height = round(long_side * aspect), long_side
    return int(np.clip(width, min_size, max_size)), int(np.clip(height, min_size, max_size))


def _background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A solid, gradient or noise-texture background (float32 HxWx3) and its base colour."""
    base = rng.integers(0, 256, size=3).astype(np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:
        image = np.broadcast_to(base, (height, width, 3)).copy()
    elif kind == 1:
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(width, height)
        ramp -= ramp.mean()
        delta = rng.uniform(-70, 70, size=3).astype(np.float32)
        image = base + ramp[..., None] * delta
    else:
        cells = int(rng.integers(3, 17))
        coarse = rng.uniform(-35, 35, size=(cells, cells, 3)).astype(np.float32)
        texture = np.stack([np.asarray(Image.fromarray(coarse[..., c])
                                       .resize((width, height), Image.BICUBIC)) for c in range(3)], axis=-1)
        image = base + texture
    return image, base


def _shape_mask(rng: np.random.Generator, sample_class: SampleClass, size: tuple[int, int],
                center: tuple[float, float], radius: float) -> Image.Image:
    """A binary mask (mode L) of one randomly scaled, stretched and rotated instance of the class's shape."""
    kind = SHAPE_KINDS[sample_class.shape_index]
    fill, cut = kind.polygons(rng, sample_class.outlined)
    angle = math.radians(rng.uniform(-kind.max_rotation, kind.max_rotation))
    stretch_x, stretch_y = rng.uniform(0.85, 1.15, size=2)
    cos_a, sin_a = math.cos(angle), math.sin(angle)

    def place(polygon: Polygon) -> list[tuple[float, float]]:
        points = []
        for x, y in polygon:
            x, y = x * stretch_x * radius, y * stretch_y * radius
            points.append((center[0] + x * cos_a - y * sin_a, center[1] + x * sin_a + y * cos_a))
        return points

    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for polygon in fill:
        draw.polygon(place(polygon), fill=255)
    for polygon in cut:
        draw.polygon(place(polygon), fill=0)
    if sample_class.outlined:
        mask = _outline(mask, width=max(2, round(kind.outline_width * radius)))
    return mask


def _outline(mask: Image.Image, width: int) -> Image.Image:
    """The band of ``width`` pixels inside the mask's edge."""
    bbox = mask.getbbox()
    if bbox is None:
        return mask
    left, top = max(0, bbox[0] - 1), max(0, bbox[1] - 1)
    region = mask.crop((left, top, min(mask.width, bbox[2] + 1), min(mask.height, bbox[3] + 1)))
    eroded = region
    for _ in range(width):
        eroded = eroded.filter(ImageFilter.MinFilter(3))
    band = np.asarray(region) & ~np.asarray(eroded)
    outlined = Image.new("L", mask.size, 0)
    outlined.paste(Image.fromarray(band), (left, top))
    return outlined


def _instance_placements(rng: np.random.Generator, width: int, height: int) -> list[tuple[tuple[float, float], float]]:
    """1 to 4 (center, radius) pairs on a jittered grid, so the shapes cover much of the image and most
    random crops hold a piece of one; each shape is about 35-70% of the short side across."""
    count = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.3, 0.2, 0.3]))
    landscape = width >= height
    long_side, short_side = max(width, height), min(width, height)
    if count == 4 or (count == 3 and long_side < 1.3 * short_side):
        along_long, along_short = 2, 2
    else:
        along_long, along_short = count, 1
    cell_long, cell_short = long_side / along_long, short_side / along_short
    cells = [(i, j) for i in range(along_long) for j in range(along_short)]
    chosen_cells = [cells[int(k)] for k in rng.permutation(len(cells))[:count]]
    max_diameter = 0.7 * short_side if count == 1 else min(cell_long, cell_short)
    placements = []
    for i, j in chosen_cells:
        diameter = rng.uniform(0.8, 0.98) * max_diameter
        slack_long, slack_short = max(0.0, cell_long - diameter) / 2, max(0.0, cell_short - diameter) / 2
        along = (i + 0.5) * cell_long + rng.uniform(-slack_long - 0.1 * diameter, slack_long + 0.1 * diameter)
        across = (j + 0.5) * cell_short + rng.uniform(-slack_short - 0.1 * diameter, slack_short + 0.1 * diameter)
        center = (along, across) if landscape else (across, along)
        placements.append((center, diameter / 2))
    return placements


def render_image(entropy: Sequence[int], sample_class: SampleClass, min_size: int, max_size: int) -> Image.Image:
    """Draw one RGB image of ``sample_class``; the same entropy always gives the same pixels."""
    rng = np.random.default_rng(list(entropy))
    width, height = _image_size(rng, min_size, max_size)
    image, base_colour = _background(rng, width, height)
    for center, radius in _instance_placements(rng, width, height):
        mask = np.asarray(_shape_mask(rng, sample_class, (width, height), center, radius)) > 127
        image[mask] = _contrasting_colour(rng, base_colour)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(2, 10))
    picture = Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    return picture
