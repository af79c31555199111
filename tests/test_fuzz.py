"""Malformed input: readers, datasets and the command-line tools answer with one clear line.

* Fuzzing: valid PNG/JPEG/BMP/TIFF/GIF/16-bit files, truncated at random offsets and with
  random bytes overwritten, give an image or an ImageError, never another exception or a hang.
* The named cases (zero bytes, truncated PNG, wrong extension, a header declaring huge
  dimensions, a 1x1 image, non-image files, a FIFO) through datasets, launch/train.py and
  launch/predict.py: a message naming the file, no traceback, no hang.
* Impossible config values stop launch/train.py before anything is compiled, naming the field.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from conftest import untrained_workdir
from PIL import Image

from cmaae_jax import datasets, images, layouts

ROOT = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _time_limit(seconds, what):
    def fail(*_):
        raise TimeoutError(f"{what} did not finish in {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _encode(array, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _seeds():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    deep = Image.fromarray(rng.integers(0, 65535, (66, 80), dtype=np.uint16))
    buf = io.BytesIO()
    deep.save(buf, format="PNG")
    return {
        ".png": _encode(rgb, "PNG"),
        ".jpg": _encode(rgb, "JPEG", quality=90),
        ".bmp": _encode(rgb, "BMP"),
        ".tif": _encode(rgb, "TIFF", compression="tiff_lzw"),
        ".gif": _encode(rgb[..., 0], "GIF"),
        ".16.png": buf.getvalue(),
    }


def _mutants(blob, rng, n):
    cuts = rng.choice(np.arange(1, len(blob)), size=n, replace=False)
    for k in sorted(cuts):
        yield f"cut{k}", blob[:k]
    for i in range(n):
        b = bytearray(blob)
        where = rng.integers(0, min(len(b), 256) if i % 2 else len(b), rng.integers(1, 9))
        for j in where:
            b[j] = rng.integers(0, 256)
        yield f"bytes{i}", bytes(b)


def test_fuzzed_files_give_an_image_or_an_image_error(tmp_path):
    rng = np.random.default_rng(1)
    outcomes = {"image": 0, "ImageError": 0}
    for ext, blob in _seeds().items():
        for name, data in _mutants(blob, rng, 20):
            path = tmp_path / f"{name}{ext}"
            path.write_bytes(data)
            with warnings.catch_warnings(), _time_limit(10, path.name):
                warnings.simplefilter("ignore")
                try:
                    out = images.load_image(path, 64)
                except images.ImageError as e:
                    assert path.name in str(e)
                    outcomes["ImageError"] += 1
                    continue
                assert out.shape == (64, 64, 3) and out.dtype == np.uint8
                outcomes["image"] += 1
                images.load_mask(path, 64)  # a decodable file is a decodable mask too
    print(outcomes)
    assert outcomes["ImageError"] > 100 and sum(outcomes.values()) == 6 * 40


def _png_header(width, height):
    """A PNG that declares width x height with a tiny data chunk."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _bad_folder(folder, with_good=True):
    """One file of each kind of trouble, and the message each one must give."""
    folder.mkdir(parents=True, exist_ok=True)
    png = _encode(np.random.default_rng(2).integers(0, 256, (96, 96, 3), dtype=np.uint8), "PNG")
    if with_good:
        (folder / "good.png").write_bytes(png)
        (folder / "png_named.jpg").write_bytes(png)  # wrong extension, readable content
    expected = {
        "zero.png": (b"", "empty (0 bytes)"),
        "truncated.png": (png[: len(png) // 2], "cannot decode image data"),
        "text.jpg": (b"not an image at all\n", "not a readable image"),
        "huge.png": (_png_header(200_000, 200_000), "refused, declared size is too large"),
        "large.png": (_png_header(12_000, 12_000), "12000x12000 = 144 megapixels"),
        "tiny.png": (_encode(np.zeros((1, 1, 3), np.uint8), "PNG"), "1x1, smaller than"),
    }
    for name, (data, _) in expected.items():
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("a side file")
    return {name: why for name, (_, why) in expected.items()}


def test_each_bad_file_has_its_own_message(tmp_path):
    for name, why in _bad_folder(tmp_path).items():
        with pytest.raises(images.ImageError, match=re.escape(why)) as e:
            images.load_image(tmp_path / name, 64)
        assert str(e.value).startswith(str(tmp_path / name))
    assert images.load_image(tmp_path / "png_named.jpg", 64).shape == (64, 64, 3)
    with pytest.warns(UserWarning, match="skipped 1 file.*notes.txt"):
        listed = images.list_image_files(tmp_path)
    assert "notes.txt" not in {pathlib.Path(p).name for p in listed}


def test_dataset_with_a_bad_file_names_it(tmp_path):
    root = tmp_path / "data"
    _bad_folder(root / "good")
    with pytest.raises(layouts.DatasetError, match=r"good/\w+\.(png|jpg): "):
        datasets.load_folder(root, 64, 0.0, 0)
    with pytest.raises(layouts.DatasetError, match="not found; expected the layout"):
        datasets.load_folder(tmp_path / "elsewhere", 64, 0.0, 0)


def _run(args, env=None, timeout=300):
    env = dict(os.environ, JAX_LOG_COMPILES="1", **(env or {}))
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _finish(procs, timeout=300):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def _train_cmd(workdir, *overrides):
    base = ["launch/train.py", "--config=configs/default.py", f"--workdir={workdir}"]
    size = ["--config.data.image_size=64", "--config.anomaly.patch_size=32"]
    return base + ["--noevaluate", *size, *overrides]


@pytest.mark.slow
def test_train_cli_rejects_bad_config_and_bad_data_with_one_line(tmp_path):
    data = tmp_path / "data"
    _bad_folder(data / "good")
    cases = {
        "train.stage1_steps": ["--config.train.stage1_steps=-1"],
        "model.memory_size": ["--config.model.memory_size=0"],
        "data.image_size": ["--config.data.image_size=100"],
        "model.variant": ["--config.model.variant=lstm"],
        "unknown config field in a --config override: 'stage1_step'": [
            "--config.train.stage1_step=5"
        ],
        "dataset root": ["--config.data.format=folder", f"--config.data.root={tmp_path}/nope"],
        "data/good/": ["--config.data.format=folder", f"--config.data.root={data}"],
    }
    procs = [_run(_train_cmd(tmp_path / "w", *args)) for args in cases.values()]
    for (what, _), (code, _, err) in zip(cases.items(), _finish(procs), strict=True):
        assert code == 2, (what, err[-2000:])
        assert "Traceback" not in err and "Compiling" not in err, (what, err[-2000:])
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and what in lines[0], (what, err[-2000:])
    assert not (tmp_path / "w" / "checkpoints").exists()


def _workdir(root):
    """A workdir with config.json and one checkpoint of initial weights (no training)."""
    return untrained_workdir(root)


@pytest.mark.slow
def test_predict_skips_each_bad_input_with_its_reason(tmp_path):
    workdir = _workdir(tmp_path / "w")
    inputs = tmp_path / "in"
    expected = _bad_folder(inputs)
    (inputs / "sub").mkdir()
    (inputs / "sub" / "other.bmp").write_bytes((inputs / "good.png").read_bytes())
    (inputs / "sub" / "good.png").write_bytes((inputs / "good.png").read_bytes())  # same stem
    (inputs / ".hidden.png").write_bytes(b"")
    (inputs / "dir.png").mkdir()
    os.mkfifo(inputs / "fifo.png")  # reading it would block forever
    torn = tmp_path / "torn"  # a workdir whose eval/metrics.json was cut short
    (torn / "eval").mkdir(parents=True)
    (torn / "config.json").write_text((workdir / "config.json").read_text())
    (torn / "eval" / "metrics.json").write_text('{"threshold": 0.')
    out = tmp_path / "out"
    bare = ["launch/predict.py", f"--workdir={workdir}"]
    predict = [*bare, "--threshold=0.01"]
    procs = [
        _run([*predict, f"--input={inputs}", f"--output={out}"]),
        _run([*predict, f"--input={tmp_path}/none/*.png", f"--output={out}2"]),
        _run([*predict, f"--workdir={tmp_path}", f"--input={inputs}", f"--output={out}3"]),
        _run([*bare, f"--input={inputs}", f"--output={out}4"]),
        _run(["launch/predict.py", f"--workdir={torn}", f"--input={inputs}", f"--output={out}5"]),
    ]
    (code, stdout, err), *errors = _finish(procs)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    summary = json.loads((out / "scores.json").read_text())
    scored = {
        str(pathlib.Path(r["path"]).relative_to(inputs)): r["output"] for r in summary["images"]
    }
    assert scored == {
        "good.png": "good",
        "png_named.jpg": "png_named",
        "sub/good.png": "good-2",
        "sub/other.bmp": "other",
    }
    skipped = {pathlib.Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert skipped.keys() == set(expected) | {"notes.txt"}
    for name, why in expected.items():
        assert why in skipped[name], (name, skipped[name])
        assert f"skipped {inputs / name}" in err
    for stem in scored.values():
        assert (out / f"{stem}_map.npy").is_file() and (out / f"{stem}_mask.png").is_file()
    assert "scored 4 of 11 images" in stdout
    messages = ["no input files found", "a training workdir", "no threshold", "no readable"]
    for (code, _, err), message in zip(errors, messages, strict=True):
        assert code == 2 and "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("error: ") and message in err, err[-500:]
