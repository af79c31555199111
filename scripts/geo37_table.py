"""The geo37 plan's tables (docs/results/geo37/PLAN.md): today's `auto` threshold against the
proposed one (geomean where the quantile rule's threshold lies below the pastes rule's, the
pastes rule where it lies above), each with its part of the plan's rule.

    python scripts/geo37_table.py wood docs/results/geo37/demo_s*.json
    python scripts/geo37_table.py tile \
        docs/results/geo36/mt_s6.json:docs/results/geo36/mt_s6_geo.json

`wood`: records as trained (eval/metrics.json); the recorded candidates' pooled F1 give both
rules' (rule B). `tile`: <record with the pastes rule>:<the same run scored with geomean>, per
type (rule A). Markdown, to stdout.
"""

import json
import pathlib
import sys

MEAN4 = ("blowhole", "break", "crack", "fray")
LOSS = 0.005  # the most either part of the rule lets a run lose


def proposed(record) -> str:
    """The proposed rule's choice: geomean where the quantile lies below the pastes rule's."""
    c = record["threshold_candidates"]
    return "geomean" if c["quantile"] < c["pastes"] else "pastes"


def today(record) -> str:
    """The rule today's `auto` used: geomean for z-scored maps, else pastes."""
    return "geomean" if (record.get("reference") or {}).get("kind") == "zscore" else "pastes"


def wood(paths) -> None:
    print("| run | map | quantile | pastes | today's rule: F1 | proposed: F1 | change |")
    print("|---|---|---:|---:|---|---|---:|")
    changes = []
    for path in paths:
        r = json.loads(pathlib.Path(path).read_text())
        c, f1 = r["threshold_candidates"], r["threshold_candidates_f1"]
        now, new = today(r), proposed(r)
        changes.append(f1[new] - f1[now])
        print(f"| {pathlib.Path(path).stem} | {r['method']} | {c['quantile']:.4g} | "
              f"{c['pastes']:.4g} | {now}: {f1[now]:.4f} | {new}: {f1[new]:.4f} | "
              f"{changes[-1]:+.4f} |")  # fmt: skip
    ok = min(changes) >= -LOSS and sum(changes) >= 0
    print(f"\nworst {min(changes):+.4f}, mean {sum(changes) / len(changes):+.4f}: "
          f"rule B {'holds' if ok else 'fails'}")  # fmt: skip


def _mean4_and_halves(record):
    per_type = record["per_type"]
    mean4 = sum(per_type[t]["pixel_f1"] for t in MEAN4) / len(MEAN4)
    halves = sum(per_type[t]["pixel_f1"] >= 0.5 * per_type[t]["pixel_f1_max"] for t in MEAN4)
    return mean4, halves


def tile(spec) -> None:
    pastes_path, geo_path = spec.split(":")
    records = {
        "pastes": json.loads(pathlib.Path(pastes_path).read_text()),
        "geomean": json.loads(pathlib.Path(geo_path).read_text()),
    }
    base = records["pastes"]
    now, new = today(base), proposed(base)
    c = base["threshold_candidates"]
    print(f"quantile {c['quantile']:.4g}, pastes {c['pastes']:.4g}: today {now}, proposed {new}")
    print("| rule | " + " | ".join(MEAN4) + " | mean4 label-free F1 | types at half F1 max |")
    print("|---|" + "---:|" * (len(MEAN4) + 2))
    for rule, r in records.items():
        mean4, halves = _mean4_and_halves(r)
        cells = " | ".join(f"{r['per_type'][t]['pixel_f1']:.4f}" for t in MEAN4)
        print(f"| {rule} | {cells} | {mean4:.4f} | {halves}/4 |")
    (m_now, h_now), (m_new, h_new) = (_mean4_and_halves(records[k]) for k in (now, new))
    ok = m_new >= m_now - LOSS and h_new >= h_now
    print(f"\nmean4 {m_now:.4f} -> {m_new:.4f}, half F1 max {h_now} -> {h_new}: "
          f"rule A {'holds' if ok else 'fails'}")  # fmt: skip


if __name__ == "__main__":
    {"wood": lambda args: wood(args), "tile": lambda args: tile(args[0])}[sys.argv[1]](sys.argv[2:])
