"""Exports a trained workdir's image-to-anomaly-map function (jax.export or ONNX).

    python launch/export.py --workdir runs/demo --output runs/demo/export/cmaae.jaxexport
    python launch/export.py --workdir runs/demo --format onnx   # export/cmaae.onnx, needs .[onnx]

Writes the serialized StableHLO (variables baked in) and `<output>.json` (threshold, image size,
input layout and scaling). Run it anywhere jax runs, without this package:

    from export_loader import load   # cmaae_jax/export_loader.py, copied: jax and numpy only
    maps = load("cmaae.jaxexport")(images_uint8)

`--format onnx` writes an ONNX model (cmaae_jax/export_onnx.py) for onnxruntime from Python,
C++ or C# (README, "Deployment"). The threshold comes from eval/metrics.json
(launch/evaluate.py) or --threshold.
"""

import _common
from absl import app, flags

from cmaae_jax import export, export_loader, export_onnx, inference, predict, reference
from cmaae_jax import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (checkpoints, config.json).")
_OUTPUT = flags.DEFINE_string("output", None, "Artifact path (default <workdir>/export/...).")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per call of the exported function.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Override the calibrated threshold.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_PLATFORMS = flags.DEFINE_list("platforms", None, "cpu, cuda, rocm, tpu (default: this one).")
_FORMAT = flags.DEFINE_enum("format", "jax", ["jax", "onnx"], "jax.export artifact or ONNX.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    onnx = _FORMAT.value == "onnx"
    suffix = "onnx" if onnx else "jaxexport"
    output = _OUTPUT.value or f"{_WORKDIR.value}/export/cmaae.{suffix}"
    _common.setup_console(_WORKDIR.value)
    with _common.user_errors():
        config = workdir_lib.load_scoring_config(_WORKDIR.value)
        threshold = predict.find_threshold(_WORKDIR.value, _THRESHOLD.value)
        image_score, image_rim = predict.recorded_image_score(_WORKDIR.value, config)
        if _BATCH.value < 1:
            raise export_loader.ExportError(f"--batch={_BATCH.value}: must be at least 1")
        if onnx and _PLATFORMS.value:
            raise export_loader.ExportError("--platforms is for --format=jax; ONNX runs anywhere")
        step, variables = inference.restore_variables(config, _WORKDIR.value, _STEP.value)
        ref = reference.load(workdir_lib.eval_dir(_WORKDIR.value) / reference.FILE)
        if onnx:
            meta = export_onnx.save_onnx(
                output, config, variables, threshold, _BATCH.value, ref, image_score,
                image_rim, checkpoint_step=step,
            )  # fmt: skip
        else:
            meta = export.save(
                output, config, variables, threshold, _BATCH.value, _PLATFORMS.value, ref,
                image_score, image_rim, checkpoint_step=step,
            )  # fmt: skip
    target = f"ONNX opset {meta['opset']}" if onnx else "/".join(meta["platforms"])
    print(
        f"exported checkpoint {step} ({meta['method']}, {meta['image_size']}px, batch "
        f"{meta['batch']}, threshold {meta['threshold']:.4g}, {target}) "
        f"to {output} and {export_loader.sidecar_path(output)}"
    )


if __name__ == "__main__":
    app.run(main)
