"""Scores a trained run with changed score fields into a new workdir (the run's records stay).

    python scripts/score_variant.py runs/study512b/varied/seed3 runs/study512b_flip/varied/seed3 \
        score.flip=horizontal

The new workdir gets the run's config.json and a link to its checkpoints; `evaluate` then
scores it with the run's own config and the given `section.field=value` changes (values
parsed as JSON where they parse, else kept as text). An existing eval/metrics.json there is
kept (the call resumes a list of scorings).
"""

import json
import pathlib
import shutil
import sys

from cmaae_jax import devices, evaluate
from cmaae_jax import workdir as workdir_lib


def main(source, target, *changes):
    devices.set_cpu_devices(-1)  # the launchers' virtual CPU devices (a run's own speed)
    source, target = pathlib.Path(source), pathlib.Path(target)
    if workdir_lib.eval_metrics_path(target).is_file():
        print(f"{target}: scored already")
        return
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(workdir_lib.config_path(source), workdir_lib.config_path(target))
    link = workdir_lib.checkpoints_dir(target)
    if not link.exists():
        link.symlink_to(workdir_lib.checkpoints_dir(source).resolve())
    config = workdir_lib.load_config(target)
    with config.unlocked():
        for change in changes:
            key, _, text = change.partition("=")
            section, field = key.split(".")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            config[section][field] = value
    result = evaluate.evaluate(config, str(target))
    per_type = result["per_type"]
    types = [t for t in ("blowhole", "break", "crack", "fray") if t in per_type] or list(per_type)
    mean = sum(per_type[t]["pixel_aupro"] for t in types) / len(types)
    print(f"{target}: mean AUPRO over {', '.join(types)}: {mean:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
