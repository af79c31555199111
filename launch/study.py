"""Ablation study (the paper's Table IV): trains and evaluates CMA-AE variants, resumably.

    python launch/study.py --config configs/study.py --workdir_root runs/study
    python launch/study.py --config configs/study.py --variants full,ae_pixel --seeds 0,1,2
    python launch/study.py --config configs/magnetic_tile.py --workdir_root runs/study_full

The logic (variants, resumable runs, tables) is `cmaae_jax/study.py`; an interrupted study
continues where it stopped when the same command is run again.
"""

import _common
from absl import app, flags
from ml_collections import config_flags

from cmaae_jax import study

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_common.ROOT / "configs" / "study.py"), "Base config.", lock_config=True
)
_ROOT = flags.DEFINE_string("workdir_root", "runs/study", "One workdir per variant and seed.")
_VARIANTS = flags.DEFINE_list("variants", [], "Variants to run (default: all).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Training seeds.")
_PICTURES = flags.DEFINE_list(
    "picture_variants", ["full", "ae_pixel"], "Variants that get per-defect-type overlays."
)
_PER_TYPE = flags.DEFINE_integer("pictures_per_type", 2, "Overlays per defect type.")
_CPU = _common.define_cpu_devices_flag()


def main(argv):
    del argv
    _common.set_cpu_devices(_CPU.value)
    _common.setup_console(_ROOT.value, create=True)
    names = _VARIANTS.value or list(study.VARIANTS)
    seeds = [int(s) for s in _SEEDS.value]
    with _common.user_errors():
        try:
            study.check_names(names)
        except ValueError as e:
            raise app.UsageError(str(e)) from e
        records = study.run(
            _CONFIG.value, _ROOT.value, names, seeds, _PICTURES.value, _PER_TYPE.value
        )
    print(study.report(records))


if __name__ == "__main__":
    app.run(main, flags_parser=_common.parse_flags)
