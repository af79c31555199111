"""PyTorch-convention convolutions (`Conv2d`, `ConvTranspose2d`) that train fast on XLA:CPU.

Kernels are stored as [kh, kw, cin, cout] for both kinds. For the transposed convolution
this is the PyTorch `ConvTranspose2d` weight [cin, cout, kh, kw] with axes moved, i.e. the
"scatter" convention: out[s*i - p + k] += x[i] @ W[k].

Two implementations give the same numbers (the tests prove it, forward and gradients,
against `lax.conv_general_dilated`, `lax.conv_transpose` and brute-force loops):

* `impl="xla"`: the native `lax` convolutions and their automatic derivatives (the right
  choice on GPU/TPU).
* `impl="auto"` (the default): both, chosen per platform when the computation is lowered
  (`jax.lax.platform_dependent`): `matmul` for CPU, `xla` for every other platform. A
  function lowered or exported for CUDA (e.g. `jax.export` with `platforms=("cuda", "cpu")`
  on a CPU machine) therefore runs native cuDNN convolutions on a GPU and the CPU formulation
  on a CPU; lowered for one platform, only that platform's branch is compiled. The training
  step and the map function choose once for the whole computation (`model.per_platform`),
  or before tracing where they run only on this process's devices
  (`model.for_local_devices`); the per-layer choice here serves layers used on their own.
* `impl="matmul"`: the CPU formulation. XLA:CPU computes the weight gradient of a strided
  `lax.conv_transpose` about 100x slower than a forward conv (SPEC section 4), so:
  - a stride-2 transposed conv is computed "sub-pixel" (each of the four output parities is
    a 2x2 stride-1 conv of the input, interleaved by depth-to-space) and gets a custom VJP
    built from the derivatives of the equivalent strided *forward* conv, which XLA does well:
    its input gradient is that conv of the output gradient, its weight gradient the conv's
    weight gradient with the roles of input and output gradient exchanged;
  - a conv whose window covers the whole input (the 4x4 -> 1x1 last encoder layer) and a
    transposed conv of a 1x1 input (the first decoder layer) are single matmuls;
  - a stride-1 transposed conv is the conv with the flipped kernel;
  - weight gradients are convolutions over the batch with their operands laid out for
    YNNPACK (`conv_chunks.conv_weight_grad`; forty-sixth session; XLA's own derivative ran
    ~15x slower inside a loop on the device, fortieth), and every conv of the training step
    (forward, input and weight gradients) runs over chunks of a few images in a loop, whose
    buffers stay in cache (`cmaae_jax.conv_chunks`; BENCHMARKS.md, fifteenth session); inference
    (not differentiated) runs a batch of up to 64 32x32 maps at once, a larger one by
    larger chunks (`conv_chunks.inference_chunks`; forty-second session);
  - a conv of a thin input (3 channels: the first encoder layer, the last decoder layer's
    input gradient) is one matmul of its patches (`conv_chunks.im2col_conv`; sixteenth);
  - `Conv` given the BatchNorm and activation before it (`norm`) applies them inside its
    chunks (`norm_act.normalized_conv`; thirty-ninth).
"""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from cmaae_jax import conv_chunks, norm_act

Array = jax.Array
_DN = ("NHWC", "HWIO", "NHWC")
# Output parity r of a k=4, s=2, p=1 transposed conv reads input offsets (r-1, r) with these
# kernel taps; row 2m+r: r=0 from rows m-1 (tap 3), m (tap 1); r=1 from m (tap 2), m+1 (tap 0).
_PARITY_TAPS = {0: (3, 1), 1: (2, 0)}


def _lax_conv(x, kernel, stride, padding):
    pad = [(padding, padding)] * 2 if isinstance(padding, int) else padding
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=_DN)


IMPLS = ("auto", "matmul", "xla")


def impl_on(platform: str) -> str:
    """The convolutions `impl="auto"` runs on `platform`: `matmul` on CPU, `xla` elsewhere."""
    return "matmul" if platform == "cpu" else "xla"


def _per_platform(op, x, kernel, stride, padding):
    """`op` with impl `matmul` on CPU and `xla` on any other platform (see the module doc)."""
    return jax.lax.platform_dependent(
        x,
        kernel,
        cpu=lambda x, k: op(x, k, stride, padding, impl=impl_on("cpu")),
        default=lambda x, k: op(x, k, stride, padding, impl=impl_on("default")),
    )


def conv2d(x_BxHxWxC, kernel, stride: int, padding: int, impl: str = "auto"):
    """PyTorch `Conv2d` (cross-correlation) with symmetric zero padding, NHWC; with `impl`
    xla, `padding` may also be explicit: ((top, bottom), (left, right))."""
    b, h, w, _ = x_BxHxWxC.shape
    k, _, cin, cout = kernel.shape
    if impl == "auto":
        return _per_platform(conv2d, x_BxHxWxC, kernel, stride, padding)
    if impl == "xla":
        return _lax_conv(x_BxHxWxC, kernel, stride, padding)
    if padding == 0 and (h, w) == (k, k):
        # The window covers the whole input: one matmul, [B, k*k*cin] @ [k*k*cin, cout].
        out = x_BxHxWxC.reshape(b, k * k * cin) @ kernel.reshape(k * k * cin, cout)
        return out.reshape(b, 1, 1, cout)
    return _conv_fast_dw(x_BxHxWxC, kernel, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_fast_dw(x, kernel, stride, padding):
    """`lax` conv forward and input gradient; weight gradient by
    `conv_chunks.chunked_weight_grad`.

    XLA:CPU computes a conv's own weight gradient as a convolution over the batch at a
    fraction of its matmul speed for large images (SPEC section 4); laid out as an ordinary
    NHWC convolution, the same sum goes to YNNPACK. Not differentiated (inference), by
    `conv_chunks.inference_chunks`: whole where the batch is small.
    """
    conv = _thin_or_lax_conv(x, kernel, stride)
    return conv_chunks.inference_chunks(lambda xc: conv(xc, kernel, stride, padding), x)


def _thin_or_lax_conv(x, kernel, stride):
    """`_lax_conv`, or for a thin input one matmul of its patches (`conv_chunks.im2col_conv`)."""
    if x.shape[-1] <= conv_chunks.THIN_CHANNELS and (stride, kernel.shape[0] % 2) != (2, 1):
        return conv_chunks.im2col_conv
    return _lax_conv


def _chunked_conv(x, kernel, stride, padding):
    """`_thin_or_lax_conv` by chunks of the batch (`conv_chunks.by_chunks`)."""
    conv = _thin_or_lax_conv(x, kernel, stride)
    return conv_chunks.by_chunks(lambda xc: conv(xc, kernel, stride, padding), x)


def _conv_fwd(x, kernel, stride, padding):
    return _chunked_conv(x, kernel, stride, padding), (x, kernel)


def _conv_bwd(stride, padding, res, g):
    x, kernel = res
    _, h, w, _ = x.shape
    if (kernel.shape[0], stride, padding) == (4, 2, 1) and h % 2 == 0 and w % 2 == 0:
        # The input gradient of a stride-2 conv is the transposed conv of g with the kernel's
        # cin/cout exchanged; sub-pixel, it is four small stride-1 convs instead of XLA's conv
        # over a zero-dilated g.
        dx = conv_chunks.by_chunks(lambda gc: _subpixel_k4s2p1(gc, _swap_io(kernel)), g)
    elif stride == 1 and 2 * padding == kernel.shape[0] - 1:
        # size-preserving stride 1 (the 3x3 layers): the conv of g with the flipped kernel
        k = kernel.shape[0]
        dx = _chunked_conv(g, _swap_io(kernel)[::-1, ::-1], 1, k - 1 - padding)
    else:
        _, x_vjp = jax.vjp(lambda x: _lax_conv(x, kernel, stride, padding), x)
        (dx,) = x_vjp(g)
    dw = conv_chunks.chunked_weight_grad(x, g, kernel.shape[0], stride, padding)
    return dx, dw.astype(kernel.dtype)


_conv_fast_dw.defvjp(_conv_fwd, _conv_bwd)


def conv_transpose2d(x_BxHxWxC, kernel, stride: int, padding: int, impl: str = "auto"):
    """PyTorch `ConvTranspose2d` (no output padding), NHWC, kernel [kh, kw, cin, cout]."""
    b, h, w, _ = x_BxHxWxC.shape
    k, _, cin, cout = kernel.shape
    if impl == "auto":
        return _per_platform(conv_transpose2d, x_BxHxWxC, kernel, stride, padding)
    if impl == "xla":
        # Transposed conv = dilated-input conv with the spatially flipped kernel.
        return jax.lax.conv_transpose(
            x_BxHxWxC,
            kernel[::-1, ::-1],
            (stride, stride),
            [(k - 1 - padding, k - 1 - padding)] * 2,
            dimension_numbers=_DN,
        )
    if (h, w) == (1, 1) and padding == 0:
        # Every output pixel is one tap: [B, cin] @ [cin, k*k*cout].
        kernel_CxKKO = kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)
        return (x_BxHxWxC.reshape(b, cin) @ kernel_CxKKO).reshape(b, k, k, cout)
    if stride == 1:
        # A stride-1 transposed conv is a conv with the flipped kernel and padding k-1-p.
        return conv2d(x_BxHxWxC, kernel[::-1, ::-1], 1, k - 1 - padding, impl)
    if (k, stride, padding) != (4, 2, 1):
        raise NotImplementedError(f"conv_transpose2d: k={k} s={stride} p={padding}")
    return conv_transpose_k4s2p1(x_BxHxWxC, kernel)


def _subpixel_k4s2p1(x_BxHxWxC, kernel):
    """ConvTranspose2d(k=4, s=2, p=1) as four 2x2 stride-1 convs + depth-to-space."""
    b, h, w, _ = x_BxHxWxC.shape
    cout = kernel.shape[-1]
    rows = []
    for ry in (0, 1):
        cols = []
        for rx in (0, 1):
            k2 = jnp.stack(
                [jnp.stack([kernel[ty, tx] for tx in _PARITY_TAPS[rx]]) for ty in _PARITY_TAPS[ry]]
            )  # [2, 2, cin, cout]
            pad = [(1 - ry, ry), (1 - rx, rx)]  # parity r reads input rows m-1+r, m+r
            cols.append(_lax_conv(x_BxHxWxC, k2, 1, pad))
        rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2(rx), C]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)  # [B, H, 2(ry), W, 2, C]


def _swap_io(kernel):
    return kernel.transpose(0, 1, 3, 2)


@jax.custom_vjp
def conv_transpose_k4s2p1(x_BxHxWxC, kernel):
    """ConvTranspose2d(k=4, s=2, p=1), sub-pixel, with derivatives from the adjoint conv.

    The transposed conv is the adjoint (in x) of conv2d(., W^T, stride 2, padding 1), W^T the
    kernel with cin/cout exchanged. Hence dx = conv2d(g, W^T) and dW = (d/dW^T of
    <conv2d(g, W^T), x>)^T: both are derivatives XLA:CPU computes fast.
    """
    return conv_chunks.inference_chunks(lambda xc: _subpixel_k4s2p1(xc, kernel), x_BxHxWxC)


def _convt_fwd(x, kernel):
    return conv_chunks.by_chunks(lambda xc: _subpixel_k4s2p1(xc, kernel), x), (x, kernel)


def _convt_bwd(res, g):
    x, kernel = res
    dx = _chunked_conv(g, _swap_io(kernel), 2, 1)  # the adjoint: conv2d(g, W^T, 2, 1)
    dk_t = conv_chunks.chunked_weight_grad(g, x.astype(g.dtype), 4, 2, 1)  # [4, 4, cout, cin]
    return dx.astype(x.dtype), _swap_io(dk_t).astype(kernel.dtype)


conv_transpose_k4s2p1.defvjp(_convt_fwd, _convt_bwd)


def torch_uniform_init(fan_in_axes):
    """PyTorch's default initialiser: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = 1
        for a in fan_in_axes:
            fan_in *= shape[a]
        bound = 1.0 / jnp.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _row_shift_sized(x, k: int, layer) -> bool:
    """Whether input and output are both 8x8 or larger: the layers that apply the norm
    before them inside their chunks. The 4x4 layers apply it whole: fused, they were no
    faster, and a BatchNorm bias gradient moved by 1e-3 of its scale (BENCHMARKS.md,
    fortieth session)."""
    s, p, h = layer.stride, layer.padding, x.shape[1]
    out = (h - 1) * s - 2 * p + k if layer.transpose else (h + 2 * p - k) // s + 1
    return min(h, out) * min(x.shape[2], out) >= 64


class Conv(nn.Module):
    """Conv2d / ConvTranspose2d layer (PyTorch semantics) with [k, k, cin, cout] kernel."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    transpose: bool = False
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, norm=None, with_moments: bool = False, defer_bias: bool = False):
        """The conv of x, or with `norm` (mean, mul, bias, slope: `norm_act`) of
        act((x - mean) * mul + bias), by chunks with the CPU formulation. `with_moments`:
        returns (y, the moments `norm_act.normalized_conv` took of y, or None where it did
        not run). `defer_bias` (with `use_bias`): returns (y without its bias, None, the
        bias), for the next layer's norm to add (`norm_act.identity`)."""
        k, cin = self.kernel_size, x.shape[-1]
        # PyTorch's fan_in: cin*k*k for Conv2d, cout*k*k for ConvTranspose2d (its weight dim 1).
        fan_axes = (0, 1, 3) if self.transpose else (0, 1, 2)
        kernel = self.param("kernel", torch_uniform_init(fan_axes), (k, k, cin, self.features))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        op = functools.partial(
            conv_transpose2d if self.transpose else conv2d,
            stride=self.stride,
            padding=self.padding,
            impl=self.impl,
        )
        moments = None
        if norm is not None and self.impl == "matmul" and _row_shift_sized(x, k, self):
            # moments of y with its bias are not those taken: none where a bias is added
            take = with_moments and not self.use_bias
            y, moments = norm_act.normalized_conv(op, norm[3], x, *norm[:3], kernel, take)
        else:
            y = op(norm_act.affine_act(x, norm) if norm is not None else x, kernel)
        if not self.use_bias:
            return (y, moments) if with_moments else y
        fan = k * k * (self.features if self.transpose else cin)
        bound = 1.0 / jnp.sqrt(fan)
        bias = self.param(
            "bias",
            lambda key, s: jax.random.uniform(key, s, jnp.float32, -bound, bound),
            (self.features,),
        )
        if defer_bias:
            return y, None, bias
        y = y + bias.astype(self.dtype)
        return (y, None) if with_moments else y
