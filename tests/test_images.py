"""Tests of cmaae_jax.images: modes, resizing, masks and every kind of bad file."""

import struct
import warnings
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cmaae_jax import images


def _save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _png_header_only(path, width, height):
    """A PNG whose header declares width x height, with a tiny (invalid for it) data chunk."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * 100)
    signature = b"\x89PNG\r\n\x1a\n"
    path.write_bytes(signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_rgb_png_same_size_is_unchanged(tmp_path):
    a = _noise((64, 64, 3))
    out = images.load_image(_save(tmp_path / "a.png", a), 64)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out, a)


def test_bmp_and_jpeg(tmp_path):
    a = _noise((64, 64, 3))
    np.testing.assert_array_equal(images.load_image(_save(tmp_path / "a.bmp", a), 64), a)
    smooth = np.zeros((64, 64, 3), np.uint8)
    smooth[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    smooth[..., 1] = 100
    out = images.load_image(_save(tmp_path / "a.JPG", smooth), 64)
    assert np.abs(out.astype(int) - smooth).mean() < 3


def test_grayscale_repeated_to_three_channels(tmp_path):
    a = _noise((64, 80))
    out = images.load_image(_save(tmp_path / "g.png", a), 64)
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    same = images.load_image(_save(tmp_path / "g2.png", a[:, :64]), 64)
    np.testing.assert_array_equal(same[..., 1], a[:, :64])


def test_sixteen_bit_scaled_to_eight(tmp_path):
    a = np.zeros((64, 96), np.uint16)
    a[:, 32:64] = 32768
    a[:, 64:] = 65535
    path = _save(tmp_path / "deep.png", a)
    assert Image.open(path).mode.startswith("I")
    out = images.load_image(path, 96)[..., 0]  # 96 wide: resize is only vertical, 64 -> 96
    assert out[:, :30].max() == 0
    assert abs(int(out[:, 34:62].min()) - 128) <= 1 and abs(int(out[:, 34:62].max()) - 128) <= 1
    assert out[:, 66:].min() == 255


def test_palette_png(tmp_path):
    index = np.zeros((64, 64), np.uint8)
    index[:, 32:] = 1
    img = Image.fromarray(index, mode="P")
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = images.load_image(tmp_path / "p.png", 64)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 63], [0, 0, 255])


def test_rgba_drops_alpha(tmp_path):
    a = _noise((64, 64, 4))
    a[:32, :, 3] = 0  # fully transparent rows keep their colour
    out = images.load_image(_save(tmp_path / "a.png", a, "RGBA"), 64)
    np.testing.assert_array_equal(out, a[..., :3])


def test_la_bilevel_and_cmyk(tmp_path):
    la = np.stack([_noise((64, 64)), _noise((64, 64), 1)], axis=-1)
    out = images.load_image(_save(tmp_path / "la.png", la, "LA"), 64)
    np.testing.assert_array_equal(out[..., 2], la[..., 0])

    bits = np.zeros((64, 64), bool)
    bits[10:20] = True
    Image.fromarray(bits).save(tmp_path / "b.png")
    out = images.load_image(tmp_path / "b.png", 64)
    assert out[15, 5, 0] == 255 and out[0, 0, 0] == 0

    cmyk = np.zeros((64, 64, 4), np.uint8)
    cmyk[:, 32:, 0] = 255  # full cyan: red gone
    _save(tmp_path / "c.tif", cmyk, "CMYK")
    out = images.load_image(tmp_path / "c.tif", 64)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 63], [0, 255, 255])


def test_resize_non_square(tmp_path):
    a = np.full((100, 200, 3), 77, np.uint8)
    a[:, 100:] = 200
    out = images.load_image(_save(tmp_path / "w.png", a), 64)
    assert out.shape == (64, 64, 3)
    assert (out[:, :28] == 77).all() and (out[:, 36:] == 200).all()


def test_original_size(tmp_path):
    assert images.original_size(_save(tmp_path / "a.png", _noise((70, 90)))) == (70, 90)


@pytest.mark.parametrize(
    "content,problem",
    [
        (b"", "empty"),
        (b"this is not an image at all\n" * 10, "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a readable image"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad_file.png"
    path.write_bytes(content)
    with pytest.raises(images.ImageError, match=problem) as info:
        images.load_image(path, 64)
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path):
    path = _save(tmp_path / "full.png", _noise((256, 256, 3)))
    data = path.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(images.ImageError, match="cannot decode") as info:
        images.load_image(cut, 64)
    assert str(cut) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(images.ImageError, match="not found"):
        images.load_image(tmp_path / "nope.png", 64)


def test_too_small(tmp_path):
    path = _save(tmp_path / "small.png", _noise((63, 100)))
    with pytest.raises(images.ImageError, match="smaller than the 64x64 patch") as info:
        images.load_image(path, 64)
    assert str(path) in str(info.value)


def test_huge_header_refused_without_decoding(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 12000, 12000)  # 144 MP, data is 100 bytes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(images.ImageError, match="refused.*144 megapixels") as info:
            images.load_image(path, 64)
        assert str(path) in str(info.value)
        with pytest.raises(images.ImageError, match="refused"):
            images.original_size(path)
    giant = _png_header_only(tmp_path / "giant.png", 50000, 50000)  # PIL's own limit
    with pytest.raises(images.ImageError, match="refused") as info:
        images.load_image(giant, 64)
    assert str(giant) in str(info.value)


def test_mask_0_255_and_0_1(tmp_path):
    m = np.zeros((64, 64), np.uint8)
    m[5:20, 30:40] = 255
    m[50, 50] = 100  # below half of 255: background
    out = images.load_mask(_save(tmp_path / "m.png", m), 64)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    expected = np.zeros((64, 64), np.uint8)
    expected[5:20, 30:40] = 1
    np.testing.assert_array_equal(out, expected)
    ones = images.load_mask(_save(tmp_path / "m01.png", expected), 64)
    np.testing.assert_array_equal(ones, expected)
    empty = images.load_mask(_save(tmp_path / "m0.png", np.zeros((64, 64), np.uint8)), 64)
    assert empty.max() == 0


def test_colour_and_small_masks(tmp_path):
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:20, :, 0] = 255  # red defect
    out = images.load_mask(_save(tmp_path / "red.png", rgb), 40)
    assert out[:20].min() == 1 and out[20:].max() == 0


def test_mask_nearest_resize(tmp_path):
    raw = (np.random.default_rng(3).random((100, 130)) > 0.7).astype(np.uint8) * 255
    out = images.load_mask(_save(tmp_path / "m.png", raw), 64)
    rows = np.floor((np.arange(64) + 0.5) * 100 / 64).astype(int)
    cols = np.floor((np.arange(64) + 0.5) * 130 / 64).astype(int)
    np.testing.assert_array_equal(out, (raw[rows][:, cols] > 0).astype(np.uint8))


def test_mask_size_mismatch(tmp_path):
    path = _save(tmp_path / "m_mask.png", np.zeros((70, 90), np.uint8))
    assert images.load_mask(path, 64, expected_hw=(70, 90)).shape == (64, 64)
    with pytest.raises(images.ImageError, match="90x70.*80x60") as info:
        images.load_mask(path, 64, expected_hw=(60, 80))
    assert str(path) in str(info.value)


def test_corrupt_mask(tmp_path):
    path = tmp_path / "m.png"
    path.write_bytes(b"garbage")
    with pytest.raises(images.ImageError, match="m.png"):
        images.load_mask(path, 64)


def test_load_pair(tmp_path):
    img = _save(tmp_path / "a.png", _noise((70, 90)))
    mask = np.zeros((70, 90), np.uint8)
    mask[:35] = 255
    image, m = images.load_pair(img, _save(tmp_path / "a_mask.png", mask), 64)
    assert image.shape == (64, 64, 3) and m[:30].min() == 1 and m[34:].max() == 0
    _, zeros = images.load_pair(img, None, 64)
    assert zeros.shape == (64, 64) and zeros.max() == 0
    bad = _save(tmp_path / "b_mask.png", np.zeros((70, 91), np.uint8))
    with pytest.raises(images.ImageError, match="91x70.*a.png is 90x70") as info:
        images.load_pair(img, bad, 64)
    assert str(bad) in str(info.value)


def test_to_float_numpy_and_jax():
    x = np.array([0, 51, 255], np.uint8)
    expected = np.array([-1.0, 51 / 127.5 - 1.0, 1.0], np.float32)
    out = images.to_float(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    out_jax = images.to_float(jnp.asarray(x))
    assert isinstance(out_jax, jnp.ndarray) and out_jax.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out_jax), expected, rtol=0, atol=1e-6)


def test_list_image_files(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.Tiff", ".hidden.png", "notes.txt", "Labels.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    with pytest.warns(UserWarning, match="notes.txt"):
        found = images.list_image_files(tmp_path)
    assert [p.rsplit("/", 1)[1] for p in found] == ["a.jpg", "b.PNG", "c.Tiff"]


# data.resize=keep_aspect: long side to S, short side rounded, reflect-padded to a multiple of 64.


def _reflect_index(i, n):
    """Source index of position i of a 1-D array of length n reflected without edge repeat."""
    if n == 1 or i < n:
        return 0 if n == 1 else i
    period = 2 * (n - 1)
    j = i % period
    return j if j < n else period - j


def test_scaled_and_padded_sizes_by_hand():
    assert images.scaled_size((100, 300), 128, "keep_aspect") == (43, 128)  # 42.67 -> 43
    assert images.scaled_size((300, 100), 128, "keep_aspect") == (128, 43)
    assert images.scaled_size((3, 256), 128, "keep_aspect") == (2, 128)  # 1.5 -> 2 (half up)
    assert images.scaled_size((1, 1000), 128, "keep_aspect") == (1, 128)  # 0.128 -> at least 1
    assert images.scaled_size((100, 300), 128, "square") == (128, 128)
    assert images.padded_size((43, 128)) == (64, 128)
    assert images.padded_size((1, 65)) == (64, 128)
    with pytest.raises(ValueError, match="data.resize"):
        images.scaled_size((10, 10), 64, "stretch")


def test_keep_aspect_image_is_a_pil_resize_padded_by_reflection(tmp_path):
    a = _noise((100, 300, 3), seed=4)
    out = images.load_image(_save(tmp_path / "wide.png", a), 128, "keep_aspect")
    assert out.shape == (64, 128, 3) and out.dtype == np.uint8
    valid = np.asarray(Image.fromarray(a).resize((128, 43), Image.BILINEAR))
    np.testing.assert_array_equal(out[:43], valid)
    np.testing.assert_array_equal(out, np.pad(valid, ((0, 21), (0, 0), (0, 0)), mode="reflect"))
    for i in range(43, 64):  # row 43 mirrors row 41, row 44 row 40, ... (no edge repeat)
        np.testing.assert_array_equal(out[i], valid[2 * 42 - i])
    tall = images.load_image(_save(tmp_path / "tall.png", a.transpose(1, 0, 2)), 128, "keep_aspect")
    assert tall.shape == (128, 64, 3)
    np.testing.assert_array_equal(
        tall[:, :43],
        np.asarray(Image.fromarray(a.transpose(1, 0, 2)).resize((43, 128), Image.BILINEAR)),
    )
    # square mode: the same file squashed, as before
    assert images.load_image(tmp_path / "wide.png", 128).shape == (128, 128, 3)


@pytest.mark.parametrize("n", [1, 2, 10])
def test_reflect_padding_of_very_short_sides(n):
    a = _noise((n, 7, 3), seed=n)
    out = images.pad_to(a, (64, 64))
    assert out.shape == (64, 64, 3)
    for i in range(64):
        for j in range(64):
            src = a[_reflect_index(i, n), _reflect_index(j, 7)]
            np.testing.assert_array_equal(out[i, j], src)


def test_keep_aspect_one_and_ten_pixel_short_sides_load(tmp_path):
    # 64 x 4096 at S=64: 64 * 64 / 4096 = 1 row; 64 x 410: 64 * 64 / 410 = 9.99 -> 10 rows
    for width, rows in ((4096, 1), (410, 10)):
        a = _noise((64, width), seed=width)
        out = images.load_image(_save(tmp_path / f"g{width}.png", a), 64, "keep_aspect")
        assert out.shape == (64, 64, 3)
        valid = np.asarray(Image.fromarray(a).resize((64, rows), Image.BILINEAR))
        for i in range(64):
            np.testing.assert_array_equal(out[i, :, 0], valid[_reflect_index(i, rows)])


def test_keep_aspect_masks_nearest_and_zero_padded(tmp_path):
    m = np.zeros((100, 300), np.uint8)
    m[90:, 250:] = 255  # touches the bottom-right corner: reflection would copy it
    image_path = _save(tmp_path / "x.png", _noise((100, 300, 3)))
    mask_path = _save(tmp_path / "x_mask.png", m)
    image, mask = images.load_pair(image_path, mask_path, 128, "keep_aspect")
    assert image.shape == (64, 128, 3) and mask.shape == (64, 128)
    rows = np.floor((np.arange(43) + 0.5) * 100 / 43).astype(int)  # nearest, pixel centres
    cols = np.floor((np.arange(128) + 0.5) * 300 / 128).astype(int)
    np.testing.assert_array_equal(mask[:43], (m[rows][:, cols] > 127).astype(np.uint8))
    assert mask[:43].sum() > 0 and mask[43:].max() == 0
    image, none = images.load_pair(image_path, None, 128, "keep_aspect")
    assert none.shape == (64, 128) and none.max() == 0


@pytest.mark.parametrize("resize", ["keep_aspect", "square"])
def test_loading_a_read_resized_copy_gives_the_same_arrays(tmp_path, resize):
    # scripts/resize_copy.py ships data pre-resized: a copy saved at its loaded size must
    # load to the same image and mask (sizes chosen so the short side rounds both ways; a
    # copy's sides must stay >= 64, which the script checks).
    for k, (h, w) in enumerate([(200, 300), (233, 171), (401, 399), (64, 90), (331, 220)]):
        a = _noise((h, w), seed=k)
        m = np.zeros((h, w), np.uint8)
        m[h // 3 : h // 2, w // 4 : w // 2 + 1] = 255
        src, src_mask = _save(tmp_path / f"{k}.png", a), _save(tmp_path / f"{k}_m.png", m)
        copy = images.read_resized(src, 128, resize)
        sh, sw = images.scaled_size((h, w), 128, resize)
        assert (copy.height, copy.width) == (sh, sw)
        dst = tmp_path / f"{k}_copy.png"
        copy.save(dst)
        small = images.load_mask(src_mask, 128, resize=resize)[:sh, :sw]
        dst_mask = _save(tmp_path / f"{k}_copy_m.png", small * 255)
        image, mask = images.load_pair(src, src_mask, 128, resize)
        image2, mask2 = images.load_pair(dst, dst_mask, 128, resize)
        np.testing.assert_array_equal(image2, image)
        np.testing.assert_array_equal(mask2, mask)
        assert mask.sum() > 0
