"""Per-type table of scored runs' records (eval/metrics.json), one row per `label=workdir`.

    python scripts/records_table.py A1=runs/study512b/varied/seed10 \
        B2=runs/study512_scales_pyramid/varied/seed10
    python scripts/records_table.py --pooled A=runs/aligned25/part_crack_s0

A workdir may be given as a saved record instead (a path ending in .json), or as one entry of
`launch/baselines.py`'s --json file (`FILE.json#NAME`, e.g. `baselines.json#local_contrast_s8`).
Columns: mean4 AUPRO (blowhole, break, crack, fray), each type's AUPRO, mean4 F1 max, mean4
label-free F1 (the run's threshold rule) and mean4 image AUROC. With `--pooled` (any data):
the pooled AUPRO, F1 max, label-free F1, image AUROC and the reference evaluation applied.
Markdown, to stdout.
"""

import json
import pathlib
import sys

from cmaae_jax import workdir as workdir_lib

MEAN4 = ("blowhole", "break", "crack", "fray")
TYPES = (*MEAN4, "uneven")


def _record(workdir: str) -> dict:
    """A workdir's eval/metrics.json, a saved record (a .json path) as it is, or the entry
    NAME of a baselines file (`FILE.json#NAME`)."""
    where, _, name = workdir.partition("#")
    path = pathlib.Path(where)
    path = path if path.suffix == ".json" else workdir_lib.eval_metrics_path(where)
    record = json.loads(path.read_text())
    return record[name] if name else record


def row(label: str, workdir: str) -> str:
    per_type = _record(workdir)["per_type"]

    def mean4(key):
        return sum(per_type[t][key] for t in MEAN4) / len(MEAN4)

    aupro = [f"{per_type[t]['pixel_aupro']:.3f}" if t in per_type else "" for t in TYPES]
    cells = [label, f"{mean4('pixel_aupro'):.3f}", *aupro]
    cells += [f"{mean4(k):.4f}" for k in ("pixel_f1_max", "pixel_f1")]
    cells.append(f"{mean4('image_auroc'):.3f}")
    return "| " + " | ".join(cells) + " |"


POOLED = ("pixel_aupro", "pixel_f1_max", "pixel_f1", "image_auroc")


def pooled_row(label: str, workdir: str) -> str:
    record = _record(workdir)
    applied = record.get("reference", {})
    kind = applied.get("kind", "mean") if applied.get("used") else "none"
    return "| " + " | ".join([label, *(f"{record[k]:.3f}" for k in POOLED), kind]) + " |"


def main(pairs):
    if pairs and pairs[0] == "--pooled":
        head = ["run", "AUPRO", "F1 max", "label-free F1", "image AUROC", "reference"]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for pair in pairs[1:]:
            print(pooled_row(*pair.split("=", 1)))
        return
    head = ["run", "mean4 AUPRO", *TYPES, "mean4 F1 max", "mean4 F1", "image AUROC"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for pair in pairs:
        label, _, workdir = pair.partition("=")
        print(row(label, workdir))


if __name__ == "__main__":
    main(sys.argv[1:])
