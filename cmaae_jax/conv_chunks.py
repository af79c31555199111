"""Convolution pieces XLA:CPU runs faster when written by hand: the weight gradient as one
row-shift matmul (`conv_weight_grad`), a conv of a thin input as one matmul of its patches
(`im2col_conv`), and loops over chunks of the batch whose buffers stay
in cache (`batch_chunk`, `chunked_weight_grad`, `by_chunks`). `cmaae_jax.layers` builds its
CPU convolutions from them; tests/test_layers.py proves them equal to `lax`'s."""

import jax
import jax.numpy as jnp


def _space_to_depth(x_BxHxWxC):
    """[B, 2H, 2W, C] -> [B, H, W, 4C], channels ordered (row parity, column parity, c)."""
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def _columns(taps_per_side: int, c: int, cout: int) -> dict:
    """Columns of `conv_weight_grad`'s two matrices, shifted copies included, by the side(s)
    shifted: "x" or "g" once per tap, or "both" (x once per column offset, g once per row
    offset)."""
    taps = taps_per_side * taps_per_side
    return {"x": taps * c + cout, "g": c + taps * cout, "both": taps_per_side * (c + cout)}


def shifted_sides(taps_per_side: int, c: int, cout: int) -> str:
    """Which side(s) of the weight gradient's matmul `conv_weight_grad` shifts: the thinner
    one ("x" or "g"), or "both" where that copies fewer columns (`_columns`): the 3x3 layers
    of 32 channels (192 columns against 320); a tie keeps one side."""
    columns, thinner = _columns(taps_per_side, c, cout), "x" if c < cout else "g"
    return "both" if columns["both"] < columns[thinner] else thinner


def conv_weight_grad(x_BxHxWxC, g_BxhxwxO, k: int, stride: int, padding: int):
    """d/dW of <conv2d(x, W, stride, padding), g>, [k, k, cin, cout], as one matmul.

    dW[ky, kx] = sum over (b, i, j) of xpad[b, s*i+ky, s*j+kx]^T g[b, i, j]. For stride 2
    the padded input is first rearranged space-to-depth, which makes it a stride-1 sum with
    (k/2)x(k/2) taps over 4*cin channels. With that input flattened over (b, row, column)
    into one matrix X, and g zero-padded onto the same grid and flattened (G), every tap is a
    shift by a constant number of rows: dW[tap] = X shifted up by `off(tap)` rows, ^T @ G.
    Shifted copies side by side make it one matmul, with no im2col (`shifted_sides`): of the
    thinner side per tap, [X_t0 | X_t1 | ...]^T @ G or X^T @ [G_t0 | G_t1 | ...] (G shifted
    down instead), or of both sides, X by each column offset dx and G down by each row
    offset dy: block (dx, dy) of [X_dx0 | X_dx1 | ...]^T @ [G_dy0 | G_dy1 | ...] is tap
    (dy, dx). Valid output positions never wrap into the next row or image, and G is zero
    at the others.
    """
    b, oh, ow, cout = g_BxhxwxO.shape
    _, h, w, cin = x_BxHxWxC.shape
    if stride not in (1, 2) or (stride == 2 and k % 2):
        raise NotImplementedError(f"conv_weight_grad: k={k} s={stride}")
    extra_h, extra_w = (h + 2 * padding) % stride, (w + 2 * padding) % stride
    p = padding
    x = jnp.pad(x_BxHxWxC, ((0, 0), (p, p + extra_h), (p, p + extra_w), (0, 0)))
    x = _space_to_depth(x) if stride == 2 else x
    kk = k // stride
    _, hq, wq, c = x.shape
    g = jnp.pad(g_BxhxwxO, ((0, 0), (0, hq - oh), (0, wq - ow), (0, 0))).reshape(-1, cout)
    rows, last = g.shape[0], (kk - 1) * wq + kk - 1
    x = x.reshape(rows, c)
    sides = shifted_sides(kk, c, cout)
    if sides == "both":
        return _both_shifted(x, g, kk, wq, stride).reshape(k, k, cin, cout)
    offsets = [dy * wq + dx for dy in range(kk) for dx in range(kk)]
    if sides == "x":  # [rows, taps * c]^T @ G -> rows (dy, dx, sy, sx, cin)
        x = jnp.pad(x, ((0, last), (0, 0)))  # x shifted up: `last` zero rows below it
        x_shifted = jnp.concatenate([x[o : o + rows] for o in offsets], axis=1)
        dw = jax.lax.dot_general(x_shifted, g, (((0,), (0,)), ((), ())))
        dw = dw.reshape(kk, kk, stride, stride, cin, cout).transpose(0, 2, 1, 3, 4, 5)
        return dw.reshape(k, k, cin, cout)
    # G shifted down: the rows it moves past X's last one meet only X's zero padding
    g = jnp.pad(g, ((last, 0), (0, 0)))
    g_shifted = jnp.concatenate([g[last - o : last - o + rows] for o in offsets], axis=1)
    dw = jax.lax.dot_general(x, g_shifted, (((0,), (0,)), ((), ())))  # [c, taps * cout]
    # rows (sy, sx, cin), columns (dy, dx, cout); tap ky = stride*dy + sy, kx likewise.
    dw = dw.reshape(stride, stride, cin, kk, kk, cout).transpose(3, 0, 4, 1, 2, 5)
    return dw.reshape(k, k, cin, cout)


def _both_shifted(x, g, kk: int, wq: int, stride: int):
    """`conv_weight_grad`'s sum with both sides shifted: x [rows, c] up by each column offset
    dx, g [rows, cout] down by each row offset dy * wq, over the grid's rows (past them the
    shifted x is zero); returns [kk, stride, kk, stride, cin, cout] (dy, sy, dx, sx: tap
    ky = stride*dy + sy)."""
    rows, cout = g.shape
    x = jnp.pad(x, ((0, kk - 1), (0, 0)))
    x_shifted = jnp.concatenate([x[dx : dx + rows] for dx in range(kk)], axis=1)
    g_shifted = jnp.concatenate(
        [jnp.pad(g[: rows - dy * wq], ((dy * wq, 0), (0, 0))) for dy in range(kk)], axis=1
    )
    dw = jax.lax.dot_general(x_shifted, g_shifted, (((0,), (0,)), ((), ())))
    # rows (dx, sy, sx, cin), columns (dy, cout)
    cin = x.shape[1] // (stride * stride)
    dw = dw.reshape(kk, stride, stride, cin, kk, cout)
    return dw.transpose(4, 1, 0, 2, 3, 5)


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


# Rows of the flattened (image, row, column) grid per chunk of `chunked_weight_grad`: the
# shifted copies of a chunk stay in cache and their buffers are reused from chunk to chunk.
# 4096 rather than 8192: 3.5% less time a step at batch 512 and 64 (BENCHMARKS.md,
# forty-first session).
CHUNK_ROWS = 4096
# ... and at most this many elements of the two matrices it multiplies (x's and g's columns,
# shifted copies included): the 4x4 layers' 768-1536 columns made chunks of up to 4096 rows
# 12-25 MB, out of cache; 512K elements take 8 images a chunk there, ~10% faster alone
# (BENCHMARKS.md, forty-fourth session).
CHUNK_ELEMENTS = 2**19


def weight_grad_chunk_rows(k: int, stride: int, cin: int, cout: int) -> int:
    """Grid rows per chunk of `chunked_weight_grad`: CHUNK_ROWS, fewer where the columns of
    `conv_weight_grad`'s two matrices (`shifted_sides`) would make a chunk more than
    CHUNK_ELEMENTS."""
    kk, c = k // stride, cin * stride * stride
    columns = _columns(kk, c, cout)[shifted_sides(kk, c, cout)]
    return min(CHUNK_ROWS, CHUNK_ELEMENTS // columns)


def batch_chunk(batch: int, rows_per_image: int, chunk_rows: int = CHUNK_ROWS) -> int:
    """The largest divisor of `batch` whose images hold at most `chunk_rows` grid rows (1 at
    least): how many images each step of `chunked_weight_grad` takes."""
    fits = max(1, chunk_rows // max(1, rows_per_image))
    return max(d for d in range(1, min(batch, fits) + 1) if batch % d == 0)


def as_chunks(x_Bx___, chunk: int):
    """[B, ...] -> [B / chunk, chunk, ...] (chunk divides B)."""
    return x_Bx___.reshape(x_Bx___.shape[0] // chunk, chunk, *x_Bx___.shape[1:])


def chunked_weight_grad(x_BxHxWxC, g_BxhxwxO, k, stride, padding, chunk_rows=None):
    """`conv_weight_grad` summed over chunks of the batch in a loop (`lax.scan`), of
    `chunk_rows` grid rows (default `weight_grad_chunk_rows`).

    The same sum in another order of float additions. Over the whole batch the shifted
    copies are large fresh buffers, which XLA:CPU writes at a fraction of its copy speed (and
    page-faults); a chunk's fit in cache and are reused by the next chunk.
    """
    b, h, w, cin = x_BxHxWxC.shape
    rows = (h + 2 * padding) * (w + 2 * padding) // (stride * stride)
    if chunk_rows is None:
        chunk_rows = weight_grad_chunk_rows(k, stride, cin, g_BxhxwxO.shape[-1])
    chunk = batch_chunk(b, rows, chunk_rows)
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
