"""How a map scores its image (config `eval.image_score`): image AUROC, predict's verdict and
the exports' sidecar all use it.

`max`: the map's highest pixel (SPEC). `top`: the mean of its highest TOP_SHARE of pixels, at
least one (20 of a 256 x 256 map): a thin defect's many high pixels outrank a normal image's
lone spike (docs/results/aligned30/PLAN.md, plan 8). `top_inner`: `top` over the map with a rim
of `rim` pixels left out on every side. Normal images' highest pixels crowd the image's border
(the window's edge, cut-off texture; RESULTS.md, thirty-fourth session), so a rim can lift the
defects' images above them; its width is chosen from the held-out normal maps alone
(`normal_rim`, docs/results/mt34/PLAN_rim.md), recorded by evaluation (metrics.json
`image_rim`) and read back by predict and the exports. Pixel maps, thresholds and pixel metrics
never change with the image score.
"""

import numpy as np

IMAGE_SCORES = ("max", "top", "top_inner")
TOP_SHARE = 0.0003
INNER = "top_inner"  # the image score whose rim evaluation chooses
# Candidate rim widths, in pixels of a 256-pixel image (scaled with data.image_size).
RIM_BANDS = (1, 2, 3, 4, 6, 8)
# A band qualifies where the normal maps' top pixels lie in it at least this many times as
# often as its share of the area says they would by chance.
RIM_OVERREPRESENTED = 3.0


def check(how: str) -> str:
    """`how` if it is one of IMAGE_SCORES; else a ValueError naming the field."""
    if how not in IMAGE_SCORES:
        raise ValueError(f"eval.image_score must be one of {IMAGE_SCORES}, got {how!r}")
    return how


def inner(map_hxw, rim: int):
    """The map [..., H, W] with `rim` pixels left out on every side (whole where that would
    leave nothing)."""
    h, w = np.shape(map_hxw)[-2:]
    if rim <= 0 or h <= 2 * rim or w <= 2 * rim:
        return map_hxw
    return map_hxw[..., rim : h - rim, rim : w - rim]


def top_count(num_pixels: int) -> int:
    """How many of a map's highest pixels `top` averages: TOP_SHARE of them, at least one."""
    return max(1, round(TOP_SHARE * num_pixels))


def image_scores(maps_NxHxW, how: str = "max", rim: int = 0) -> np.ndarray:
    """The image score [N] of each map [N, H, W] (or of one [H, W]) by `how` (IMAGE_SCORES);
    `rim`: the pixels `top_inner` leaves out on every side (ignored by the others)."""
    check(how)
    maps = np.asarray(maps_NxHxW, np.float32)
    maps = maps[None] if maps.ndim == 2 else maps
    if how == INNER:
        maps = inner(maps, rim)
    flat = maps.reshape(len(maps), -1)
    if how == "max":
        return flat.max(axis=1)
    k = top_count(flat.shape[1])
    return np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(axis=1, dtype=np.float64)


def rim_bands(image_size: int) -> list[int]:
    """RIM_BANDS in pixels of `image_size` images, at least 1, without repeats."""
    return sorted({max(1, round(b * image_size / 256)) for b in RIM_BANDS})


def _side_distance(h: int, w: int) -> np.ndarray:
    """[h, w]: each pixel's distance in pixels to the nearest side (0 on the border)."""
    y = np.minimum(np.arange(h), np.arange(h)[::-1])
    x = np.minimum(np.arange(w), np.arange(w)[::-1])
    return np.minimum(y[:, None], x[None, :])


def band_shares(normal_maps, bands) -> tuple[np.ndarray, np.ndarray]:
    """(s, a) per band width b: the share of the maps' `top` pixels (`top_count` of each map)
    that lie within b pixels of a side, and the share of their area that does; pooled over
    maps of any sizes."""
    top_in, area_in = np.zeros(len(bands)), np.zeros(len(bands))
    tops = area = 0
    for m in normal_maps:
        m = np.asarray(m, np.float32)
        k = top_count(m.size)
        near = _side_distance(*m.shape).ravel()
        top = near[np.argpartition(m.ravel(), m.size - k)[-k:]]
        for i, b in enumerate(bands):
            top_in[i] += np.count_nonzero(top < b)
            area_in[i] += np.count_nonzero(near < b)
        tops, area = tops + k, area + m.size
    return top_in / max(tops, 1), area_in / max(area, 1)


def normal_rim(normal_maps, image_size: int) -> int:
    """The rim `top_inner` leaves out, from normal maps only: the widest of `rim_bands` whose
    share of the maps' top pixels is at least RIM_OVERREPRESENTED times its share of the area;
    0 where none is."""
    bands = rim_bands(image_size)
    s, a = band_shares(normal_maps, bands)
    chosen = [b for b, si, ai in zip(bands, s, a, strict=True) if si >= RIM_OVERREPRESENTED * ai]
    return max(chosen, default=0)
