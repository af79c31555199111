"""Anomaly maps, binary masks and scores for unlabelled images, with a trained workdir.

    python launch/predict.py --workdir runs/demo --input 'photos/*.png' --output runs/demo/pred

The threshold is the one calibrated by launch/evaluate.py (eval/metrics.json), or --threshold.
Images are read, scored and written in batches (memory does not grow with the number of
inputs); unreadable ones are named in warnings; none readable is an error (exit 2).
"""

import _common
from absl import app, flags

from cmaae_jax import console, predict

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (checkpoints, config.json).")
_INPUT = flags.DEFINE_string("input", None, "A folder, an image file or a glob pattern.")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Override the calibrated threshold.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_CPU = _common.define_cpu_devices_flag()
flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv):
    del argv
    _common.set_cpu_devices(_CPU.value)
    _common.setup_console(_WORKDIR.value)
    with _common.user_errors():
        summary = predict.predict(
            _WORKDIR.value, _INPUT.value, _OUTPUT.value, _THRESHOLD.value, _STEP.value
        )
    print("\n".join(console.predict_lines(summary)))


if __name__ == "__main__":
    app.run(main)
