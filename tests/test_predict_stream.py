"""Streaming prediction: bounded batches, the same outputs as scoring all at once, and a clear
error when no input is readable.

The model is an untrained (initialised) tiny CMA-AE saved as a checkpoint: prediction only
needs some fixed function of the image.
"""

import csv

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from cmaae_jax import checkpoint, images, inference, model, predict
from cmaae_jax import state as state_lib
from cmaae_jax import workdir as workdir_lib

NUM_FILES = 50
BATCH = 8  # score.batch_images 2 x the 4 virtual devices of conftest
SIZES = [(64, 64), (64, 96), (96, 64), (70, 80)]  # (h, w): keep_aspect pads all to 64 x 64
# The scaled (valid) size of each, long side 64: 64 * 64 / 96 = 42.7 -> 43, 70 * 64 / 80 = 56.
VALID = {(64, 64): (64, 64), (64, 96): (43, 64), (96, 64): (64, 43), (70, 80): (56, 64)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, config, input folder) with an initialised checkpoint and NUM_FILES PNGs."""
    tmp = tmp_path_factory.mktemp("stream")
    config = tiny_config(tmp / "data", model__latent_dim=16, score__batch_images=2)
    workdir = tmp / "work"
    workdir.mkdir()
    workdir_lib.save_config(workdir, config)
    mgr = checkpoint.manager(workdir, async_save=False)
    state = state_lib.init_state(config, model.from_config(config))
    checkpoint.save(mgr, 1, state, state_lib.checkpoint_meta(config, 1))
    checkpoint.wait(mgr)
    mgr.close()
    inputs = tmp / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(NUM_FILES):
        h, w = SIZES[i % len(SIZES)]
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(inputs / f"img{i:02d}.png")
    return workdir, config, inputs


def test_batches_are_bounded_and_outputs_match_scoring_all_at_once(run, tmp_path, monkeypatch):
    workdir, config, inputs = run
    held, most_held, calls = [0], [0], []
    real_load, real_batches = images.load_image, inference.Scorer.batches

    def load(*args, **kwargs):
        held[0] += 1
        most_held[0] = max(most_held[0], held[0])
        return real_load(*args, **kwargs)

    def batches(self, images_u8):
        calls.append(len(images_u8))
        held[0] = 0  # the batch read so far is being scored; the next one starts from zero
        yield from real_batches(self, images_u8)

    monkeypatch.setattr(images, "load_image", load)
    monkeypatch.setattr(inference.Scorer, "batches", batches)
    out = tmp_path / "pred"
    summary = predict.predict(workdir, str(inputs), out, threshold=0.05)
    monkeypatch.undo()

    assert most_held[0] == BATCH and max(calls) == BATCH
    assert calls == [8, 8, 8, 8, 8, 8, 2]  # 50 files in batches of 8
    with (out / "scores.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["output"] for r in rows] == [f"img{i:02d}" for i in range(NUM_FILES)]
    assert summary["num_scored"] == NUM_FILES and summary["skipped"] == []

    # The same files scored in one call of the scorer (every image at once, grouped by shape).
    few = [0, 1, 2, 3, 49]
    _, variables = inference.restore_variables(config, workdir)
    scorer = inference.Scorer(config, variables)
    loaded = [images.load_image(inputs / f"img{i:02d}.png", 64, "keep_aspect") for i in few]
    maps = scorer(loaded)
    for i, amap in zip(few, maps, strict=True):
        h, w = SIZES[i % len(SIZES)]
        vh, vw = VALID[(h, w)]
        want = float(amap[:vh, :vw].max())
        assert float(rows[i]["score"]) == pytest.approx(want, rel=1e-6), i
        assert rows[i]["defective"] == str(want >= 0.05)
        assert np.load(out / f"img{i:02d}_map.npy").shape == (h, w)


@pytest.mark.parametrize("recorded, rim", [('"top"', 0), ('"top_inner", "image_rim": 3', 3)])
def test_predict_scores_images_as_evaluation_did(run, tmp_path, recorded, rim):
    """metrics.json's `image_score` (`top`, or `top_inner` with its rim) decides predict's
    image scores: the mean of each valid map's highest share of pixels, `rim` pixels on every
    side left out first, by hand from the library's maps."""
    workdir, config, inputs = run
    few = tmp_path / "few"
    few.mkdir()
    for i in (0, 3):  # a 64 x 64 and a 70 x 80 input
        (few / f"img{i:02d}.png").write_bytes((inputs / f"img{i:02d}.png").read_bytes())
    eval_dir = workdir_lib.eval_dir(workdir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    path = workdir_lib.eval_metrics_path(workdir)
    path.write_text(f'{{"threshold": 0.05, "image_score": {recorded}}}')
    try:
        summary = predict.predict(workdir, str(few), tmp_path / "out")
    finally:
        path.unlink()
    assert summary["image_score"] == recorded.split('"')[1] and summary["image_rim"] == rim
    _, variables = inference.restore_variables(config, workdir)
    scorer = inference.Scorer(config, variables)
    for row, i in zip(summary["images"], (0, 3), strict=True):
        vh, vw = VALID[SIZES[i % len(SIZES)]]
        amap = scorer([images.load_image(few / f"img{i:02d}.png", 64, "keep_aspect")])[0]
        valid = np.sort(amap[rim : vh - rim, rim : vw - rim].ravel())[::-1]
        k = max(1, round(0.0003 * valid.size))
        assert row["score"] == pytest.approx(float(valid[:k].mean()), rel=1e-6), i
        assert row["defective"] == (row["score"] >= 0.05)


def test_top_inner_without_a_recorded_rim_is_refused(run, tmp_path):
    workdir, _, inputs = run
    workdir_lib.eval_dir(workdir).mkdir(parents=True, exist_ok=True)
    path = workdir_lib.eval_metrics_path(workdir)
    path.write_text('{"threshold": 0.05, "image_score": "top_inner"}')
    try:
        with pytest.raises(predict.PredictError, match="rim evaluation chooses"):
            predict.predict(workdir, str(inputs / "img00.png"), tmp_path / "out")
    finally:
        path.unlink()


def test_nothing_readable_is_an_error_naming_the_files(run, tmp_path):
    workdir, _, _ = run
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (bad / "b.jpg").write_bytes(b"")
    (bad / "notes.txt").write_text("hello")
    with pytest.raises(predict.PredictError, match="none of the 3 inputs") as e:
        predict.predict(workdir, str(bad), tmp_path / "out", threshold=0.05)
    for name in ("a.png", "b.jpg", "notes.txt"):
        assert str(bad / name) in str(e.value)
    assert not (tmp_path / "out" / "scores.csv").exists()
