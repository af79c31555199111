"""Non-learned reference maps (local contrast, mean image, its z-score) on a config's dataset.

    python launch/baselines.py --config configs/study.py --json runs/baselines_128.json

Same data, label-free threshold rule and metrics (pooled and per defect type) as
`launch/evaluate.py`, so a trained model's table can be read against them (RESULTS.md).
"""

import json

import _common
from absl import app, flags
from ml_collections import config_flags

from cmaae_jax import baselines, datasets

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_SIGMAS = flags.DEFINE_list("sigmas", ["2", "8"], "Gaussian sigmas (pixels) of local_contrast.")
_JSON = flags.DEFINE_string("json", None, "Also write the results here.")
flags.mark_flags_as_required(["config"])
KEYS = ("pixel_f1", "pixel_f1_max", "pixel_auroc", "pixel_aupro", "image_auroc")


def main(argv):
    del argv
    _common.setup_console()
    config = _CONFIG.value
    with _common.user_errors():
        splits = datasets.load_splits(config)
        runs = {f"local_contrast_s{s}": ("local_contrast", float(s)) for s in _SIGMAS.value}
        runs.update(mean_image=("mean_image", 0.0), mean_image_z=("mean_image_z", 0.0))
        q = config.eval.threshold_quantile
        results = {
            name: baselines.evaluate(splits, m, s, q, config) for name, (m, s) in runs.items()
        }
    print("| baseline | " + " | ".join(KEYS) + " |\n|" + "---|" * (len(KEYS) + 1))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS) + " |")
    types = sorted(next(iter(results.values()))["per_type"])
    print("\npixel_auroc per defect type\n| baseline | " + " | ".join(types) + " |")
    print("|" + "---|" * (len(types) + 1))
    for name, r in results.items():
        cells = " | ".join(f"{r['per_type'][t]['pixel_auroc']:.3f}" for t in types)
        print(f"| {name} | {cells} |")
    if _JSON.value:
        with open(_JSON.value, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=_common.parse_flags)
