"""jax.export artifacts: same maps as the library, a loader without the model code, checks."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import untrained_workdir

from cmaae_jax import export, export_loader, image_score, images, inference, model, scoring
from cmaae_jax import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def _library_maps(config, variables, images_u8):
    net = model.from_config(config)
    method = {"auto": "msfr"}.get(config.score.method, config.score.method)  # no reference
    fn = scoring.make_map_fn(net, method, tuple(config.score.scales))
    return np.asarray(fn(variables, images.to_float(images_u8)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir (config.json, one checkpoint) without training: initial weights."""
    return untrained_workdir(tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("method", ["msfr", "pixel"])
def test_exported_function_gives_the_library_maps(workdir, tmp_path, method):
    config = workdir_lib.load_config(workdir)
    config.score.method = method
    _, variables = inference.restore_variables(config, workdir)
    path = tmp_path / "m.jaxexport"
    meta = export.save(path, config, variables, threshold=0.05, batch=2, checkpoint_step=1)
    side = json.loads(export_loader.sidecar_path(path).read_text())
    assert side == meta and side["threshold"] == 0.05 and side["method"] == method
    assert side["input"]["shape"] == [2, 64, 64, 3] and side["platforms"] == ["cpu"]

    mapper = export_loader.load(path)
    x = _images(3)  # 3 images through a batch-2 function: chunked and padded
    maps = mapper(x)
    want = _library_maps(config, variables, x)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(mapper.masks(maps), maps >= 0.05)
    np.testing.assert_allclose(mapper.scores(maps), want.max(axis=(1, 2)), rtol=1e-5)
    assert side["image_score"] == "max" and side["image_top_share"] == 0.0
    if method != "msfr":
        return
    # evaluation's `top` image score travels with the artefact: the loader's scores are the
    # mean of each map's highest 0.03% (at least one pixel: 1 of 64 x 64 here, by hand: 2 of
    # a 100 x 100 map once the share is larger)
    top = export.save(tmp_path / "t.jaxexport", config, variables, 0.05, 2, image_score="top")
    assert top["image_top_share"] == image_score.TOP_SHARE and "highest" in top["decision"]
    np.testing.assert_allclose(
        export_loader.load(tmp_path / "t.jaxexport").scores(maps),
        image_score.image_scores(maps, "top"),
    )
    inner = export.save(
        tmp_path / "i.jaxexport", config, variables, 0.05, 2, image_score="top_inner", image_rim=3
    )
    assert inner["image_rim"] == 3 and "image_rim pixels" in inner["decision"]
    assert top["image_rim"] == 0  # only top_inner leaves a rim out
    wide = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    assert export_loader.top_mean(wide, 0.0002) == pytest.approx((9_999 + 9_998) / 2)
    # float input in [-1, 1], a single image, a grayscale batch: the same contract.
    np.testing.assert_allclose(mapper(images.to_float(x)), maps, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mapper(x[0]), maps[:1], rtol=1e-6, atol=1e-7)
    gray = x[..., 0]
    np.testing.assert_allclose(
        mapper(gray), _library_maps(config, variables, np.repeat(gray[..., None], 3, -1)), 1e-5
    )


_STANDALONE = textwrap.dedent(
    """
    import importlib.util, sys
    import numpy as np
    # The training code is not there: importing any of it fails.
    for name in ("flax", "optax", "orbax", "chex", "ml_collections", "PIL", "cmaae_jax"):
        sys.modules[name] = None
    spec = importlib.util.spec_from_file_location("standalone_export", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mapper = mod.load(sys.argv[2])
    maps = mapper(np.load(sys.argv[3]))
    np.save(sys.argv[4], maps)
    print("threshold", mapper.threshold, "masks", int(mapper.masks(maps).sum()))
    """
)


def test_cli_export_then_run_without_the_model_code(workdir, tmp_path):
    out = tmp_path / "art" / "cmaae.jaxexport"
    cmd = [sys.executable, str(ROOT / "launch" / "export.py"), f"--workdir={workdir}"]
    cmd += [f"--output={out}", "--batch=2", "--threshold=0.02"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exported checkpoint 1" in r.stdout and out.is_file()

    x = _images(5, seed=1)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(_STANDALONE)
    args = [str(ROOT / "cmaae_jax" / "export_loader.py"), str(out), str(tmp_path / "x.npy")]
    args.append(str(tmp_path / "maps.npy"))
    r = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=""),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "threshold 0.02" in r.stdout
    config = workdir_lib.load_config(workdir)
    _, variables = inference.restore_variables(config, workdir)
    want = _library_maps(config, variables, x)
    np.testing.assert_allclose(np.load(tmp_path / "maps.npy"), want, rtol=1e-5, atol=1e-7)


def test_a_damaged_or_misused_artifact_is_a_clear_error(workdir, tmp_path):
    config = workdir_lib.load_config(workdir)
    _, variables = inference.restore_variables(config, workdir)
    path = tmp_path / "m.jaxexport"
    export.save(path, config, variables, threshold=0.1, batch=1)  # keep_aspect, the default
    with pytest.raises(export_loader.ExportError, match="sides are at most 64"):
        export_loader.load(path)(np.zeros((2, 128, 128, 3), np.uint8))
    config.data.resize = "square"
    export.save(path, config, variables, threshold=0.1, batch=1)
    mapper = export_loader.load(path)
    with pytest.raises(export_loader.ExportError, match=r"\[N, 64, 64, 3\].*resize them to 64x64"):
        mapper(np.zeros((2, 128, 128, 3), np.uint8))
    with pytest.raises(export_loader.ExportError, match="dtype int64"):
        mapper(np.zeros((1, 64, 64, 3), np.int64))
    with pytest.raises(export_loader.ExportError, match="platforms"):
        export.save(tmp_path / "x", config, variables, 0.1, platforms=["tpu9"])
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(export_loader.ExportError, match="corrupt or truncated"):
        export_loader.load(path)
    export_loader.sidecar_path(path).unlink()
    with pytest.raises(export_loader.ExportError, match="sidecar"):
        export_loader.load(path)


def test_both_loaders_score_images_as_evaluation_does():
    """The ONNX loader restates the image score (it needs neither jax nor the package): with
    the sidecar's `image_top_share` (and `image_rim`) both loaders give `image_score`'s `top`
    (`top_inner`), without them the maximum. The ONNX session is not needed for scores."""
    from cmaae_jax import export_onnx

    maps = np.random.default_rng(8).random((3, 100, 100)).astype(np.float32)
    share = image_score.TOP_SHARE
    for rim, how in ((0, "top"), (0, "max"), (4, "top_inner")):
        meta = {"threshold": 0.5, "image_size": 100, "batch": 1, "image_rim": rim}
        meta["image_top_share"] = 0.0 if how == "max" else share
        onnx_mapper = export_onnx.OnnxMapper(session=None, meta=meta)
        want = image_score.image_scores(maps, how, rim)
        np.testing.assert_allclose(onnx_mapper.scores(maps), want, rtol=1e-6)
        got = [export_loader.top_mean(m, meta["image_top_share"], rim) for m in maps]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # by hand: the rim's 4 px out, 92 x 92 = 8,464 pixels, the top 3 (0.0003 x 8,464 = 2.54)
    by_hand = [np.sort(m[4:96, 4:96].ravel())[-3:].mean() for m in maps]
    np.testing.assert_allclose(want, by_hand, rtol=1e-6)
    old = export_onnx.OnnxMapper(None, {"threshold": 0.5, "image_size": 100, "batch": 1})
    np.testing.assert_array_equal(old.scores(maps), maps.max(axis=(1, 2)))  # no share: max


def test_scorer_divides_by_the_median_on_the_host_as_the_device_would(workdir):
    """score.normalize=median: the Scorer takes the maps undivided and divides on the host;
    the maps are the device's (the exported function's) to float rounding. With a flip the
    device divides (each pass's map is divided before the two are averaged)."""
    config = workdir_lib.load_config(workdir)
    config.score.method, config.score.normalize = "pixel", "median"
    _, variables = inference.restore_variables(config, workdir)
    scorer = inference.Scorer(config, variables)
    assert scorer.median_on_host
    x = _images(3)
    net = model.from_config(config)
    on_device = scoring.make_map_fn(net, "pixel", normalize="median")(variables, images.to_float(x))
    np.testing.assert_allclose(scorer(x), np.asarray(on_device), rtol=1e-5, atol=1e-7)
    config.score.flip = "horizontal"
    assert not inference.Scorer(config, variables).median_on_host
