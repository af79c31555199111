"""Procedural textures, defects and natural-like pictures for the demo and the tests.

Everything is numpy and deterministic from a seed or a `np.random.Generator`: `texture` (one
defect-free sample of a family; samples vary in phase, orientation and colour but share one
distribution), `add_defect` (a defect and the mask of exactly the changed pixels),
`write_mvtec_tree` (a small dataset in MVTec AD layout, written atomically) and
`natural_images` (colourful pictures for the GAAGA natural-image source).
"""

import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# part and cast: aligned, as in a fixture (cast: the same fixture, a rough surface with pores;
# cast_lit: the cast under light that drifts between photographs; cast_play: in a loose fixture)
FAMILIES = ("wood", "carpet", "tile", "noise", "part", "cast", "cast_lit", "cast_play")
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


def _value_noise(rng, size, cells_y, cells_x):
    """Smooth value noise: a random grid of (cells_y, cells_x) cells, smoothstep-interpolated."""
    grid = rng.standard_normal((cells_y + 2, cells_x + 2))
    ty, tx = ((np.arange(size) + 0.5) * c / size for c in (cells_y, cells_x))
    iy, ix = np.floor(ty).astype(np.int64), np.floor(tx).astype(np.int64)
    fy, fx = ((t - i) ** 2 * (3.0 - 2.0 * (t - i)) for t, i in ((ty, iy), (tx, ix)))
    rows = grid[iy] * (1.0 - fy)[:, None] + grid[iy + 1] * fy[:, None]
    return rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx


def _fractal(rng, size, cells, octaves, aspect=1.0):
    """Sum of value-noise octaves (cell count doubling, amplitude halving); zero mean, unit std."""
    out = np.zeros((size, size))
    for o in range(octaves):
        c = cells * 2**o
        out += 0.5**o * _value_noise(rng, size, max(1, int(c)), max(1, int(c * aspect)))
    return (out - out.mean()) / (out.std() + 1e-8)


def _coords(size, angle, box=None):
    """Pixel coordinates / size, rotated by `angle`, over `box` (x0, y0, x1, y1): (u, v)."""
    x0, y0, x1, y1 = box or (0, 0, size, size)
    y, x = np.mgrid[y0:y1, x0:x1] / size
    return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)


def _colourise(t, dark, light):
    """Maps a [H, W] field t (about [0, 1]) linearly between two RGB colours."""
    return dark + (light - dark) * t[..., None]


def _wood(rng, size):
    u, _ = _coords(size, rng.normal(0.0, 0.06))
    warp = _fractal(rng, size, 2, 3)
    freq, phase = rng.uniform(7.0, 9.0), rng.uniform(0, 2 * np.pi)
    rings = np.sin(2 * np.pi * (freq * u + 0.35 * warp) + phase)
    grain = _fractal(rng, size, 48, 2, aspect=0.08).T  # fibres along the vertical grain
    t = 0.55 + 0.3 * rings + 0.08 * grain + 0.04 * _fractal(rng, size, 3, 2)
    light = np.array([168.0, 118.0, 72.0]) + rng.normal(0, 5, 3)
    return _colourise(t, light * 0.55, light)


def _carpet(rng, size):
    u, v = _coords(size, rng.normal(0.0, 0.03))
    f = rng.uniform(30.0, 34.0)
    pu, pv = f * u + rng.uniform(0, 1), f * v + rng.uniform(0, 1)
    over = (np.floor(pu) + np.floor(pv)) % 2 == 0
    thread = np.where(over, np.sin(np.pi * (pu % 1.0)), np.sin(np.pi * (pv % 1.0)))
    fibres = _fractal(rng, size, size // 6, 1)
    t = 0.45 + 0.3 * thread + 0.12 * fibres + 0.05 * _fractal(rng, size, 4, 2)
    light = np.array([150.0, 135.0, 158.0]) + rng.normal(0, 5, 3)
    return _colourise(t, light * 0.45, light)


def _tile(rng, size):
    period = size / 4 * rng.uniform(0.97, 1.03)
    y, x = (np.mgrid[0:size, 0:size] + rng.uniform(0, period, (2, 1, 1))) / period
    edge = lambda a: np.minimum(a % 1.0, 1.0 - a % 1.0)  # distance to the nearest grout line
    grout = np.clip((0.035 - np.minimum(edge(y), edge(x))) / 0.015, 0.0, 1.0)
    cells = np.floor(y).astype(np.int64) * 101 + np.floor(x).astype(np.int64)
    _, inverse = np.unique(cells, return_inverse=True)
    shade = rng.normal(0, 3, inverse.max() + 1)[inverse.reshape(size, size)]
    base = np.array([192.0, 186.0, 176.0]) + rng.normal(0, 4, 3)
    tile = base + (shade + 7.0 * _fractal(rng, size, size // 8, 2))[..., None]
    grout_colour = np.array([112.0, 106.0, 100.0]) + rng.normal(0, 3, 3)
    return tile * (1.0 - grout[..., None]) + grout_colour * grout[..., None]


def _noise(rng, size):
    t = 0.5 + 0.2 * _fractal(rng, size, 4, 5)
    light = np.array([120.0, 160.0, 150.0]) + rng.normal(0, 5, 3)
    return _colourise(t, light * 0.35, light)


def _edge(signed_distance_px):
    """Anti-aliased inside-ness (1 inside, 0 outside) from a signed distance in pixels."""
    return np.clip(0.5 - signed_distance_px, 0.0, 1.0)


def _fixture(rng, size, play=0.01, tilt=0.0):
    """The fixture's frame: (y, x) in units of the side, shifted by at most `play` of it and
    turned about the centre by at most `tilt` radians, the plate's inside-ness and its
    openings' (two bores and a slot), each [size, size]."""
    dy, dx = rng.uniform(-play, play, 2)
    y, x = np.mgrid[0:size, 0:size] / size
    y, x = y - dy, x - dx
    if tilt:  # drawn only then: the other families' images stay as they were
        turn = rng.uniform(-tilt, tilt)
        cy, cx = y - 0.5, x - 0.5
        y, x = (
            0.5 + cy * np.cos(turn) - cx * np.sin(turn),
            0.5 + cy * np.sin(turn) + cx * np.cos(turn),
        )
    box = lambda cy, cx, hy, hx: np.maximum(np.abs(y - cy) - hy, np.abs(x - cx) - hx) * size
    plate = _edge(box(0.5, 0.5, 0.3, 0.38))
    holes = sum(_edge((np.hypot(y - 0.5, x - cx) - 0.08) * size) for cx in (0.3, 0.7))
    slot = _edge(box(0.74, 0.5, 0.02, 0.15))
    return y, x, plate, np.clip(holes + slot, 0.0, 1.0)


def _part(rng, size):
    """A machined plate held in a fixture: the same plate, two bores and a slot in every image
    (shifted by at most 1% of the side), fine machining marks and surface noise that vary. An
    aligned family: a per-position reference of normal maps is meaningful here."""
    y, x, plate, openings = _fixture(rng, size)
    marks = np.sin(2 * np.pi * (90 * x + 0.4 * _fractal(rng, size, 3, 2)) + rng.uniform(0, 6.3))
    metal = 0.85 + 0.03 * marks + 0.02 * _fractal(rng, size, size // 16, 2)
    ground = 0.5 + 0.02 * _fractal(rng, size, 4, 2)
    t = ground + (metal - ground) * plate * (1.0 - openings)
    light = np.array([206.0, 210.0, 216.0]) + rng.normal(0, 2, 3)
    return _colourise(t, light * 0.0, light)


def _cast(rng, size, play=0.01, tilt=0.0):
    """A cast plate in the part's fixture: a rough grain of 1-8 px (at 256 px) and 10-30 pores
    (dark pits of 1-3 px at random places, 15-35 grey levels deep) that differ in every image:
    normal detail that no model reproduces exactly, as fine and as dark as a thin crack."""
    _, _, plate, openings = _fixture(rng, size, play, tilt)
    scale = size / 256
    pores = np.zeros((size, size))
    for _ in range(int(rng.integers(10, 31))):
        centre = rng.uniform(0.22 * size, 0.78 * size, 2)
        radius = rng.uniform(0.6, 1.5) * scale
        pores = np.maximum(pores, rng.uniform(0.1, 0.22) * _blob(rng, size, centre, radius, 0.1))
    metal = 0.66 + 0.035 * _fractal(rng, size, size // 8, 3) - pores
    ground = 0.45 + 0.02 * _fractal(rng, size, 4, 2)
    t = ground + (metal - ground) * plate * (1.0 - openings)
    light = np.array([172.0, 166.0, 160.0]) + rng.normal(0, 2, 3)
    return _colourise(t, light * 0.0, light)


def _lighting(rng, size):
    """A photograph's illumination, [size, size]: a gain of 0.8-1.2 (exposure) times a linear
    ramp of up to +-15% between two opposite sides, in a random direction (the lamp)."""
    gain, ramp, angle = rng.uniform(0.8, 1.2), rng.uniform(0.0, 0.15), rng.uniform(0, 2 * np.pi)
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    return gain * (1.0 + 2.0 * ramp * (x * np.cos(angle) + y * np.sin(angle)))


def _cast_lit(rng, size):
    """The cast plate under light that drifts between photographs (`_lighting`): aligned,
    but a per-position reference meets brightness that varies by 20% and more."""
    return _cast(rng, size) * _lighting(rng, size)[..., None]


def _cast_play(rng, size):
    """The cast plate in a fixture with play: shifted by up to 3% of the side (the others 1%)
    and turned by up to 2 degrees between photographs."""
    return _cast(rng, size, play=0.03, tilt=np.deg2rad(2.0))


_TEXTURES = {
    "wood": _wood,
    "carpet": _carpet,
    "tile": _tile,
    "noise": _noise,
    "part": _part,
    "cast": _cast,
    "cast_lit": _cast_lit,
    "cast_play": _cast_play,
}


def texture(family, size, rng):
    """Returns a defect-free texture sample of `family` as uint8 [size, size, 3]."""
    if family not in _TEXTURES:
        raise ValueError(f"unknown texture family {family!r}; expected one of {FAMILIES}")
    rng = np.random.default_rng(rng)  # a Generator is returned as is
    img = _TEXTURES[family](rng, size) + rng.normal(0.0, 1.5, (size, size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _blob(rng, size, centre, radius, wobble=0.25):
    """Soft field: 1 inside an irregular blob, falling to 0 over about a pixel."""
    y, x = np.mgrid[0:size, 0:size] - np.asarray(centre)[:, None, None]
    phi = np.arctan2(y, x)
    r = radius * (1.0 + sum(wobble / k * np.cos(k * phi + rng.uniform(0, 6.3)) for k in (2, 3)))
    return np.clip(r - np.hypot(y, x) + 0.5, 0.0, 1.0)


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
        inner = _blob(rng, size, centre, radius, wobble=0.05)
        out *= 1 - 0.45 * (_blob(rng, size, centre, radius * 1.35, wobble=0.05) - inner)[..., None]
        return out * (1 - inner[..., None]) + rng.uniform(15, 35) * inner[..., None]
    if kind == "spot":
        radius = rng.uniform(0.05, 0.08) * size
        alpha = _blob(rng, size, centre, radius)
        alpha = rng.uniform(0.7, 0.9) * ndimage.gaussian_filter(alpha, radius / 5)
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - mean).max() < 100:  # a clearly different colour
            colour = rng.uniform(0, 255, 3)
        return out * (1 - alpha[..., None]) + colour * alpha[..., None]
    if kind == "contamination":
        radius = rng.uniform(0.04, 0.07) * size
        alpha = _blob(rng, size, centre, radius, wobble=0.35)
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
    u, v = _coords(size, rng.uniform(0, np.pi), box)
    f, slope = rng.uniform(8, 60), rng.uniform(0.5, 2.0)
    fills = (
        lambda: np.zeros(u.shape),
        lambda: np.sin(2 * np.pi * f * u) > 0,
        lambda: (np.floor(f * u) + np.floor(f * v)) % 2,
        lambda: np.clip(u * slope, 0, 1),
    )
    return _colourise(fills[rng.integers(4)]().astype(np.float64), colour, other)


def natural_images(count, size, seed):
    """Returns `count` colourful natural-image-like pictures, uint8 [count, size, size, 3].

    Each is a smooth random colour field with random ellipses, polygons and lines on top (some
    filled with stripes or checks), plus fine noise; deterministic from `seed`.
    """
    out = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        rng = np.random.default_rng([seed, 7919, k])
        field = np.stack([_fractal(rng, size, rng.integers(1, 4), 3) for _ in range(3)], -1)
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
