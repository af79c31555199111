"""The options of the image-to-map path (config `score`): their lists, their checks, and how
`score.method=auto` resolves. `scoring` computes the maps; evaluation, alignment, the
references and the config checks need only these names, so they live apart from the compute.
"""

from cmaae_jax import map_levels, pyramid
from cmaae_jax.model import PATCH

# Receptive-field areas of encoder layers 1..3 (4x4, 8x8, 14x14 input pixels).
RF_AREAS = {1: 16, 2: 64, 3: 196}
# score.method; msfr_pixel: the mean of the MSFR and pixel maps, each over its image's median
# (thin defects on aligned parts: RESULTS.md, twenty-fifth session)
METHODS = ("msfr", "pixel", "segment", "msfr_pixel")
# score.method=auto: ALIGNED_METHOD where a per-position reference is applied (score.reference;
# its `auto` applies one to images it finds aligned), msfr elsewhere. Evaluation resolves it
# and records the method used (RESULTS.md, twenty-sixth session).
AUTO = "auto"
ALIGNED_METHOD = "msfr_pixel"
# msfr_pixel's parts, in the order `anomaly_maps(components=True)` stacks them on a last axis:
# evaluation z-scores each by its own per-position reference, then weights them
# (`reference.PART_WEIGHTS`; RESULTS.md, thirtieth and thirty-first sessions).
COMPONENTS = ("msfr", "pixel")
# `raw_parts` hands them out before each is divided by its image's median (`map_levels.
# over_median_on_host` divides them on the host; the raw MSFR part is score.method=msfr's map,
# so one pass serves the alignment decision and the parts).
# config score.flip: `horizontal` averages each map with the mirrored image's map, mirrored
# back (a test-time augmentation; twice the scoring work).
FLIPS = ("none", "horizontal")
# Window strides: divisors of the patch size down to 8. The model runs on ((H-64)/s + 1) x
# ((W-64)/s + 1) windows per image: a 512x512 image has 64 at 64, 225 at 32, 841 at 16.
STRIDES = tuple(s for s in range(8, PATCH + 1) if PATCH % s == 0)


def check_scales(scales) -> tuple[int, ...]:
    scales = tuple(scales)
    if not scales or len(set(scales)) != len(scales) or not set(scales) <= set(RF_AREAS):
        raise ValueError(
            f"score.scales must be distinct encoder layers among {tuple(RF_AREAS)}, got {scales}"
        )
    return tuple(int(s) for s in scales)


def check_options(
    method: str,
    normalize: str = "none",
    stride: int = PATCH,
    flip: str = "none",
    levels=(1,),
    components: bool = False,
    raw_parts: bool = False,
):
    if method not in METHODS:
        raise ValueError(f"score.method must be one of {METHODS}, got {method!r}")
    if components and not has_parts(method, levels, normalize):
        raise ValueError(
            "map components are msfr_pixel's, at one level (score.pyramid=(1,)) and "
            f"score.normalize=none; got {method!r}, {tuple(levels)}, {normalize!r}"
        )
    if raw_parts and not components:
        raise ValueError("raw parts are msfr_pixel's components before their medians")
    map_levels.check_normalize(normalize)
    if flip not in FLIPS:
        raise ValueError(f"score.flip must be one of {FLIPS}, got {flip!r}")
    check_stride(stride)
    pyramid.check_pyramid(levels)


def resolve_method(setting: str, aligned: bool) -> str:
    """The map method of `score.method=setting`: `auto` resolved (ALIGNED_METHOD for images a
    per-position reference is applied to, msfr otherwise); any other setting as it is."""
    if setting != AUTO:
        return setting
    return ALIGNED_METHOD if aligned else "msfr"


def referred_by_parts(method: str, score_config) -> bool:
    """Whether `method`'s maps under `score_config` get a per-position reference of each of
    their parts (`COMPONENTS`): msfr_pixel at one level, without `normalize`; other settings
    refer the averaged map."""
    levels = score_config.get("pyramid", (1,))
    return has_parts(method, levels, score_config.get("normalize", "none"))


def has_parts(method: str, levels, normalize: str) -> bool:
    """Whether maps of these options can come as `COMPONENTS` (`anomaly_maps`)."""
    return method == "msfr_pixel" and tuple(levels) == (1,) and normalize == "none"


def map_options(score_config) -> dict:
    """The image-to-map options of a config's `score` section, as keyword arguments of
    `anomaly_maps` and `make_map_fn` (absent fields: their defaults before they existed;
    `auto` before evaluation resolved it: msfr)."""
    return dict(
        method=resolve_method(score_config.method, aligned=False),
        scales=tuple(score_config.scales),
        normalize=score_config.get("normalize", "none"),
        stride=score_config.get("stride", PATCH),
        flip=score_config.get("flip", "none"),
        levels=tuple(score_config.get("pyramid", (1,))),
    )


def check_stride(stride: int):
    if not isinstance(stride, int) or stride not in STRIDES:
        raise ValueError(f"score.stride must be one of {STRIDES}, got {stride!r}")
