"""Convolution pieces XLA:CPU runs faster when written by hand: the weight gradient as one
convolution with its operands laid out for YNNPACK (`conv_weight_grad`), a conv of a thin
input as one matmul of its patches (`im2col_conv`), and loops over chunks of the batch whose
buffers stay in cache (`batch_chunk`, `chunked_weight_grad`, `by_chunks`).
`cmaae_jax.layers` builds its CPU convolutions from them; tests/test_layers.py proves them
equal to brute-force loops and to `lax`'s."""

import pathlib

import jax
import jax.numpy as jnp


def _space_to_depth(x_BxHxWxC):
    """[B, 2H, 2W, C] -> [B, H, W, 4C], channels ordered (row parity, column parity, c)."""
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


# Inputs with at most this many channels are convolved by `im2col_conv`: XLA:CPU's own conv
# of a 3-channel input (the first encoder layer; the input gradient of the last decoder
# layer) runs at a fraction of its speed on wider ones (BENCHMARKS.md, sixteenth session).
THIN_CHANNELS = 4


def im2col_conv(x_BxHxWxC, kernel, stride: int, padding: int):
    """conv2d(x, kernel, stride, padding) as one matmul: [B*oh*ow, taps*C] @ [taps*C, cout].

    A stride-2 conv with an even kernel is first made stride 1 with (k/2)x(k/2) taps over
    the space-to-depth input (channels ordered row parity, column parity, c, as the kernel
    rearranged to match); the patches are the taps' shifted views side by side.
    """
    b, h, w, cin = x_BxHxWxC.shape
    k, cout = kernel.shape[0], kernel.shape[-1]
    if stride not in (1, 2) or (stride == 2 and k % 2):
        raise NotImplementedError(f"im2col_conv: k={k} s={stride}")
    oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    p, extra_h, extra_w = padding, (h + 2 * padding) % stride, (w + 2 * padding) % stride
    x = jnp.pad(x_BxHxWxC, ((0, 0), (p, p + extra_h), (p, p + extra_w), (0, 0)))
    kk = k // stride
    if stride == 2:
        x = _space_to_depth(x)  # tap (dy, sy) of kernel row ky = 2 * dy + sy
        kernel = kernel.reshape(kk, 2, kk, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    cols = jnp.concatenate(
        [x[:, dy : dy + oh, dx : dx + ow] for dy in range(kk) for dx in range(kk)], axis=-1
    )
    out = cols.reshape(b * oh * ow, -1) @ kernel.reshape(-1, cout)
    return out.reshape(b, oh, ow, cout)


def l2_cache_bytes(sysfs: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """The first core's level-2 (data or unified) cache in bytes, from Linux's sysfs; None
    where it does not say (another OS, a container without it)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    for index in sorted(pathlib.Path(sysfs).glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data") and size:
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    return None


def chunk_rows_for(l2_bytes: int | None) -> int:
    """Pixels per chunk of the training step's convolution loops for a core with `l2_bytes`
    of level-2 cache: a 32-channel layer's input and output chunks (256 bytes a pixel) fill
    it, in powers of two from 1024 to 16384; 4096 where the size is unknown."""
    if not l2_bytes:
        return 4096
    rows = 1024
    while rows < 16384 and rows * 2 * 256 <= l2_bytes:
        rows *= 2
    return rows


# Pixels per chunk of the training step's convolution loops (`by_chunks`, the BatchNorm loops
# of `norm_act.normalized_conv`): a chunk's buffers stay in this core's level-2 cache and are
# reused from chunk to chunk. 4096 on the AMD EPYCs with 1 MB of L2 a core (3.5% less time a
# step at batch 512 and 64 than 8192: BENCHMARKS.md, forty-first session), 2048 on those with
# 512 KB (6-9% less than 4096, fiftieth session).
CHUNK_ROWS = chunk_rows_for(l2_cache_bytes())


def batch_chunk(batch: int, rows_per_image: int, chunk_rows: int | None = None) -> int:
    """The largest divisor of `batch` whose images hold at most `chunk_rows` rows (pixels,
    elements; default CHUNK_ROWS) in all (1 at least): how many images a chunk takes."""
    fits = max(1, (chunk_rows or CHUNK_ROWS) // max(1, rows_per_image))
    return max(d for d in range(1, min(batch, fits) + 1) if batch % d == 0)


def as_chunks(x_Bx___, chunk: int):
    """[B, ...] -> [B / chunk, chunk, ...] (chunk divides B)."""
    return x_Bx___.reshape(x_Bx___.shape[0] // chunk, chunk, *x_Bx___.shape[1:])


# Elements of g per chunk of `chunked_weight_grad`: 4 images of the 32x32 layers of 32
# channels, 32 of the 4x4 layers of 256 (fastest alone at 256 images; BENCHMARKS.md,
# forty-sixth session).
WEIGHT_GRAD_ELEMENTS = 2**17


def conv_weight_grad(x_BxHxWxC, g_BxhxwxO, k: int, stride: int, padding: int):
    """d/dW of <conv2d(x, W, stride, padding), g>, [k, k, cin, cout], as one convolution.

    dW[ky, kx, c, o] = sum over (b, i, j) of xpad[b, s*i + ky, s*j + kx, c] g[b, i, j, o]: the
    convolution of x laid out [cin, H, W, B] (cin as its batch, the images as its channels)
    with g laid out [oh, ow, B, cout] as its kernel, dilated by the stride, over x padded as
    the forward conv pads it. Its output [cin, k', k', cout] holds dW at its first k x k
    positions (k' > k where the stride leaves rows or columns past the last window). In
    these layouts it is an ordinary NHWC / HWIO convolution, which XLA:CPU gives to YNNPACK.
    """
    x_CxHxWxB = jnp.transpose(x_BxHxWxC, (3, 1, 2, 0))
    g_hxwxBxO = jnp.transpose(g_BxhxwxO, (1, 2, 0, 3))
    dw_CxKxKxO = jax.lax.conv_general_dilated(
        x_CxHxWxB,
        g_hxwxBxO,
        (1, 1),
        [(padding, padding)] * 2,
        rhs_dilation=(stride, stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return jnp.transpose(dw_CxKxKxO[:, :k, :k], (1, 2, 0, 3))


def weight_grad_chunk(g_BxhxwxO_shape) -> int:
    """Images per chunk of `chunked_weight_grad`: at most WEIGHT_GRAD_ELEMENTS of g."""
    b, h, w, cout = g_BxhxwxO_shape
    return batch_chunk(b, h * w * cout, WEIGHT_GRAD_ELEMENTS)


def chunked_weight_grad(x_BxHxWxC, g_BxhxwxO, k, stride, padding, chunk=None):
    """`conv_weight_grad` summed over chunks of `chunk` images (default `weight_grad_chunk`)
    in a loop (`lax.scan`): the same sum in another order of float additions. Over the whole
    batch the two transposed operands are large fresh buffers, which XLA:CPU writes at a
    fraction of its copy speed (and page-faults); a chunk's fit in cache and are reused."""
    b = x_BxHxWxC.shape[0]
    chunk = chunk or weight_grad_chunk(g_BxhxwxO.shape)
    if chunk == b:
        return conv_weight_grad(x_BxHxWxC, g_BxhxwxO, k, stride, padding)
    xs, gs = as_chunks(x_BxHxWxC, chunk), as_chunks(g_BxhxwxO, chunk)

    def add(dw, xg):
        return dw + conv_weight_grad(xg[0], xg[1], k, stride, padding), None

    zero = jnp.zeros((k, k, x_BxHxWxC.shape[-1], g_BxhxwxO.shape[-1]), g_BxhxwxO.dtype)
    return jax.lax.scan(add, zero, (xs, gs))[0]


def by_chunks(fn, x_BxHxWxC):
    """`fn` (image by image: no mixing across the batch) over chunks of `batch_chunk` images
    of CHUNK_ROWS pixels (`lax.map`): the same result; a chunk's buffers stay in cache and
    are reused by the next chunk, where the whole batch's would be fresh, page-faulting ones."""
    b, h, w, _ = x_BxHxWxC.shape
    chunk = batch_chunk(b, h * w)
    if chunk == b:
        return fn(x_BxHxWxC)
    out = jax.lax.map(fn, as_chunks(x_BxHxWxC, chunk))
    return out.reshape(b, *out.shape[2:])


# Inference (not differentiated) convolutions of more than INFER_WHOLE_ROWS input pixels run
# by chunks of INFER_CHUNK_ROWS: whole, the hundreds of windows of an overlapping map
# (score.stride=16) ran its last decoder layer ~2.5x and layer 4 ~1.5x slower
# (BENCHMARKS.md, forty-second session); the windows of one 512x512 grid map stay whole.
# Overlapping windows now go through the network by chunks of their own (`scoring`), within
# these limits; large batches of grid windows (the pixel map of many images) still come here.
INFER_WHOLE_ROWS = 65536
INFER_CHUNK_ROWS = 16384


def inference_chunks(fn, x_BxHxWxC):
    """`fn` (image by image) over chunks of INFER_CHUNK_ROWS pixels of a batch of more than
    INFER_WHOLE_ROWS (`lax.map`; the remainder of the batch in one call of its own)."""
    b, h, w, _ = x_BxHxWxC.shape
    chunk = INFER_CHUNK_ROWS // (h * w)
    if b * h * w <= INFER_WHOLE_ROWS or not 1 <= chunk < b:
        return fn(x_BxHxWxC)
    full = b // chunk * chunk
    out = jax.lax.map(fn, as_chunks(x_BxHxWxC[:full], chunk))
    out = out.reshape(full, *out.shape[2:])
    return out if full == b else jnp.concatenate([out, fn(x_BxHxWxC[full:])])
