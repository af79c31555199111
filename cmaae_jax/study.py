"""The paper's ablation (Table IV) as a resumable study: runs and result tables.

Each variant is a set of config overrides of a base config. Variants with a source are scored
from that variant's checkpoints (symlinked, not retrained) with other score fields. A run whose
`eval/metrics.json` and `study.json` exist is skipped, so an interrupted study resumes where it
stopped. `run` writes `<root>/results.json` (every run, and mean +- std over seeds).
"""

import copy
import json
import pathlib
import time

import numpy as np

from cmaae_jax import datasets, evaluate, inference, metrics, pictures, reference, train
from cmaae_jax import workdir as workdir_lib
from cmaae_jax.study_variants import BUDGET_MARK, VARIANTS

KEYS = metrics.TABLE_KEYS


def split_name(name: str) -> tuple[str, float]:
    """("full", 0.25) for "full@0.25"; the scale is 1 without a mark."""
    variant, _, scale = name.partition(BUDGET_MARK)
    try:
        return variant, float(scale) if scale else 1.0
    except ValueError:
        raise ValueError(
            f"variant {name!r}: the budget after {BUDGET_MARK} must be a number"
        ) from None


def variant_config(base, name: str, seed: int):
    name, scale = split_name(name)
    config = copy.deepcopy(base)
    _, overrides, source = VARIANTS[name]
    if source is not None:  # scored from another variant's checkpoints: build that model
        overrides = {**VARIANTS[source][1], **overrides}
    with config.unlocked():
        config.train.seed = seed
        config.train.stage1_steps = round(config.train.stage1_steps * scale)
        config.train.stage2_steps = round(config.train.stage2_steps * scale)
        for key, value in overrides.items():
            if key == "one_stage":
                config.train.stage1_steps += config.train.stage2_steps
                config.train.stage2_steps = 0
                continue
            section, field = key.split(".")
            config[section][field] = value
    return config


def _per_type(result: dict) -> dict:
    return {t: {k: r[k] for k in KEYS} for t, r in result["per_type"].items()}


def run_one(base, root: pathlib.Path, name: str, seed: int) -> dict:
    workdir = root / name / f"seed{seed}"
    record_path = workdir / "study.json"
    config = variant_config(base, name, seed)
    if workdir_lib.eval_metrics_path(workdir).exists() and record_path.exists():
        return json.loads(record_path.read_text())
    variant, scale = split_name(name)
    source = VARIANTS[variant][2]
    if source is not None and scale != 1.0:
        source = f"{source}{BUDGET_MARK}{scale:g}"
    train_s = 0.0
    if source is None:
        t0 = time.perf_counter()
        train.train(config, str(workdir))
        train_s = time.perf_counter() - t0
    else:
        src = run_one(base, root, source, seed)
        workdir.mkdir(parents=True, exist_ok=True)
        link = workdir_lib.checkpoints_dir(workdir)
        if not link.exists():
            link.symlink_to(workdir_lib.checkpoints_dir(root / source / f"seed{seed}").absolute())
        train_s = src["train_seconds"]
    result = evaluate.evaluate(config, str(workdir))
    record = {
        "variant": name,
        "seed": seed,
        "train_seconds": train_s,
        "trained_by": source or name,
        "steps": [config.train.stage1_steps, config.train.stage2_steps],
        "batch_size": config.train.batch_size,
        **{k: result[k] for k in (*KEYS, "pixel_ap", "eval_seconds", "threshold")},
        "per_type": _per_type(result),
        "held_out": result["held_out"],
    }
    record_path.write_text(json.dumps(record, indent=2))
    return record


def save_type_pictures(base, root: pathlib.Path, name: str, seed: int, per_type: int):
    """Overlays of the first `per_type` images of every defect type, in `<run>/study_pictures`."""
    workdir = root / name / f"seed{seed}"
    out = workdir / "study_pictures"
    if out.exists():
        return
    config = variant_config(base, name, seed)
    _, variables = inference.restore_variables(config, str(workdir))
    splits = datasets.load_splits(config)
    scorer = inference.Scorer(config, variables)
    rescore = inference.rescorer(config, variables)
    calibration = evaluate.calibrate(scorer, splits, config, rescorer=rescore)
    threshold, ref, scorer = calibration.threshold, calibration.ref, calibration.scorer
    test = splits["test"]
    chosen = {}
    for i, kind in enumerate(test.defect_types):
        if test.labels[i] == 1 and len(chosen.setdefault(kind, [])) < per_type:
            chosen[kind].append(i)
    picked = test.select([i for ids in chosen.values() for i in ids])
    maps = scorer(picked.images)
    for j, amap in enumerate(maps):  # cropped to the valid region (keep_aspect padding)
        amap = reference.apply(ref, picked.valid_map(j, amap))
        stem = pathlib.Path(picked.paths[j]).stem
        pictures.save_overlay(
            out / f"{picked.defect_types[j]}_{stem}.png",
            picked.valid_map(j, picked.images[j]),
            picked.valid_map(j, picked.masks[j]),
            amap,
            threshold,
            title=f"{name}: max {amap.max():.3g} / thr {threshold:.3g}",
        )


def _order(name: str):
    """Table order: VARIANTS order, then by budget."""
    variant, scale = split_name(name)
    return list(VARIANTS).index(variant) if variant in VARIANTS else len(VARIANTS), scale


def summarize(records: list[dict]) -> dict:
    by_variant = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    summary = {}
    for name in sorted(by_variant, key=_order):
        rs = by_variant[name]
        cols = {k: [r[k] for r in rs] for k in (*KEYS, "train_seconds")}
        summary[name] = {
            "seeds": [r["seed"] for r in rs],
            **{k: [float(np.mean(v)), float(np.std(v))] for k, v in cols.items()},
        }
    return summary


def table(summary: dict) -> str:
    head = ["variant", "seeds", *KEYS, "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary.items():
        n = len(s["seeds"])
        cells = [f"{name}", str(n)]
        for k in KEYS:
            m, sd = s[k]
            cells.append(f"{m:.3f} ± {sd:.3f}" if n > 1 else f"{m:.3f}")
        cells.append(f"{s['train_seconds'][0]:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def type_table(records: list[dict], key: str = "pixel_auroc") -> str:
    """Markdown table of `key` per variant (rows, mean over seeds) and defect type (columns)."""
    types = sorted({t for r in records for t in r.get("per_type", {})})
    if not types:
        return ""
    lines = ["| variant | " + " | ".join(types) + " |", "|" + "---|" * (len(types) + 1)]
    for name in sorted({r["variant"] for r in records}, key=_order):
        rs = [r for r in records if r["variant"] == name and r.get("per_type")]
        if rs:
            vals = [np.mean([r["per_type"][t][key] for r in rs]) for t in types]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


def check_names(names):
    """ValueError naming the unknown variants (a budget suffix "@0.5" is allowed)."""
    for name in names:
        split_name(name)
    unknown = sorted({n for n in names if split_name(n)[0] not in VARIANTS})
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")


def run(base, root, names, seeds, picture_variants=(), pictures_per_type: int = 2) -> list:
    """Runs (or resumes) every variant in `names` for every seed; returns all records of
    `root` (also of earlier invocations) and writes `<root>/results.json`."""
    check_names(names)
    root = pathlib.Path(root)
    for seed in seeds:
        for name in names:
            record = run_one(base, root, name, seed)
            print(json.dumps({k: record[k] for k in ("variant", "seed", *KEYS)}), flush=True)
            if name in picture_variants:
                save_type_pictures(base, root, name, seed, pictures_per_type)
    records = [json.loads(p.read_text()) for p in sorted(root.glob("*/seed*/study.json"))]
    summary = summarize(records)
    (root / "results.json").write_text(json.dumps({"summary": summary, "runs": records}, indent=2))
    if curves := budget_curves(records):
        plot_budget_curves(curves, root / "budget_aupro.png")
    return records


def budget_curves(records: list[dict], key: str = "pixel_aupro") -> dict:
    """{variant: {defect type: [(patches seen, mean over seeds of `key`), ...]}} of the
    variants run at several budgets (names with "@"), sorted by patches seen."""
    points = {}
    for r in records:
        variant, _ = split_name(r["variant"])
        patches = sum(r["steps"]) * r.get("batch_size", 0)
        for kind, values in r.get("per_type", {}).items():
            points.setdefault(variant, {}).setdefault(kind, {}).setdefault(patches, [])
            points[variant][kind][patches].append(values[key])
    curves = {}
    for variant, kinds in points.items():
        if len(next(iter(kinds.values()))) < 2:
            continue  # one budget only: no curve
        curves[variant] = {
            kind: [(p, float(np.mean(v))) for p, v in sorted(by_patches.items())]
            for kind, by_patches in kinds.items()
        }
    return curves


def plot_budget_curves(curves: dict, path, key: str = "pixel_aupro"):
    """One panel per defect type: `key` against patches seen, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({k for c in curves.values() for k in c})
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for variant, c in curves.items():
            if kind in c:
                ax.plot(*zip(*c[kind], strict=True), marker="o", label=variant)
        ax.set_xscale("log")
        budgets = sorted({p for c in curves.values() for p, _ in c.get(kind, [])})
        ax.set_xticks(budgets, [f"{p / 1000:.0f}k" for p in budgets])
        ax.minorticks_off()
        ax.set_title(kind)
        ax.set_xlabel("64x64 patches seen")
    axes[0][0].set_ylabel(key)
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(records: list[dict]) -> str:
    """The pooled table, then each metric per defect type, as markdown."""
    parts = [table(summarize(records))]
    for key in ("pixel_auroc", "pixel_f1_max", "pixel_aupro", "image_auroc"):
        if per_type := type_table(records, key):
            parts.append(
                f"{key} per defect type (its images and every normal test image)\n{per_type}"
            )
    return "\n\n".join(parts)
