"""ONNX export: onnxruntime gives the library's maps; threshold and scaling travel with it."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import untrained_workdir

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")
onnx = pytest.importorskip("onnx")

from cmaae_jax import export_loader, export_onnx, inference, model, score_options, scoring  # noqa: E402
from cmaae_jax import workdir as workdir_lib  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _images(n, seed=0, size=64):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _library_maps(config, variables, images_u8):
    """The library's maps (the model's own CPU convolutions), images scaled by hand."""
    s = config.score
    fn = scoring.make_map_fn(
        model.from_config(config), {"auto": "msfr"}.get(s.method, s.method), tuple(s.scales),
        normalize=s.normalize,
        stride=s.stride,
    )  # fmt: skip
    return np.asarray(fn(variables, images_u8.astype(np.float32) / 127.5 - 1.0))


def _assert_close(got, want):
    # Measured: max |diff| 3.7e-9 (msfr, maps up to 1.3e-2), 4.8e-7 (pixel, median-normalized,
    # maps up to 2.0): float32 rounding of native vs the model's CPU convolutions.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir (config.json, one checkpoint) without training: initial weights."""
    return untrained_workdir(tmp_path_factory.mktemp("export_onnx"), data__resize="square")


def test_onnxruntime_gives_the_library_maps_and_carries_the_threshold(workdir, tmp_path):
    config = workdir_lib.load_config(workdir)
    config.score.method, config.score.normalize, config.score.stride = "pixel", "median", 32
    _, variables = inference.restore_variables(config, workdir)
    config.data.image_size = 128  # 3 x 3 overlapping windows blended (64: one window)
    path = tmp_path / "m.onnx"
    side = export_onnx.save_onnx(path, config, variables, threshold=0.05, batch=2)
    assert json.loads(export_loader.sidecar_path(path).read_text()) == side
    assert side["format"] == "onnx" and side["threshold"] == 0.05
    assert side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert float(props["threshold"]) == 0.05 and props["input_scaling"] == export_loader.SCALING
    assert json.loads(props["cmaae_jax"])["stride"] == 32

    # Plain onnxruntime, as a C++/C# user would call it: named tensors, fixed batch of 2.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _images(2, size=128)
    (maps,) = session.run(["maps"], {"images": x.astype(np.float32) / 127.5 - 1.0})
    want = _library_maps(config, variables, x)
    assert maps.shape == (2, 128, 128) and maps.dtype == np.float32
    _assert_close(maps, want)

    mapper = export_onnx.load_onnx(path)  # 3 images through a batch of 2: chunked, padded
    x3 = _images(3, seed=1, size=128)
    got = mapper(x3)
    _assert_close(got, _library_maps(config, variables, x3))
    np.testing.assert_array_equal(mapper.masks(got), got >= 0.05)
    np.testing.assert_array_equal(mapper.scores(got), got.max(axis=(1, 2)))
    with pytest.raises(export_loader.ExportError, match=r"\[N, 128, 128, 3\]"):
        mapper(np.zeros((1, 32, 32, 3), np.uint8))
    path.with_name("junk.onnx").write_bytes(b"not a model")
    with pytest.raises(export_loader.ExportError, match="not a loadable ONNX model"):
        export_onnx.load_onnx(path.with_name("junk.onnx"))


_STANDALONE = textwrap.dedent(
    """
    import importlib.util, sys
    import numpy as np
    # Neither jax nor the training code is there: importing any of it fails.
    for name in ("jax", "jaxlib", "flax", "optax", "orbax", "jax2onnx", "cmaae_jax"):
        sys.modules[name] = None
    spec = importlib.util.spec_from_file_location("standalone_onnx", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mapper = mod.load_onnx(sys.argv[2])
    np.save(sys.argv[4], mapper(np.load(sys.argv[3])))
    print("threshold", mapper.threshold)
    """
)


def test_cli_export_onnx_then_run_without_jax(workdir, tmp_path):
    out = tmp_path / "art" / "cmaae.onnx"
    cmd = [sys.executable, str(ROOT / "launch" / "export.py"), f"--workdir={workdir}"]
    cmd += [f"--output={out}", "--format=onnx", "--threshold=0.02"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exported checkpoint 1" in r.stdout and "ONNX" in r.stdout and out.is_file()

    x = _images(3, seed=2)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(_STANDALONE)
    args = [str(ROOT / "cmaae_jax" / "export_onnx.py"), str(out), str(tmp_path / "x.npy")]
    r = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), *args, str(tmp_path / "maps.npy")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=""),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "threshold 0.02" in r.stdout
    config = workdir_lib.load_config(workdir)  # msfr, no normalization, stride 32
    _, variables = inference.restore_variables(config, workdir)
    _assert_close(np.load(tmp_path / "maps.npy"), _library_maps(config, variables, x))


def test_onnx_applies_a_zscore_reference_to_the_aligned_method(workdir, tmp_path):
    config = workdir_lib.load_config(workdir)
    config.score.method = score_options.ALIGNED_METHOD  # what `auto` scores aligned images with
    _, variables = inference.restore_variables(config, workdir)
    mean = np.linspace(0, 1e-3, 64 * 64, dtype=np.float32).reshape(64, 64)
    spread = np.linspace(0.5, 2, 64 * 64, dtype=np.float32).reshape(64, 64)
    path = tmp_path / "z.onnx"
    ref = [mean, spread, 2 * mean, 3 * spread]  # one for each of msfr_pixel's parts
    side = export_onnx.save_onnx(path, config, variables, 0.1, batch=2, reference=ref)
    assert side["reference"] == {"shape": [64, 64], "kind": "zscore", "parts": 2}
    assert side["method"] == score_options.ALIGNED_METHOD
    x = _images(2, seed=4)
    got = export_onnx.load_onnx(path)(x)
    parts = inference.Scorer(config, variables, components=True)(x)
    want = 0.5 * ((parts[..., 0] - mean) / spread + (parts[..., 1] - 2 * mean) / (3 * spread))
    _assert_close(got, want)
