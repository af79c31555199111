"""Procedural defects, datasets and natural-like pictures for the demo and the tests.

Everything is numpy and deterministic from a seed or a `np.random.Generator`: `texture` (one
defect-free sample of a family, `cmaae_jax/textures.py`), `add_defect` (a defect and the mask
of exactly the changed pixels), `write_mvtec_tree` (a small dataset in MVTec AD layout,
written atomically) and `natural_images` (colourful pictures for the GAAGA natural-image
source).
"""

import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from cmaae_jax import textures
from cmaae_jax.textures import FAMILIES, texture

DEFECT_KINDS = ("scratch", "hole", "spot", "cut", "contamination")  # the demo's test kinds
CRACK = "crack"  # thin (1-2 px), faint, branching: the hardest kind, on its own category
# data.category of the synthetic format -> (texture family, defect kinds of its test split).
# New categories go last: a category's position seeds its images (`_sample_rng`).
CATEGORIES = {
    **{f: (f, DEFECT_KINDS) for f in FAMILIES[:5]},
    "part_crack": ("part", (CRACK,)),
    "cast": ("cast", DEFECT_KINDS),
    "cast_crack": ("cast", (CRACK,)),
    "cast_lit": ("cast_lit", DEFECT_KINDS),
    "cast_lit_crack": ("cast_lit", (CRACK,)),
    "cast_play": ("cast_play", DEFECT_KINDS),
    "cast_play_crack": ("cast_play", (CRACK,)),
}
MASK_TOLERANCE = 12  # a defect mask marks pixels where some channel changed by more (0..255)
MIN_COVERAGE, MAX_COVERAGE = 0.002, 0.05  # share of the image a defect covers


def _stroke_field(size, points, half):
    """min over i of |pixel - points[i]| - half[i]: <= 0 inside a stroke of half-widths `half`."""
    lo = np.maximum(np.floor(points.min(0)) - 8, 0).astype(int)
    hi = np.minimum(np.ceil(points.max(0)) + 8, size).astype(int)
    y, x = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]]
    field, d = np.full((size, size), np.inf), np.full(y.shape, np.inf)
    for idx in np.array_split(np.arange(len(points)), max(1, len(points) // 64)):
        dy, dx = y[..., None] - points[idx, 0], x[..., None] - points[idx, 1]
        d = np.minimum(d, (np.sqrt(dy * dy + dx * dx) - half[idx]).min(-1))
    field[lo[0] : hi[0], lo[1] : hi[1]] = d
    return field


def _stroke(rng, size, length, width, curvature):
    """Soft alpha of a (curved) stroke with tapered ends, `length` x `width` pixels."""
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    centre = rng.uniform(0.2 * size, 0.8 * size, 2)
    p0, p2 = centre - direction * length / 2, centre + direction * length / 2
    p1 = centre + np.array([-direction[1], direction[0]]) * curvature * length
    t = np.linspace(0, 1, int(length * 3) + 2)[:, None]
    points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    half = width / 2 * np.minimum(1.0, 4 * np.minimum(t, 1 - t)[:, 0] + 0.3)
    return np.clip(0.5 - _stroke_field(size, points, half), 0.0, 1.0)


def _walk(rng, start, angle, steps):
    """`steps` points one pixel apart from `start`, the heading wandering from `angle`."""
    heading = angle + np.cumsum(rng.normal(0.0, 0.12, steps))
    return start + np.cumsum(np.stack([np.sin(heading), np.cos(heading)], -1), 0), heading


def _crack(rng, size):
    """Soft alpha of a thin crack: a line wandering both ways from a point of the middle
    (0.3-0.6 x size pixels long, 1-2 px wide), with one thinner branch; ends tapered."""
    n, angle = int(rng.uniform(0.3, 0.6) * size) // 2 * 2, rng.uniform(0, 6.3)
    centre = rng.uniform(0.3 * size, 0.7 * size, 2)
    back, _ = _walk(rng, centre, angle + np.pi, n // 2)
    ahead, heading = _walk(rng, centre, angle, n // 2)
    main = np.concatenate([back[::-1], ahead])
    at, m = int(rng.integers(0, n // 4)), int(rng.uniform(0.3, 0.6) * n)
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.9)
    branch, _ = _walk(rng, ahead[at], heading[at] + turn, m)
    t_main, t_branch = np.linspace(0, 1, n), np.linspace(0, 1, m)
    half = rng.uniform(0.5, 0.9) * np.concatenate(
        [np.minimum(1.0, 3 * np.minimum(t_main, 1 - t_main) + 0.3), 0.7 * (1 - 0.7 * t_branch)]
    )
    field = _stroke_field(size, np.concatenate([main, branch]), half)
    return np.clip(0.5 - field, 0.0, 1.0)


def _paint(img, kind, rng):
    """Returns the float image with one defect painted in (no masking yet)."""
    size = img.shape[0]
    out = img.astype(np.float64)
    mean = out.reshape(-1, 3).mean(0)
    if kind == CRACK:  # darker than its surroundings by 35-60 grey levels at its core
        return out - rng.uniform(35, 60) * _crack(rng, size)[..., None]
    if kind == "scratch":
        width = max(2.0, size / 120)
        alpha = _stroke(rng, size, rng.uniform(0.25, 0.5) * size, width, rng.uniform(0.1, 0.3))
        colour = np.clip(mean + rng.choice([-1, 1]) * rng.uniform(70, 100), 0, 255)
        return out * (1 - alpha[..., None]) + colour * alpha[..., None]
    if kind == "cut":
        width = max(3.0, rng.uniform(0.012, 0.02) * size)
        alpha = _stroke(rng, size, rng.uniform(0.15, 0.3) * size, width, 0.0)
        return out * (1 - alpha[..., None]) + rng.uniform(10, 30, 3) * alpha[..., None]
    centre = rng.uniform(0.15 * size, 0.85 * size, 2)
    if kind == "hole":
        radius = rng.uniform(0.025, 0.045) * size
        inner = textures.blob(rng, size, centre, radius, wobble=0.05)
        outer = textures.blob(rng, size, centre, radius * 1.35, wobble=0.05)
        out *= 1 - 0.45 * (outer - inner)[..., None]
        return out * (1 - inner[..., None]) + rng.uniform(15, 35) * inner[..., None]
    if kind == "spot":
        radius = rng.uniform(0.05, 0.08) * size
        alpha = textures.blob(rng, size, centre, radius)
        from scipy import ndimage  # here: only these spots need it (~15 MB of host memory)

        alpha = rng.uniform(0.7, 0.9) * ndimage.gaussian_filter(alpha, radius / 5)
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - mean).max() < 100:  # a clearly different colour
            colour = rng.uniform(0, 255, 3)
        return out * (1 - alpha[..., None]) + colour * alpha[..., None]
    if kind == "contamination":
        radius = rng.uniform(0.04, 0.07) * size
        alpha = textures.blob(rng, size, centre, radius, wobble=0.35)
        foreign = natural_images(1, size, int(rng.integers(2**31)))[0].astype(np.float64)
        return out * (1 - alpha[..., None]) + foreign * alpha[..., None]
    raise ValueError(f"unknown defect kind {kind!r}; expected one of {DEFECT_KINDS + (CRACK,)}")


def add_defect(img, kind, rng):
    """Paints a defect of `kind` into a copy of `img` (uint8 [S, S, 3]).

    Returns (defective uint8 [S, S, 3], mask uint8 [S, S] in {0, 1}). Inside the mask some
    channel differs by more than MASK_TOLERANCE; outside, the image is bit-identical to `img`.
    The defect is redrawn until it covers MIN_COVERAGE to MAX_COVERAGE of the image (the last
    draw is kept after 20 tries)."""
    img = np.asarray(img, np.uint8)
    rng = np.random.default_rng(rng)  # a Generator is returned as is
    for _ in range(20):
        painted = np.clip(np.round(_paint(img, kind, rng)), 0, 255).astype(np.uint8)
        diff = np.abs(painted.astype(np.int16) - img.astype(np.int16)).max(-1)
        mask = diff > MASK_TOLERANCE
        if MIN_COVERAGE <= mask.mean() <= MAX_COVERAGE:
            break
    return np.where(mask[..., None], painted, img), mask.astype(np.uint8)


def _sample_rng(seed, category, split, index):
    """The generator of one image of the tree: independent of how many images are written."""
    return np.random.default_rng(
        [seed, list(CATEGORIES).index(category), int(split == "test"), index]
    )


def _save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def _write_tree(tmp, category, num_train, num_test, seed, image_size):
    family, kinds = CATEGORIES[category]
    for i in range(num_train):
        img = texture(family, image_size, _sample_rng(seed, category, "train", i))
        _save_png(tmp / "train" / "good" / f"{i:03d}.png", img)
    counts = dict.fromkeys(kinds + ("good",), 0)
    for i in range(num_test):
        rng = _sample_rng(seed, category, "test", i)
        img = texture(family, image_size, rng)
        kind = kinds[i % len(kinds)] if i < num_test // 2 else "good"
        stem = f"{counts[kind]:03d}"
        counts[kind] += 1
        if kind != "good":
            img, mask = add_defect(img, kind, rng)
            _save_png(tmp / "ground_truth" / kind / f"{stem}_mask.png", mask * 255)
        _save_png(tmp / "test" / kind / f"{stem}.png", img)


def write_mvtec_tree(root, category, num_train, num_test, seed, image_size):
    """Writes a synthetic dataset in MVTec AD layout and returns `<root>/<category>`.

    `train/good/NNN.png`, `test/good/NNN.png`, `test/<kind>/NNN.png`, `ground_truth/<kind>/
    NNN_mask.png` (0 / 255); num_test // 2 test images are defective, the category's kinds in
    turn (`CATEGORIES`). Built in a hidden temporary folder next to it and renamed into place:
    an interrupted write leaves no partial tree. An existing tree is returned as is."""
    if category not in CATEGORIES:
        raise ValueError(
            f"unknown synthetic category {category!r}; expected one of {tuple(CATEGORIES)}"
        )
    root = pathlib.Path(root)
    target = root / category
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{category}.", suffix=".tmp", dir=root))
    try:
        _write_tree(tmp, category, num_train, num_test, seed, image_size)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not just another writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _pattern(rng, size, colour, box):
    """A fill of `box`: solid, stripes, checks or a gradient in `colour` and a second colour."""
    other = rng.uniform(0, 255, 3)
    u, v = textures.coords(size, rng.uniform(0, np.pi), box)
    f, slope = rng.uniform(8, 60), rng.uniform(0.5, 2.0)
    fills = (
        lambda: np.zeros(u.shape),
        lambda: np.sin(2 * np.pi * f * u) > 0,
        lambda: (np.floor(f * u) + np.floor(f * v)) % 2,
        lambda: np.clip(u * slope, 0, 1),
    )
    return textures.colourise(fills[rng.integers(4)]().astype(np.float64), colour, other)


def natural_images(count, size, seed):
    """Returns `count` colourful natural-image-like pictures, uint8 [count, size, size, 3].

    Each is a smooth random colour field with random ellipses, polygons and lines on top (some
    filled with stripes or checks), plus fine noise; deterministic from `seed`.
    """
    out = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        rng = np.random.default_rng([seed, 7919, k])
        field = np.stack([textures.fractal(rng, size, rng.integers(1, 4), 3) for _ in range(3)], -1)
        img = np.clip(rng.uniform(60, 190, 3) + 45 * field, 0, 255)
        for _ in range(rng.integers(6, 16)):
            shape = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(shape)
            c, r, kind = rng.uniform(0, size, 2), rng.uniform(0.05, 0.35) * size, rng.integers(3)
            if kind == 0:
                box = [c[0] - r, c[1] - r * rng.uniform(0.3, 1), c[0] + r, c[1] + r]
                draw.ellipse(box, fill=255)
            elif kind == 1:
                angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 8)))
                pts = c + r * np.stack([np.cos(angles), np.sin(angles)], -1)
                draw.polygon([tuple(p) for p in pts], fill=255)
            else:
                end = c + rng.normal(0, r, 2)
                draw.line([tuple(c), tuple(end)], fill=255, width=int(rng.integers(1, 6)))
            box = shape.getbbox() or (0, 0, 1, 1)  # blend only where the shape is
            alpha = np.asarray(shape.crop(box), np.float64)[..., None] / 255.0
            fill = _pattern(rng, size, rng.uniform(0, 255, 3), box)
            window = img[box[1] : box[3], box[0] : box[2]]
            window[...] = window * (1 - alpha) + fill * alpha
        img += rng.normal(0, rng.uniform(2, 10), img.shape)
        out[k] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out
