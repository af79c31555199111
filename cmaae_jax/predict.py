"""Anomaly maps, masks and scores for new, unlabelled images.

Inputs are resized as the run's `data.resize` says (keep_aspect: the padding is cropped off the
map before it is resized back). For each readable input image `<stem>`: `<stem>_map.npy`
(float32 map at the image's original size), `<stem>_map.png` (heat map), `<stem>_mask.png`
(0/255 binary mask at the threshold; a stem met again, e.g. a/x.png and b/x.png, gets `-2`,
`-3`, ... and `output` says which);
plus `scores.csv` / `scores.json` (image score = max of the map, and the decision). Unreadable
inputs are skipped, reported and listed in `scores.json`.
"""

import csv
import glob
import json
import pathlib

import numpy as np
from absl import logging
from PIL import Image

from cmaae_jax import errors, images, inference, pictures
from cmaae_jax import workdir as workdir_lib

CSV_FIELDS = ["path", "output", "score", "defective", "defect_fraction"]


class PredictError(errors.UserError, ValueError):
    """Nothing to predict on, or no threshold known."""


def list_inputs(spec: str) -> list[pathlib.Path]:
    """Files of a folder (recursively, image extensions) or of a glob pattern, sorted."""
    path = pathlib.Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        files = sorted(pathlib.Path(p) for p in glob.glob(spec, recursive=True))
        files = [p for p in files if p.is_file()]
    if not files:
        raise PredictError(f"no input files found at {spec!r} (a folder, a file or a glob)")
    return files


def find_threshold(workdir, threshold: float | None) -> float:
    if threshold is not None:
        return float(threshold)
    path = workdir_lib.eval_metrics_path(workdir)
    if path.is_file():
        try:
            return float(json.loads(path.read_text())["threshold"])
        except (ValueError, KeyError, TypeError) as e:
            raise PredictError(
                f"{path} holds no readable threshold ({type(e).__name__}: {e}); run "
                f"launch/evaluate.py again or pass --threshold"
            ) from e
    raise PredictError(
        f"no threshold: {path} does not exist; run launch/evaluate.py first or pass --threshold"
    )


def predict(workdir, inputs: str, output, threshold: float | None = None, step=None) -> dict:
    """Writes maps, masks and scores for every readable input; returns the summary dict."""
    config = workdir_lib.load_config(workdir)
    threshold = find_threshold(workdir, threshold)
    files = list_inputs(inputs)
    size, resize = config.data.image_size, config.data.get("resize", "square")
    loaded, skipped = [], []
    for f in files:
        try:
            loaded.append((f, images.load_image(f, size, resize), images.original_size(f)))
        except images.ImageError as e:
            logging.warning("skipped: %s", e)
            skipped.append({"path": str(f), "reason": str(e)})
    out = pathlib.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows = [None] * len(loaded)
    if loaded:
        ckpt_step, variables = inference.restore_variables(config, workdir, step)
        scorer = inference.Scorer(config, variables)
        batch = [x for _, x, _ in loaded]  # keep_aspect: shapes differ; grouped by the Scorer
        batch = np.stack(batch) if resize == "square" else batch
        names = _output_names([f for f, _, _ in loaded])
        for idx, maps in scorer.batches(batch):
            for i, amap in zip(idx, maps, strict=True):
                f, _, (h, w) = loaded[i]
                vh, vw = images.scaled_size((h, w), size, resize)  # crop the padding off
                rows[i] = _write_one(out, f, amap[:vh, :vw], (h, w), threshold, names[i])
    summary = {
        "threshold": threshold,
        "num_inputs": len(files),
        "num_scored": len(rows),
        "images": rows,
        "skipped": skipped,
    }
    (out / "scores.json").write_text(json.dumps(summary, indent=2))
    with (out / "scores.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return summary


def _output_names(paths) -> list[str]:
    """Output stems: each file's stem, with -2, -3, ... where a stem was already taken."""
    used, names = set(), []
    for p in paths:
        name, n = p.stem, 1
        while name in used:
            n += 1
            name = f"{p.stem}-{n}"
        used.add(name)
        names.append(name)
    return names


def _write_one(out, path, map_hxw, hw, threshold, stem) -> dict:
    """Writes one image's outputs; `map_hxw` is its map at the resized (valid) resolution."""
    h, w = hw
    full = np.asarray(Image.fromarray(map_hxw.astype(np.float32)).resize((w, h), Image.BILINEAR))
    np.save(out / f"{stem}_map.npy", full)
    Image.fromarray(pictures.heat(full, threshold)).save(out / f"{stem}_map.png")
    mask = full >= threshold
    Image.fromarray((mask * 255).astype(np.uint8)).save(out / f"{stem}_mask.png")
    score = float(map_hxw.max())
    return {
        "path": str(path),
        "output": stem,
        "score": score,
        "defective": bool(score >= threshold),
        "defect_fraction": float(mask.mean()),
    }
