"""Procedural defect-free textures for the demo and the tests: one family a function.

`texture(family, size, rng)` is one sample of a family (`FAMILIES`); samples vary in phase,
orientation and colour but share one distribution. `wood`, `carpet`, `tile` and `noise` are
unaligned textures; `part` and `cast` are aligned (a plate held in a fixture), `cast_lit` and
`cast_play` the cast with the nuisances of real photographs (light that drifts, a loose
fixture). Everything is numpy and deterministic from a `np.random.Generator`. The helpers
`fractal`, `coords`, `colourise` and `blob` also draw `synthetic`'s defects and pictures.
"""

import numpy as np

# part and cast: aligned, as in a fixture (cast: the same fixture, a rough surface with pores;
# cast_lit: the cast under light that drifts between photographs; cast_play: in a loose fixture)
FAMILIES = ("wood", "carpet", "tile", "noise", "part", "cast", "cast_lit", "cast_play")


def _value_noise(rng, size, cells_y, cells_x):
    """Smooth value noise: a random grid of (cells_y, cells_x) cells, smoothstep-interpolated."""
    grid = rng.standard_normal((cells_y + 2, cells_x + 2))
    ty, tx = ((np.arange(size) + 0.5) * c / size for c in (cells_y, cells_x))
    iy, ix = np.floor(ty).astype(np.int64), np.floor(tx).astype(np.int64)
    fy, fx = ((t - i) ** 2 * (3.0 - 2.0 * (t - i)) for t, i in ((ty, iy), (tx, ix)))
    rows = grid[iy] * (1.0 - fy)[:, None] + grid[iy + 1] * fy[:, None]
    return rows[:, ix] * (1.0 - fx) + rows[:, ix + 1] * fx


def fractal(rng, size, cells, octaves, aspect=1.0):
    """Sum of value-noise octaves (cell count doubling, amplitude halving); zero mean, unit std."""
    out = np.zeros((size, size))
    for o in range(octaves):
        c = cells * 2**o
        out += 0.5**o * _value_noise(rng, size, max(1, int(c)), max(1, int(c * aspect)))
    return (out - out.mean()) / (out.std() + 1e-8)


def coords(size, angle, box=None):
    """Pixel coordinates / size, rotated by `angle`, over `box` (x0, y0, x1, y1): (u, v)."""
    x0, y0, x1, y1 = box or (0, 0, size, size)
    y, x = np.mgrid[y0:y1, x0:x1] / size
    return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)


def colourise(t, dark, light):
    """Maps a [H, W] field t (about [0, 1]) linearly between two RGB colours."""
    return dark + (light - dark) * t[..., None]


def _wood(rng, size):
    u, _ = coords(size, rng.normal(0.0, 0.06))
    warp = fractal(rng, size, 2, 3)
    freq, phase = rng.uniform(7.0, 9.0), rng.uniform(0, 2 * np.pi)
    rings = np.sin(2 * np.pi * (freq * u + 0.35 * warp) + phase)
    grain = fractal(rng, size, 48, 2, aspect=0.08).T  # fibres along the vertical grain
    t = 0.55 + 0.3 * rings + 0.08 * grain + 0.04 * fractal(rng, size, 3, 2)
    light = np.array([168.0, 118.0, 72.0]) + rng.normal(0, 5, 3)
    return colourise(t, light * 0.55, light)


def _carpet(rng, size):
    u, v = coords(size, rng.normal(0.0, 0.03))
    f = rng.uniform(30.0, 34.0)
    pu, pv = f * u + rng.uniform(0, 1), f * v + rng.uniform(0, 1)
    over = (np.floor(pu) + np.floor(pv)) % 2 == 0
    thread = np.where(over, np.sin(np.pi * (pu % 1.0)), np.sin(np.pi * (pv % 1.0)))
    fibres = fractal(rng, size, size // 6, 1)
    t = 0.45 + 0.3 * thread + 0.12 * fibres + 0.05 * fractal(rng, size, 4, 2)
    light = np.array([150.0, 135.0, 158.0]) + rng.normal(0, 5, 3)
    return colourise(t, light * 0.45, light)


def _tile(rng, size):
    period = size / 4 * rng.uniform(0.97, 1.03)
    y, x = (np.mgrid[0:size, 0:size] + rng.uniform(0, period, (2, 1, 1))) / period
    edge = lambda a: np.minimum(a % 1.0, 1.0 - a % 1.0)  # distance to the nearest grout line
    grout = np.clip((0.035 - np.minimum(edge(y), edge(x))) / 0.015, 0.0, 1.0)
    cells = np.floor(y).astype(np.int64) * 101 + np.floor(x).astype(np.int64)
    _, inverse = np.unique(cells, return_inverse=True)
    shade = rng.normal(0, 3, inverse.max() + 1)[inverse.reshape(size, size)]
    base = np.array([192.0, 186.0, 176.0]) + rng.normal(0, 4, 3)
    tile = base + (shade + 7.0 * fractal(rng, size, size // 8, 2))[..., None]
    grout_colour = np.array([112.0, 106.0, 100.0]) + rng.normal(0, 3, 3)
    return tile * (1.0 - grout[..., None]) + grout_colour * grout[..., None]


def _noise(rng, size):
    t = 0.5 + 0.2 * fractal(rng, size, 4, 5)
    light = np.array([120.0, 160.0, 150.0]) + rng.normal(0, 5, 3)
    return colourise(t, light * 0.35, light)


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
    marks = np.sin(2 * np.pi * (90 * x + 0.4 * fractal(rng, size, 3, 2)) + rng.uniform(0, 6.3))
    metal = 0.85 + 0.03 * marks + 0.02 * fractal(rng, size, size // 16, 2)
    ground = 0.5 + 0.02 * fractal(rng, size, 4, 2)
    t = ground + (metal - ground) * plate * (1.0 - openings)
    light = np.array([206.0, 210.0, 216.0]) + rng.normal(0, 2, 3)
    return colourise(t, light * 0.0, light)


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
        pores = np.maximum(pores, rng.uniform(0.1, 0.22) * blob(rng, size, centre, radius, 0.1))
    metal = 0.66 + 0.035 * fractal(rng, size, size // 8, 3) - pores
    ground = 0.45 + 0.02 * fractal(rng, size, 4, 2)
    t = ground + (metal - ground) * plate * (1.0 - openings)
    light = np.array([172.0, 166.0, 160.0]) + rng.normal(0, 2, 3)
    return colourise(t, light * 0.0, light)


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


def blob(rng, size, centre, radius, wobble=0.25):
    """Soft field: 1 inside an irregular blob, falling to 0 over about a pixel."""
    y, x = np.mgrid[0:size, 0:size] - np.asarray(centre)[:, None, None]
    phi = np.arctan2(y, x)
    r = radius * (1.0 + sum(wobble / k * np.cos(k * phi + rng.uniform(0, 6.3)) for k in (2, 3)))
    return np.clip(r - np.hypot(y, x) + 0.5, 0.0, 1.0)
