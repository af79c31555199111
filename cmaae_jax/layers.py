"""Convolutions written as shifted slices + one matmul, and their Flax modules.

XLA:CPU computes convolution gradients slowly, and the weight gradient of a strided
`lax.conv_transpose` about 100x slower than a forward conv (SPEC section 4). Every layer of
CMA-AE is therefore expressed as im2col (a concatenation of shifted, strided slices of the
padded input) followed by a single matmul, whose forward and backward passes are matmuls.
The stride-2 transposed convolution is computed "sub-pixel": each of the four output parities
is a 2x2 im2col matmul of the input, interleaved by depth-to-space. Both are exactly the
PyTorch-convention operations (`Conv2d`, `ConvTranspose2d`) with the same weights; the tests
prove it against `lax.conv_general_dilated` / `lax.conv_transpose` and a brute-force loop.

Kernels are stored as [kh, kw, cin, cout] for both kinds. For the transposed convolution
this is the PyTorch `ConvTranspose2d` weight [cin, cout, kh, kw] with axes moved, i.e. the
"scatter" convention: out[s*i - p + k] += x[i] @ W[k].

`impl="xla"` selects the native `lax` convolutions instead (the right choice on GPU/TPU).
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array


def _im2col(x_BxHxWxC, k, stride, pad_lo, pad_hi, out_h, out_w):
    """[B,H,W,C] -> [B,out_h,out_w,k*k*C], taps ordered (ky, kx, c)."""
    x = jnp.pad(x_BxHxWxC, ((0, 0), (pad_lo, pad_hi), (pad_lo, pad_hi), (0, 0)))
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    cols = [
        x[:, ky : ky + span_h : stride, kx : kx + span_w : stride, :]
        for ky in range(k)
        for kx in range(k)
    ]
    return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]


def _matmul(cols, kernel_KxC):
    return jnp.einsum("bhwk,kc->bhwc", cols, kernel_KxC)


def conv2d(x_BxHxWxC, kernel, stride: int, padding: int, impl: str = "matmul"):
    """PyTorch `Conv2d` (cross-correlation) with symmetric zero padding, NHWC."""
    k, _, cin, cout = kernel.shape
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x_BxHxWxC,
            kernel,
            (stride, stride),
            [(padding, padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    _, h, w, _ = x_BxHxWxC.shape
    out_h = (h + 2 * padding - k) // stride + 1
    out_w = (w + 2 * padding - k) // stride + 1
    cols = _im2col(x_BxHxWxC, k, stride, padding, padding, out_h, out_w)
    return _matmul(cols, kernel.reshape(k * k * cin, cout))


def conv_transpose2d(x_BxHxWxC, kernel, stride: int, padding: int, impl: str = "matmul"):
    """PyTorch `ConvTranspose2d` (no output padding), NHWC, kernel [kh, kw, cin, cout]."""
    k = kernel.shape[0]
    if impl == "xla":
        # Transposed conv = dilated-input conv with the spatially flipped kernel.
        return jax.lax.conv_transpose(
            x_BxHxWxC,
            kernel[::-1, ::-1],
            (stride, stride),
            [(k - 1 - padding, k - 1 - padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    if stride == 1:
        # A stride-1 transposed conv is a conv with the flipped kernel and padding k-1-p.
        return conv2d(x_BxHxWxC, kernel[::-1, ::-1], 1, k - 1 - padding)
    if (k, stride, padding) != (4, 2, 1):
        raise NotImplementedError(f"conv_transpose2d: k={k} s={stride} p={padding}")
    return _subpixel_k4s2p1(x_BxHxWxC, kernel)


def _subpixel_k4s2p1(x_BxHxWxC, kernel):
    """ConvTranspose2d(k=4, s=2, p=1) as four 2x2 im2col matmuls + depth-to-space.

    Output row 2m+r receives input rows m+d: for r=0, d=-1 (tap 3) and d=0 (tap 1); for r=1,
    d=0 (tap 2) and d=+1 (tap 0). Same for columns.
    """
    b, h, w, cin = x_BxHxWxC.shape
    cout = kernel.shape[-1]
    taps = {0: (3, 1), 1: (2, 0)}  # parity -> kernel taps for input offsets (r-1, r)
    x = jnp.pad(x_BxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = []
    for ry in (0, 1):
        cols_r = []
        for rx in (0, 1):
            slices, weights = [], []
            for dy, ty in enumerate(taps[ry]):
                for dx, tx in enumerate(taps[rx]):
                    oy, ox = ry + dy, rx + dx  # offset into the padded input
                    slices.append(x[:, oy : oy + h, ox : ox + w, :])
                    weights.append(kernel[ty, tx])
            cols = jnp.concatenate(slices, axis=-1)
            cols_r.append(_matmul(cols, jnp.concatenate(weights, axis=0)))
        rows.append(jnp.stack(cols_r, axis=3))  # [B,H,W,2(rx),C]
    out = jnp.stack(rows, axis=2)  # [B,H,2(ry),W,2(rx),C]
    return out.reshape(b, 2 * h, 2 * w, cout)


def torch_uniform_init(fan_in_axes):
    """PyTorch's default initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = 1
        for a in fan_in_axes:
            fan_in *= shape[a]
        bound = 1.0 / jnp.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv(nn.Module):
    """Conv2d layer (PyTorch semantics) with [k, k, cin, cout] kernel."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    transpose: bool = False
    impl: str = "matmul"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel_size, x.shape[-1]
        # PyTorch's fan_in: cin*k*k for Conv2d, cout*k*k for ConvTranspose2d (its weight dim 1).
        fan_axes = (0, 1, 3) if self.transpose else (0, 1, 2)
        kernel = self.param("kernel", torch_uniform_init(fan_axes), (k, k, cin, self.features))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        op = conv_transpose2d if self.transpose else conv2d
        y = op(x, kernel, self.stride, self.padding, impl=self.impl)
        if self.use_bias:
            fan = k * k * (self.features if self.transpose else cin)
            bound = 1.0 / jnp.sqrt(fan)
            bias = self.param(
                "bias",
                lambda key, s: jax.random.uniform(key, s, jnp.float32, -bound, bound),
                (self.features,),
            )
            y = y + bias.astype(self.dtype)
        return y
