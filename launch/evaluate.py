"""Evaluates a trained CMA-AE checkpoint: metrics.json, overlays and a PR curve under eval/.

    python launch/evaluate.py --workdir runs/demo [--step N]
    python launch/evaluate.py --workdir runs/demo --config configs/demo.py \
        --config.score.method=pixel
    python launch/evaluate.py --workdir runs/demo --held_out_only   # no test split scored

The model is the run's own (its config.json). A --config may change the data location,
eval.* and score.* (recorded in metrics.json under config_overrides); one whose model fields
differ from the run's is refused.
"""

import _common
from absl import app, flags
from ml_collections import config_flags

from cmaae_jax import console, evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (default: the run's config.json).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with checkpoints.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_HELD_OUT_ONLY = flags.DEFINE_bool(
    "held_out_only", False, "Only the label-free check on held-out images (eval/held_out.json)."
)
_CPU = _common.define_cpu_devices_flag()
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    _common.set_cpu_devices(_CPU.value)
    _common.setup_console(_WORKDIR.value)
    with _common.user_errors():
        if _HELD_OUT_ONLY.value:
            result = evaluate.check_held_out(_CONFIG.value, _WORKDIR.value, _STEP.value)
            print("\n".join(console.held_out_lines(result)), flush=True)
            return
        result = evaluate.evaluate(_CONFIG.value, _WORKDIR.value, _STEP.value)
    console.print_summary(result, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=_common.parse_flags)
