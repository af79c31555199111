"""Anomaly maps, masks and scores for new, unlabelled images, streamed in bounded batches.

Inputs are resized as the run's `data.resize` says (keep_aspect: the padding is cropped off the
map before it is resized back). For each readable input image `<stem>`: `<stem>_map.npy`
(float32 map at the image's original size), `<stem>_map.png` (heat map), `<stem>_mask.png`
(0/255 binary mask at the threshold; a stem met again, e.g. a/x.png and b/x.png, gets `-2`,
`-3`, ... and `output` says which);
plus `scores.csv` / `scores.json` (the image score, `eval.image_score` of the map as evaluation
scored it, and the decision: score >= threshold). Unreadable
inputs are skipped, named in a warning and listed in `scores.json`; when none is readable,
`predict` raises PredictError.

Memory: the images are read, scored and written one batch at a time (`score.batch_images`
per device, the scorer's batch), so it does not grow with the number of inputs; only the
file list and one short row per image (scores.json) are kept. keep_aspect images of
different shapes in one batch are scored shape group by shape group.
"""

import csv
import glob
import json
import pathlib

import jax
import numpy as np
from absl import logging
from PIL import Image

from cmaae_jax import console, errors, image_score, images, inference, pictures, reference
from cmaae_jax import workdir as workdir_lib

CSV_FIELDS = ["path", "output", "score", "defective", "defect_fraction"]
SCORES_CSV = "scores.csv"
SCORES_JSON = "scores.json"


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


def recorded_image_score(workdir, config) -> tuple[str, int]:
    """(image score, rim) as the run's evaluation used them (its metrics.json's `image_score`
    and `image_rim`), else the config's `eval.image_score` (`max` where neither names one)
    with no rim; `top_inner` without a recorded rim is a PredictError (evaluation chooses it)."""
    path = workdir_lib.eval_metrics_path(workdir)
    try:
        recorded = json.loads(path.read_text()) if path.is_file() else {}
        how, rim = recorded.get("image_score"), recorded.get("image_rim")
    except (ValueError, AttributeError):
        how = rim = None  # find_threshold names an unreadable file
    how = how or config.eval.get("image_score", "max")
    if how == image_score.INNER and rim is None:
        raise PredictError(
            f"eval.image_score={how} needs the rim evaluation chooses, which {path} does not "
            f"record; run launch/evaluate.py first"
        )
    return how, int(rim or 0)


def predict(workdir, inputs: str, output, threshold: float | None = None, step=None) -> dict:
    """Writes maps, masks and scores for every readable input; returns the summary dict.

    Raises PredictError (naming the files) when none of the inputs could be read.
    """
    config = workdir_lib.load_scoring_config(workdir)
    threshold = find_threshold(workdir, threshold)
    files = list_inputs(inputs)
    out = pathlib.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    how, rim = recorded_image_score(workdir, config)
    stream = _Stream(config, workdir, step, out, (threshold, how, rim), files)
    batch = config.score.batch_images * jax.local_device_count()
    rows, skipped = [], []
    with (out / SCORES_CSV).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        with console.progress(len(files), "predict") as bar:
            for lo in range(0, len(files), batch):
                hi = min(lo + batch, len(files))
                new = stream.batch(lo, hi, skipped)
                writer.writerows(new)
                rows += new
                bar.update(hi - lo)
    if not rows:
        (out / SCORES_CSV).unlink()
        raise PredictError(_nothing_readable(skipped))
    summary = {
        "threshold": threshold,
        "image_score": how,
        "image_rim": rim,
        "num_inputs": len(files),
        "num_scored": len(rows),
        "images": rows,
        "skipped": skipped,
        "output": str(out),
        "scores_csv": str(out / SCORES_CSV),
    }
    (out / SCORES_JSON).write_text(json.dumps(summary, indent=2))
    return summary


def _nothing_readable(skipped) -> str:
    names = ", ".join(s["path"] for s in skipped[:10])
    more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    return f"none of the {len(skipped)} inputs is a readable image: {names}{more}"


class _Stream:
    """Reads, scores and writes the inputs batch by batch; the model is restored at the first
    readable batch (inputs that are all unreadable never load it)."""

    def __init__(self, config, workdir, step, out, verdict, files):
        """`verdict`: (threshold, image score name, rim) deciding each image."""
        self.config, self.workdir, self.step = config, workdir, step
        self.verdict, self.out, self.files = verdict, out, files
        self.names = _output_names(files)
        self.size = config.data.image_size
        self.resize = config.data.get("resize", "square")
        self.scorer = None
        # the per-position reference evaluation chose (score.reference), or None
        self.ref = reference.load(workdir_lib.eval_dir(workdir) / reference.FILE)

    def _read(self, lo: int, hi: int, skipped: list) -> list:
        """[(input index, uint8 image, original (h, w))] of the readable files[lo:hi]."""
        loaded = []
        for i in range(lo, hi):
            f = self.files[i]
            try:
                image = images.load_image(f, self.size, self.resize)
                loaded.append((i, image, images.original_size(f)))
            except images.ImageError as e:
                logging.warning("skipped %s", e)
                skipped.append({"path": str(f), "reason": str(e)})
        return loaded

    def batch(self, lo: int, hi: int, skipped: list) -> list[dict]:
        """Writes the outputs of files[lo:hi]; returns the rows of the readable ones, in order."""
        loaded = self._read(lo, hi, skipped)
        if not loaded:
            return []
        if self.scorer is None:
            _, variables = inference.restore_variables(self.config, self.workdir, self.step)
            parts = reference.parts(self.ref) > 1  # a reference of each of the map's parts
            self.scorer = inference.Scorer(self.config, variables, components=parts)
        batch = [x for _, x, _ in loaded]  # keep_aspect: shapes differ; grouped by the Scorer
        batch = np.stack(batch) if self.resize == "square" else batch
        rows = [None] * len(loaded)
        for idx, maps in self.scorer.batches(batch):
            for j, amap in zip(idx, maps, strict=True):
                i, _, (h, w) = loaded[j]
                vh, vw = images.scaled_size((h, w), self.size, self.resize)  # crop the padding
                amap = reference.apply(self.ref, amap[:vh, :vw])
                rows[j] = _write_one(
                    self.out, self.files[i], amap, (h, w), self.verdict, self.names[i]
                )
        return rows


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


def _write_one(out, path, map_hxw, hw, verdict, stem) -> dict:
    """Writes one image's outputs; `map_hxw` is its map at the resized (valid) resolution,
    which gives the image's score (`image_score.image_scores` by `verdict`'s score and rim)."""
    threshold, how, rim = verdict
    h, w = hw
    full = np.asarray(Image.fromarray(map_hxw.astype(np.float32)).resize((w, h), Image.BILINEAR))
    np.save(out / f"{stem}_map.npy", full)
    Image.fromarray(pictures.heat(full, threshold)).save(out / f"{stem}_map.png")
    mask = full >= threshold
    Image.fromarray((mask * 255).astype(np.uint8)).save(out / f"{stem}_mask.png")
    score = float(image_score.image_scores(map_hxw, how, rim)[0])
    return {
        "path": str(path),
        "output": stem,
        "score": score,
        "defective": bool(score >= threshold),
        "defect_fraction": float(mask.mean()),
    }
