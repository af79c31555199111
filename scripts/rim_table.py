"""The rim plan's table (docs/results/mt34/PLAN_rim.md): image AUROC with `top` against
`top_inner` on the same checkpoints, pooled and per defect type, and the plan's rule.

    python scripts/rim_table.py \
        mt_s2=docs/results/rim35/mt_s2.json:docs/results/rim35/mt_s2_inner.json

Each argument: label=<record with top>:<record with top_inner> (eval/metrics.json files).
Rule: adopt `top_inner` as the default where magnetic tile's mean4 image AUROC (blowhole,
break, crack, fray) rises by more than 0.03 on every magnetic tile run and no run loses more
than 0.01 image AUROC, pooled or on any type. Markdown, to stdout.
"""

import json
import pathlib
import sys

MEAN4 = ("blowhole", "break", "crack", "fray")
GAIN, LOSS = 0.03, 0.01


def _pair(spec: str):
    label, _, paths = spec.partition("=")
    top, inner = (json.loads(pathlib.Path(p).read_text()) for p in paths.split(":"))
    return label, top, inner


def _aurocs(record) -> dict:
    """{'pooled': ..., type: ...} image AUROC, plus 'mean4' where all four types are there."""
    out = {"pooled": record["image_auroc"]}
    out.update({t: r["image_auroc"] for t, r in sorted(record["per_type"].items())})
    if all(t in out for t in MEAN4):
        out["mean4"] = sum(out[t] for t in MEAN4) / len(MEAN4)
    return out


def main(specs) -> None:
    print("| run | rim px | what | top | top_inner | change |")
    print("|---|---:|---|---:|---:|---:|")
    gains, worst = [], 0.0
    for label, top, inner in map(_pair, specs):
        a, b = _aurocs(top), _aurocs(inner)
        for key in a:
            change = b[key] - a[key]
            if key != "mean4":
                worst = min(worst, change)
            print(f"| {label} | {inner['image_rim']} | {key} | {a[key]:.3f} | {b[key]:.3f} "
                  f"| {change:+.3f} |")  # fmt: skip
        if "mean4" in a:
            gains.append(b["mean4"] - a["mean4"])
    ok = bool(gains) and min(gains) > GAIN and worst >= -LOSS
    print(f"\nmagnetic tile mean4 gains: {', '.join(f'{g:+.3f}' for g in gains) or 'none yet'}; "
          f"largest loss anywhere: {worst:+.3f}; rule {'met' if ok else 'not met'}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
