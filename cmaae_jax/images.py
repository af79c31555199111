"""Robust image and mask loading, and the two resize modes (`data.resize`, `RESIZE_MODES`).

Every image is returned as uint8 RGB: grayscale inputs are repeated to three channels, alpha is
dropped, 16-bit inputs are scaled to 8 bits, and the result is resized with PIL's bilinear
filter. Masks are binarised to {0, 1} and resized with nearest neighbour so that they stay
binary. Anything PIL cannot read (corrupt, truncated, empty, not an image, declared too large)
raises `ImageError` with the file name and the problem in its message.

Resize modes, S = `data.image_size`:

* `square` (the paper): every image is resized to [S, S, 3], whatever its aspect ratio.
* `keep_aspect`: the image is scaled so that its LONG side is S (bounded compute); the short
  side is rounded to the nearest pixel (at least 1). That valid region (`scaled_size`) is then
  padded bottom/right to the next multiple of 64 (at least 64) by reflection (numpy's "reflect",
  which reflects again and again where the pad is longer than the image: a 1-pixel side is
  repeated); masks are scaled to the same size with nearest neighbour and padded with zeros.
  Maps computed on the padded image are cropped back to the valid region before any metric or
  picture (`layouts.Split.valid_map`): padding never counts.
"""

import os
import warnings

import numpy as np
from PIL import Image

from cmaae_jax import errors

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Side files of image folders that are skipped without a warning (DAGM ships Labels.txt).
_QUIETLY_SKIPPED = ("labels.txt", "thumbs.db", "desktop.ini")
# Refuse images whose header declares more pixels than this, before decoding anything.
MAX_PIXELS = 100_000_000
# The model sees 64x64 patches: an image must hold at least one.
MIN_SIDE = 64
# data.resize: square (the paper: squash to S x S) | keep_aspect (long side S, reflect-padded).
RESIZE_MODES = ("square", "keep_aspect")

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(errors.UserError, ValueError):
    """An image or mask file that cannot be used; the message names the file and the problem."""


def list_image_files(folder):
    """Sorted image files of `folder`; hidden files skipped, non-images skipped with a warning."""
    found, skipped = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or os.path.isdir(path):
            continue
        if name.lower().endswith(IMAGE_EXTENSIONS):
            found.append(path)
        elif name.lower() not in _QUIETLY_SKIPPED:
            skipped.append(name)
    if skipped:
        warnings.warn(
            f"{folder}: skipped {len(skipped)} file(s) that are not {'/'.join(IMAGE_EXTENSIONS)} "
            f"images: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
            stacklevel=2,
        )
    return found


def _open(path):
    """Opens `path` lazily (header only) and checks its declared size; returns the PIL image."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.exists(path) else "file not found"
        raise ImageError(f"{path}: {what}")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused, declared size is too large ({e})") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files.
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageError(
            f"{path}: refused, header declares {w}x{h} = {w * h / 1e6:.0f} megapixels "
            f"(more than {MAX_PIXELS / 1e6:.0f}; possible decompression bomb)"
        )
    return img


def _decode(path, img):
    """Decodes the pixel data of an opened image; truncated or corrupt data fails here."""
    try:
        img.load()
    except Exception as e:
        raise ImageError(f"{path}: cannot decode image data ({type(e).__name__}: {e})") from e


def original_size(path):
    """Returns the (height, width) of the image at `path`, reading only its header."""
    with _open(path) as img:
        w, h = img.size
    return h, w


def _to_uint8_gray_or_rgb(path, img):
    """Converts a decoded PIL image to an 8-bit 'L' or 'RGB' PIL image."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit data (PNG I;16, or I from some readers): 0..65535 maps onto 0..255.
        a = np.asarray(img).astype(np.float64)
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L")
    if mode == "F":
        # Floating point data: values in [0, 1] are scaled, anything else is clipped to 0..255.
        a = np.asarray(img).astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        a = np.clip(np.round(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L")
    if mode in ("1", "LA", "La"):
        return img.convert("L")
    if mode in ("P", "PA"):
        return img.convert("RGBA").convert("RGB")
    try:
        return img.convert("RGB")  # RGBA, RGBa, CMYK, YCbCr, ...
    except Exception as e:
        raise ImageError(f"{path}: unsupported image mode {mode!r} ({e})") from e


def _read_8bit(path):
    """Opens, checks and decodes `path`; returns an 8-bit 'L' or 'RGB' PIL image."""
    with _open(path) as img:
        w, h = img.size
        if w < MIN_SIDE or h < MIN_SIDE:
            raise ImageError(
                f"{path}: image is {w}x{h}, smaller than the {MIN_SIDE}x{MIN_SIDE} patch"
            )
        _decode(path, img)
        return _to_uint8_gray_or_rgb(path, img)


def scaled_size(hw, image_size, resize="square"):
    """(h, w) of an image of original size `hw` after resizing, before any padding.

    `square`: (S, S). `keep_aspect`: the long side becomes S, the short side is rounded to the
    nearest pixel (halves up), at least 1.
    """
    if resize == "square":
        return image_size, image_size
    if resize != "keep_aspect":
        raise ValueError(f"data.resize={resize!r}: must be one of {RESIZE_MODES}")
    h, w = (int(v) for v in hw)
    long = max(h, w)
    scale = lambda side: max(1, (2 * side * image_size + long) // (2 * long))
    return scale(h), scale(w)


def padded_size(hw, multiple: int = MIN_SIDE):
    """`hw` rounded up to multiples of `multiple`, each side at least `multiple`."""
    return tuple(max(multiple, -(-int(s) // multiple) * multiple) for s in hw)


def pad_to(array_HxWx___, hw, mode="reflect"):
    """Pads an [h, w, ...] array bottom/right to `hw` (>= its size): `reflect` (repeated where
    the pad is longer than the array; a 1-pixel side is repeated) or `zeros`."""
    widths = ((0, hw[0] - array_HxWx___.shape[0]), (0, hw[1] - array_HxWx___.shape[1]))
    widths += ((0, 0),) * (array_HxWx___.ndim - 2)
    if min(w for _, w in widths) < 0:
        raise ValueError(f"cannot pad an array of shape {array_HxWx___.shape} to {tuple(hw)}")
    if mode == "zeros":
        return np.pad(array_HxWx___, widths)
    return np.pad(array_HxWx___, widths, mode="reflect")


def read_resized(path, image_size, resize="square"):
    """The 8-bit 'L' or 'RGB' PIL image of `path` at its `scaled_size`, before any padding."""
    img = _read_8bit(path)
    h, w = scaled_size((img.height, img.width), image_size, resize)
    return img.resize((w, h), Image.BILINEAR)


def load_image(path, image_size, resize="square"):
    """Loads an image as uint8 RGB, resized as `resize` says.

    Args:
      path: file path of a PNG, JPEG, BMP, TIFF, ... image.
      image_size: S, the side of the square output, or of the long side for `keep_aspect`.
      resize: `square` or `keep_aspect` (see the module docstring).

    Returns:
      np.ndarray uint8 [S, S, 3] (`square`), or [H, W, 3] with H, W multiples of 64 holding
      the `scaled_size` image at its top left and its reflection below and to the right
      (`keep_aspect`); grayscale images repeated to three channels.

    Raises:
      ImageError: the file is missing, empty, corrupt, truncated, declares more than
        `MAX_PIXELS` pixels, or is smaller than 64x64.
    """
    img = read_resized(path, image_size, resize)
    h, w = img.height, img.width
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if resize == "keep_aspect":
        a = pad_to(a, padded_size((h, w)))
    return np.ascontiguousarray(a)


def _mask_values(path, img):
    """Returns a 2-D uint8 array of mask intensities (max over channels for colour masks)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        return np.asarray(_to_uint8_gray_or_rgb(path, img))
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(img.convert("L"))
    rgb = np.asarray(_to_uint8_gray_or_rgb(path, img))
    return rgb.max(axis=2) if rgb.ndim == 3 else rgb


def load_mask(path, image_size, expected_hw=None, resize="square"):
    """Loads a defect mask as uint8 [S, S] (or, for `keep_aspect`, [H, W] zero-padded like
    `load_image`) with values in {0, 1}.

    A mask whose largest value is 1 is read as a 0/1 mask (defect where > 0); any other mask is
    read as a 0/255 mask (defect where > 127). Colour masks use the largest channel. The mask is
    binarised first, then resized with nearest neighbour.

    Args:
      path: file path of the mask image.
      image_size: S, as for `load_image`.
      expected_hw: optional (height, width) of the image the mask belongs to; a mask of another
        size is an error.

      resize: `square` or `keep_aspect`, as for `load_image`.

    Raises:
      ImageError: unreadable mask, or a mask whose size differs from `expected_hw`.
    """
    with _open(path) as img:
        w, h = img.size
        if expected_hw is not None and (h, w) != tuple(expected_hw):
            eh, ew = expected_hw
            raise ImageError(f"{path}: mask is {w}x{h} (width x height) but its image is {ew}x{eh}")
        _decode(path, img)
        values = _mask_values(path, img)
    binary = (values > 0) if values.max(initial=0) <= 1 else (values > 127)
    sh, sw = scaled_size(binary.shape, image_size, resize)
    small = Image.fromarray(binary.astype(np.uint8), mode="L")
    small = np.asarray(small.resize((sw, sh), Image.NEAREST), dtype=np.uint8)
    if resize == "keep_aspect":
        small = pad_to(small, padded_size((sh, sw)), mode="zeros")
    return small.copy()


def load_pair(image_path, mask_path, image_size, resize="square"):
    """Loads an image and its mask (all zeros when `mask_path` is None) of the same size.

    Returns:
      (uint8 [H, W, 3] image, uint8 [H, W] mask in {0, 1}); H = W = S for `square`.
    """
    image = load_image(image_path, image_size, resize)
    if mask_path is None:
        return image, np.zeros(image.shape[:2], np.uint8)
    hw = check_pair(image_path, mask_path)
    return image, load_mask(mask_path, image_size, expected_hw=hw, resize=resize)


def check_pair(image_path, mask_path=None) -> tuple[int, int]:
    """The (height, width) of the image at `image_path`, from the headers alone: raises
    ImageError where the image or its mask cannot be opened, or the mask is of another size."""
    h, w = original_size(image_path)
    if mask_path is not None:
        mask_h, mask_w = original_size(mask_path)
        if (mask_h, mask_w) != (h, w):
            raise ImageError(
                f"{mask_path}: mask is {mask_w}x{mask_h} (width x height) but its image "
                f"{os.fspath(image_path)} is {w}x{h}"
            )
    return h, w


def to_float(images_uint8):
    """Maps uint8 images (numpy or jax) to float32 in [-1, 1]: x / 127.5 - 1."""
    return images_uint8.astype(np.float32) / 127.5 - 1.0


def to_uint8(images_float):
    """The inverse of `to_float` (numpy or jax), rounded to the nearest level and clipped."""
    return ((images_float + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
