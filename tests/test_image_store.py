"""The on-disk training image store (`data.stream`): its rows, staleness, atomic builds,
per-process shards, bounded memory, and a streamed training run."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from cmaae_jax import configlib, datasets, image_store, layouts, train
from cmaae_jax import sampler as sampler_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, hw, seed, gray=False):
    """A random-noise image file of height x width `hw` (grayscale or RGB); returns its path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (*hw, 1) if gray else (*hw, 3), dtype=np.uint8)
    Image.fromarray(a[..., 0] if gray else a).save(path)
    return str(path)


def _entries(paths):
    return [layouts.Entry(p, None, 0, "good") for p in paths]


def _expected(path, s, resize):
    """(S x S x 3 record, valid (h, w)) by PIL and numpy alone: the image resized (square: to
    S x S; keep_aspect: long side S, short side rounded halves up), reflected into S x S."""
    img = Image.open(path)
    H, W = img.height, img.width
    if resize == "square":
        h = w = s
    else:
        h, w = (max(1, int(np.floor(side * s / max(H, W) + 0.5))) for side in (H, W))
    a = np.asarray(img.resize((w, h), Image.BILINEAR))
    a = np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a
    return np.pad(a, ((0, s - h), (0, s - w), (0, 0)), mode="reflect"), (h, w)


# Height x width, gray: wide, tall, very wide (padding longer than the image), square, grayscale.
SHAPES = [((80, 96), False), ((96, 80), False), ((70, 300), False), ((64, 64), False)]
SHAPES += [((128, 100), True)]


@pytest.mark.parametrize("resize", ["square", "keep_aspect"])
def test_rows_equal_the_decoded_images(tmp_path, resize):
    s = 128
    paths = [_write(tmp_path / f"im{i}.png", hw, i, g) for i, (hw, g) in enumerate(SHAPES)]
    store = image_store.open_or_build(_entries(paths), tmp_path / "cache", s, resize)
    assert len(store) == 5 and store.paths == paths
    rows = store.rows([4, 0, 2, 2])  # any order, repeats allowed
    split = layouts.read_entries(_entries(paths), s, resize=resize)
    for j, i in enumerate([4, 0, 2, 2]):
        want, (h, w) = _expected(paths[i], s, resize)
        np.testing.assert_array_equal(rows[j], want)
        # The same as what the in-memory path decodes, placed in its canvas.
        valid = split.images[i][:h, :w]
        np.testing.assert_array_equal(
            rows[j], np.pad(valid, ((0, s - h), (0, s - w), (0, 0)), "reflect")
        )
    if resize == "square":
        assert store.sizes is None
    else:
        want_sizes = [_expected(p, s, resize)[1] for p in paths]
        assert store.sizes.tolist() == [list(hw) for hw in want_sizes]
        assert want_sizes[2] == (30, 128)  # 70 x 300: 29.87 rows, reflected again and again
    data_path, index_path = image_store.store_paths(tmp_path / "cache", s, resize)
    assert os.path.getsize(data_path) == 5 * s * s * 3
    assert json.loads(open(index_path).read())["paths"] == paths
    with pytest.raises(IndexError):
        store.rows([5])


def test_stale_store_is_rebuilt_and_a_fresh_one_reused(tmp_path, monkeypatch):
    s, cache = 64, tmp_path / "cache"
    paths = [_write(tmp_path / "d" / f"im{i}.png", (64, 80), i) for i in range(3)]
    image_store.open_or_build(_entries(paths), cache, s, "keep_aspect").close()
    built = []
    real_build = image_store.build
    monkeypatch.setattr(image_store, "build", lambda *a: built.append(1) or real_build(*a))
    image_store.open_or_build(_entries(paths), cache, s, "keep_aspect").close()
    assert built == []  # unchanged files: the store is reused
    # A file added, and one changed in place (same size, other pixels, another mtime).
    paths.append(_write(tmp_path / "d" / "im3.png", (100, 64), 3))
    st = os.stat(paths[1])
    _write(paths[1], (64, 80), 99)
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    store = image_store.open_or_build(_entries(paths), cache, s, "keep_aspect")
    assert built == [1] and len(store) == 4
    for i in range(4):
        np.testing.assert_array_equal(store.rows([i])[0], _expected(paths[i], s, "keep_aspect")[0])
    assert store.sizes.tolist() == [[51, 64]] * 3 + [[64, 41]]  # 64 x 80: 51.2 rows
    # The old listing (one file fewer) does not open the new store.
    assert image_store.open_store(_entries(paths[:3]), cache, s, "keep_aspect") is None


def test_interrupted_build_leaves_no_store_that_opens(tmp_path, monkeypatch):
    s, cache = 64, tmp_path / "cache"
    paths = [_write(tmp_path / "d" / f"im{i}.png", (64, 64), i) for i in range(4)]
    entries = _entries(paths)
    image_store.open_or_build(entries, cache, s, "square").close()  # a complete old store
    _write(paths[0], (64, 64), 50)
    os.utime(paths[0], ns=(0, os.stat(paths[2]).st_mtime_ns + 10**9))
    monkeypatch.setattr(image_store, "CHUNK_BYTES", s * s * 3)  # one image per chunk
    real_read, calls = layouts.read_entries, []

    def failing_read(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("writer interrupted")
        return real_read(*args, **kwargs)

    monkeypatch.setattr(layouts, "read_entries", failing_read)
    with pytest.raises(RuntimeError, match="writer interrupted"):
        image_store.open_or_build(entries, cache, s, "square")
    assert image_store.open_store(entries, cache, s, "square") is None
    assert os.listdir(cache) == []  # neither the old store nor temporary files
    monkeypatch.setattr(layouts, "read_entries", real_read)
    store = image_store.open_or_build(entries, cache, s, "square")
    np.testing.assert_array_equal(store.rows([0])[0], _expected(paths[0], s, "square")[0])


def test_killed_build_leaves_no_store_that_opens(tmp_path):
    # A real kill (SIGKILL, no clean-up) in the middle of writing the records.
    paths = [_write(tmp_path / "d" / f"im{i}.png", (64, 64), i) for i in range(4)]
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from cmaae_jax import image_store, layouts
        image_store.CHUNK_BYTES = 64 * 64 * 3
        real, calls = layouts.read_entries, []
        def read(*a, **k):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        layouts.read_entries = read
        entries = [layouts.Entry(p, None, 0, "good") for p in {paths!r}]
        image_store.open_or_build(entries, {str(tmp_path / "cache")!r}, 64, "square")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    left = os.listdir(tmp_path / "cache")
    assert left and all(".tmp" in name for name in left)  # a partial record file, no index
    assert image_store.open_store(_entries(paths), tmp_path / "cache", 64, "square") is None
    store = image_store.open_or_build(_entries(paths), tmp_path / "cache", 64, "square")
    np.testing.assert_array_equal(store.rows([3])[0], _expected(paths[3], 64, "square")[0])


def test_three_process_shards_are_disjoint_cover_all_and_draw_their_own(tmp_path):
    s, num = 64, 3
    paths = [_write(tmp_path / "d" / f"im{i}.png", (64, 64 + 8 * i), i) for i in range(7)]
    want = {p: _expected(p, s, "keep_aspect") for p in paths}
    stores = [
        image_store.open_or_build(_entries(paths), tmp_path / "c", s, "keep_aspect", p, num)
        for p in range(num)
    ]
    assert [st.paths for st in stores] == [paths[0::3], paths[1::3], paths[2::3]]
    seen = [p for st in stores for p in st.paths]
    assert sorted(seen) == sorted(paths) and len(set(seen)) == len(paths)
    files = sorted(os.listdir(tmp_path / "c"))
    assert [f for f in files if f.endswith(".u8")] == [
        f"train-keep_aspect-64-shard{p}of3.u8" for p in range(3)
    ]
    assert jax.device_count() == 4
    for p, st in enumerate(stores):
        sampler = sampler_lib.Sampler(st, 8, seed=5)
        for step in (0, 7):
            b, sizes = sampler.draw(step)
            assert b.shape == (4, 2, s, s, 3) and sizes.shape == (4, 2, 2)
            idx = np.sort(np.random.default_rng([5, step, p]).integers(0, len(st), 8))
            for row, hw, i in zip(b.reshape(8, s, s, 3), sizes.reshape(8, 2), idx, strict=True):
                image, valid = want[paths[p + num * i]]  # entry i of shard p
                np.testing.assert_array_equal(row, image)
                assert tuple(hw) == valid


def _status_bytes(field):
    """VmRSS / VmHWM of this process, from /proc/self/status (kB there)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    pytest.skip(f"no {field} in /proc/self/status")


def test_building_and_drawing_keep_host_memory_bounded(tmp_path, monkeypatch):
    s, n = 256, 1200
    store_bytes = n * s * s * 3  # 225 MiB
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "d")
    paths = [str(tmp_path / "d" / f"im{i:03d}.bmp") for i in range(n)]
    for path in paths:  # uncompressed BMP: quick to write and decode
        Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(image_store, "CHUNK_BYTES", 2 << 20)  # 10 images decoded at a time
    try:  # resets VmHWM (the peak) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak_known = True
    except OSError:
        peak_known = False
    before = _status_bytes("VmRSS")
    store = image_store.open_or_build(_entries(paths), tmp_path / "cache", s, "square")
    build_peak = _status_bytes("VmHWM") - before
    sampler = sampler_lib.Sampler(store, 16, seed=1)
    sampler.draw(0)
    before, checksum = _status_bytes("VmRSS"), 0
    for step in range(1, 301):  # 4800 rows: every record is read about 4 times
        checksum += int(sampler.batch(step)[:, :, 0, 0, 0].sum())
    grown = _status_bytes("VmRSS") - before
    print(
        f"store {store_bytes / 2**20:.1f} MiB; peak RSS growth while building "
        f"{build_peak / 2**20:.2f} MiB; RSS growth over 300 draws {grown / 2**20:.2f} MiB"
    )
    assert checksum > 0 and grown < store_bytes / 4
    if peak_known:
        assert build_peak < store_bytes / 4
    # The measurement sees mapped file pages: the same draws through a memory map grow the RSS
    # by most of the store.
    data_path, _ = image_store.store_paths(tmp_path / "cache", s, "square")
    mapped = np.memmap(data_path, np.uint8, "r", shape=(n, s, s, 3))
    before = _status_bytes("VmRSS")
    for step in range(1, 301):
        checksum += int(mapped[sampler.indices(step)][:, 0, 0, 0].sum())
    grown_mapped = _status_bytes("VmRSS") - before
    print(f"the same draws through np.memmap: RSS growth {grown_mapped / 2**20:.2f} MiB")
    assert grown_mapped > store_bytes / 2
    del mapped
    store.close()


def _configs(data):
    memory_config = tiny_config(data, train__stage1_steps=2, train__stage2_steps=2)
    stream_config = tiny_config(data, train__stage1_steps=2, train__stage2_steps=2)
    stream_config.data.stream = True
    return memory_config, stream_config


def _refuse_to_decode(monkeypatch):
    def refuse(config):
        raise AssertionError("data.stream decoded the splits")

    monkeypatch.setattr(datasets, "load_splits", refuse)


def test_stream_sampler_draws_the_in_memory_batches_without_decoding(tmp_path, monkeypatch):
    memory_config, stream_config = _configs(tmp_path / "data")
    in_memory = sampler_lib.make_sampler(memory_config, tmp_path / "memory")  # writes the tree
    names = [os.path.basename(e.path) for e in datasets.list_train_entries(stream_config)]
    want = [os.path.basename(p) for p in datasets.load_splits(memory_config)["train"].paths]
    assert names == want and len(names) == 12  # 16 images, 4 held out for validation
    _refuse_to_decode(monkeypatch)
    streamed = sampler_lib.make_sampler(stream_config, tmp_path / "stream")
    assert isinstance(streamed.source, image_store.ImageStore)
    assert sorted(os.listdir(tmp_path / "stream" / "image_store")) == [
        "train-keep_aspect-64-shard0of1.json",
        "train-keep_aspect-64-shard0of1.u8",
    ]
    for step in range(4):
        (a, sa), (b, sb) = in_memory.draw(step), streamed.draw(step)
        assert b.dtype == np.uint8 and b.shape == (4, 2, 64, 64, 3)
        assert sb.dtype == np.int32 and sb.shape == (4, 2, 2)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)
    streamed.source.close()
    # data.cache_dir moves the store.
    stream_config.data.cache_dir = str(tmp_path / "elsewhere")
    sampler_lib.make_sampler(stream_config, tmp_path / "stream").source.close()
    assert len(os.listdir(tmp_path / "elsewhere")) == 2


@pytest.mark.slow
def test_stream_training_ends_with_the_in_memory_parameters(tmp_path, monkeypatch):
    # Stage 1 only: stage 2 draws its images from the same sampler (the draws of steps in
    # both stages are compared above); its pastes are made on the device from the bank.
    memory_config, stream_config = _configs(tmp_path / "data")
    for config in (memory_config, stream_config):
        config.train.stage1_steps, config.train.stage2_steps = 3, 0
    ref = train.train(memory_config, str(tmp_path / "memory"))
    _refuse_to_decode(monkeypatch)
    got = train.train(stream_config, str(tmp_path / "stream"))
    assert int(got.step) == int(ref.step) == 3
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stream_options_are_validated(tmp_path):
    config = tiny_config(tmp_path)
    for field, value in (("stream", "yes"), ("cache_dir", 3)):
        c = tiny_config(tmp_path)
        del c.data[field]
        c.data[field] = value
        with pytest.raises(configlib.ConfigError, match=f"data.{field}"):
            configlib.validate(c)
    config.data.stream, config.data.use_tfds, config.data.format = True, True, "mvtec"
    with pytest.raises(configlib.ConfigError, match="data.stream.*use_tfds"):
        configlib.validate(config)
    with pytest.raises(layouts.DatasetError, match="data.use_tfds"):
        datasets.list_train_entries(config)
    with pytest.raises(layouts.DatasetError, match="process 3 of 4"):
        image_store.open_or_build(_entries(["a", "b", "c"]), tmp_path, 64, "square", 3, 4)
