"""Label-free threshold rules on trained runs, measured without retraining (RESULTS.md).

    python scripts/threshold_rules.py runs/demo runs/study13/varied/seed0 \
        --rule pastes --out runs/threshold_rules

Each run is evaluated again (`cmaae_jax.evaluate`) with its own config, the score fields its
`eval/metrics.json` was made with, and `eval.threshold_rule=--rule`, in a shadow workdir
`<out>/<run path with / as __>` whose checkpoints are a link to the run's (the run itself is
not written to). A shadow that already holds metrics is not evaluated again (resumable). The
table compares, per defect type, the label-free F1 of the run's own evaluation with the one
of the rule, and F1 max (which no rule can exceed). `--unfloored` measures the `pastes` rule
without its floor (the pastes' best-F1 threshold alone; shadows `<...>__unfloored`).
"""

import argparse
import json
import pathlib

import numpy as np


def _unfloor():
    """Makes the `pastes` rule's floor -inf: its threshold is then the pastes' best alone."""
    from cmaae_jax import calibration

    floored = calibration.label_free_threshold

    def without_floor(rule, normal_maps, quantile):
        return -np.inf if rule == "pastes" else floored(rule, normal_maps, quantile)

    calibration.label_free_threshold = without_floor


def shadow_evaluate(run: pathlib.Path, out: pathlib.Path, rule: str, suffix="") -> tuple:
    """(the run's own metrics, the metrics with `rule`), evaluating the latter when missing."""
    from cmaae_jax import evaluate
    from cmaae_jax import workdir as workdir_lib

    own = json.loads(workdir_lib.eval_metrics_path(run).read_text())
    shadow = out / (str(run).strip("/").replace("/", "__") + suffix)
    done = workdir_lib.eval_metrics_path(shadow)
    if not done.is_file():
        shadow.mkdir(parents=True, exist_ok=True)
        link = workdir_lib.checkpoints_dir(shadow)
        if not link.exists():
            link.symlink_to(workdir_lib.checkpoints_dir(run).resolve())
        workdir_lib.save_config(shadow, workdir_lib.load_config(run))
        config = workdir_lib.load_scoring_config(run)  # the score fields of its evaluation
        config.eval.threshold_rule = rule
        evaluate.evaluate(config, str(shadow))
    return own, json.loads(done.read_text())


def table(rows: dict, types) -> str:
    """Markdown: per run, F1 (own rule) / F1 (new rule) / F1 max per type and their mean."""
    head = "| run | " + " | ".join(types) + " | mean |"
    lines = [head, "|" + "---|" * (len(types) + 2)]
    for name, (own, new) in rows.items():
        cells, sums = [], np.zeros(3)
        for t in types:
            a, b = own["per_type"][t], new["per_type"][t]
            trio = np.array([a["pixel_f1"], b["pixel_f1"], a["pixel_f1_max"]])
            sums += trio / len(types)
            cells.append("{:.3f} / {:.3f} / {:.3f}".format(*trio))
        cells.append("{:.3f} / {:.3f} / {:.3f}".format(*sums))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=pathlib.Path)
    parser.add_argument("--rule", default="pastes")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/threshold_rules"))
    parser.add_argument("--types", default="", help="comma-separated (default: every type)")
    parser.add_argument("--unfloored", action="store_true", help="pastes without its floor")
    args = parser.parse_args()
    if args.unfloored:
        _unfloor()
    suffix = "__unfloored" if args.unfloored else ""
    rows = {str(run): shadow_evaluate(run, args.out, args.rule, suffix) for run in args.runs}
    for name, (own, new) in rows.items():
        print(f"{name}: threshold {own['threshold']:.4g} -> {new['threshold']:.4g}")
    types = (
        args.types.split(",") if args.types else sorted(next(iter(rows.values()))[0]["per_type"])
    )
    print(table(rows, [t for t in types if t != "good"]))


if __name__ == "__main__":
    main()
