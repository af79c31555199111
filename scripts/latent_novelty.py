"""How far each window's latent code lies from normal codes, as a map; measured without retraining.

    python scripts/latent_novelty.py runs/study512b/varied/seed6 /tmp/maps/s6_lat
    python scripts/map_options.py analyse /tmp/maps/s6_lat_knn.pkl --sigmas 0 \
        --normalize median --reference none --quantiles 0.999     # likewise _memory, _knn_l2

A reconstruction-based map misses what the decoder reproduces as it is: magnetic tile's fray
and uneven regions are large and smooth, and a third of their pixels score below their
image's median (RESULTS.md, twentieth session). The encoder's code z of a 64x64 window is
compared here with normal codes instead: `knn` is the cosine distance to the nearest code of
the windows of `--bank-images` training images (evenly spaced in the run's train split, never
val or test), `knn_l2` the Euclidean distance, `memory` the cosine distance to the nearest
memory item (the model's own normal prototypes). Windows every `--stride` pixels; each
window's score spreads over its pixels with the library's window blending. Written as
map_options.py dumps (`<out>_<variant>.pkl`). No test mask is read.
"""

import argparse
import os

import numpy as np
from channel_residuals import per_image, write_dumps

VARIANTS = ("knn", "knn_l2", "memory")


def _code_fn(config, stride):
    import jax

    from cmaae_jax import model, patches

    net = model.from_config(config)

    def codes(net, variables, x_1xHxWx3):
        windows = patches.to_windows(x_1xHxWx3, 64, stride)
        z = net.apply(variables, windows, method=lambda m, w: m.encoder(w, False)[-1])
        return z.reshape(windows.shape[0], -1)

    return jax.jit(lambda v, x: model.per_platform(net, codes, v, x))


def _unit(z):
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-8)


def _window_scores(z, variant, bank_unit, bank, memory_unit):
    if variant == "knn":
        return 1.0 - np.max(_unit(z) @ bank_unit.T, axis=-1)
    if variant == "memory":
        return 1.0 - np.max(_unit(z) @ memory_unit.T, axis=-1)
    # |z - b|^2 = |z|^2 - 2 z.b + |b|^2, the nearest b
    d2 = np.sum(z * z, -1)[:, None] - 2.0 * z @ bank.T + np.sum(bank * bank, -1)[None, :]
    return np.sqrt(np.maximum(np.min(d2, axis=-1), 0.0))


def _to_map(scores_n, canvas, valid, stride):
    from cmaae_jax import patches

    h, w = canvas
    n = scores_n.shape[0]
    tiles = np.broadcast_to(scores_n[:, None, None, None], (n, 64, 64, 1)).astype(np.float32)
    full = np.asarray(patches.from_windows(tiles, 1, h, w, stride))[0, :, :, 0]
    return full[: valid[0], : valid[1]]


def dump(workdir, out, bank_images, stride):
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    from cmaae_jax import datasets, inference
    from cmaae_jax import workdir as workdir_lib

    config = workdir_lib.load_config(workdir)
    _, variables = inference.restore_variables(config, workdir)
    splits = datasets.load_splits(config)
    fn = _code_fn(config, stride)
    train = splits["train"]
    picks = np.linspace(0, train.num_images - 1, min(bank_images, train.num_images)).astype(int)
    bank = np.concatenate([z for z, _, _ in per_image(fn, variables, train, picks)])
    memory = np.asarray(variables["params"]["memory"]["items"])
    print(f"bank: {bank.shape[0]} codes of {len(picks)} training images", flush=True)
    bank_unit, memory_unit = _unit(bank), _unit(memory)

    def variant_maps(split):
        codes = per_image(fn, variables, split, range(split.num_images))
        scores = lambda z, v: _window_scores(z, v, bank_unit, bank, memory_unit)  # noqa: E731
        return {v: [_to_map(scores(z, v), cv, vd, stride) for z, cv, vd in codes] for v in VARIANTS}

    write_dumps(out, splits, variant_maps)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("out", help="prefix: <out>_<variant>.pkl for each of " + ", ".join(VARIANTS))
    p.add_argument("--bank-images", type=int, default=64)
    p.add_argument("--stride", type=int, default=16)
    a = p.parse_args()
    dump(a.workdir, a.out, a.bank_images, a.stride)


if __name__ == "__main__":
    main()
