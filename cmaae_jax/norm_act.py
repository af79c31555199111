"""BatchNorm and the activation after it, as a per-channel affine map the caller applies:
on its own (`affine_act`), or as the prologue of the next convolution, by chunks of the
batch (`normalized_conv`, the training step's CPU path).

`BatchNorm` keeps flax's `nn.BatchNorm` variables and arithmetic (params `scale`, `bias`;
batch_stats `mean`, `var`; fast variance E[x^2] - E[x]^2 clipped at 0, averaged over the pmap
axis; running averages with momentum; y = (x - mean) * (scale * rsqrt(var + eps)) + bias),
but returns the statistics (mean, multiplier, bias) instead of y. Applied on their own they
give flax's numbers (tests/test_norm_act.py).

Why: on XLA:CPU every elementwise pass over a large activation (normalise, activate, and in
the backward pass their derivatives) is a fresh buffer written at a fraction of the copy
speed. `normalized_conv` computes conv(act((p - mean) * mul + bias)) chunk by chunk: the
normalised input of a chunk exists only in cache, forward and backward (where it is
recomputed), and only p, the previous conv's output, is kept for the backward pass. It also
sums the next BatchNorm's moments while each output chunk is in cache, and adds their
gradient there in the backward pass (BENCHMARKS.md, thirty-ninth session).
"""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from cmaae_jax import conv_chunks

# Slopes of the model's activations: ReLU and LeakyReLU(0.2).
RELU, LEAKY = 0.0, 0.2


class BatchNorm(nn.Module):
    """flax's `nn.BatchNorm` over [B, H, W, C] that returns (mean, mul, bias) per channel."""

    train: bool
    axis_name: str | None = None  # pmap axis over which the statistics are averaged
    momentum: float = 0.9  # PyTorch's 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x_BxHxWxC, moments=None):
        """`moments`: [2, C], the means of x and of x^2 over (B, H, W) where the caller has
        them (`normalized_conv`); in training they are taken from x otherwise."""
        c = x_BxHxWxC.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        if self.train:
            if moments is None:
                x = x_BxHxWxC.astype(jnp.promote_types(x_BxHxWxC.dtype, jnp.float32))
                moments = jnp.stack([x.mean((0, 1, 2)), jnp.square(x).mean((0, 1, 2))])
            if self.axis_name is not None and not self.is_initializing():
                moments = jax.lax.pmean(moments, self.axis_name)
            mean, var = moments[0], jnp.maximum(0.0, moments[1] - jnp.square(moments[0]))
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var
        else:
            mean, var = ra_mean.value, ra_var.value
        return mean, jax.lax.rsqrt(var + self.epsilon) * scale, bias


def _act(pre, slope: float):
    # jax.nn.leaky_relu's and jax.nn.relu's values and derivatives (1 at 0 for leaky_relu,
    # 0 for relu)
    return jnp.where(pre >= 0, pre, slope * pre) if slope else jax.nn.relu(pre)


def _act_grad(pre, slope: float):
    return jnp.where(pre >= 0, 1.0, slope) if slope else (pre > 0).astype(pre.dtype)


def affine_act(x_BxHxWxC, norm):
    """act((x - mean) * mul + bias) in x's dtype; `norm` = (mean, mul, bias, slope)."""
    mean, mul, bias, slope = norm
    pre = (x_BxHxWxC - mean) * mul + bias
    return _act(pre, slope).astype(x_BxHxWxC.dtype)


def identity(channels: int, slope: float, bias=None):
    """The `norm` of an activation with no BatchNorm before it: act(x + bias), the bias (a
    conv's own, added here instead of in a pass of its own) zero if None."""
    zeros = jnp.zeros((channels,), jnp.float32)
    return zeros, jnp.ones((channels,), jnp.float32), zeros if bias is None else bias, slope


def normalized_conv(op, slope, p_BxHxWxC, mean, mul, bias, kernel, moments: bool = True):
    """(op(act((p - mean) * mul + bias), kernel), its moments), by chunks of the batch.

    `op(h, kernel)` is a convolution of the batch's images one by one (no mixing across the
    batch), differentiable in h and kernel. The moments, [2, cout] float32 (float64 with a
    float64 kernel), are the
    per-channel means of the output and of its square over batch and pixels: the next
    BatchNorm's statistics, summed chunk by chunk while each is in cache (None with
    `moments=False`: none taken, and the output not kept for the backward pass). The
    backward pass runs over chunks too: each chunk's normalised input is recomputed, the
    moments' gradient added to the output's, and the chunk's gradients of p, and of mean,
    mul, bias and kernel (summed over the chunks), are taken there.
    """
    return _normalized_conv(op, slope, moments, p_BxHxWxC, mean, mul, bias, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _normalized_conv(op, slope, with_moments, p_BxHxWxC, mean, mul, bias, kernel):
    norm = (mean, mul, bias, slope)
    b, h, w, _ = p_BxHxWxC.shape
    wide = jnp.promote_types(kernel.dtype, jnp.float32)

    def one_chunk(sums, pc):
        out = op(affine_act(pc, norm), kernel)
        if not with_moments:
            return sums, out
        out_wide = out.astype(wide)
        return sums + jnp.stack([out_wide.sum((0, 1, 2)), jnp.square(out_wide).sum((0, 1, 2))]), out

    zeros = jnp.zeros((2, kernel.shape[-1]), wide)
    chunks = conv_chunks.as_chunks(p_BxHxWxC, conv_chunks.batch_chunk(b, h * w))
    sums, out = jax.lax.scan(one_chunk, zeros, chunks)
    out = out.reshape(b, *out.shape[2:])
    return out, sums / (b * out.shape[1] * out.shape[2]) if with_moments else None


def _normalized_conv_fwd(op, slope, with_moments, p, mean, mul, bias, kernel):
    out, moments = _normalized_conv(op, slope, with_moments, p, mean, mul, bias, kernel)
    return (out, moments), (p, mean, mul, bias, kernel, out if with_moments else None)


def _normalized_conv_bwd(op, slope, with_moments, res, cotangents):
    p, mean, mul, bias, kernel, out = res
    g, g_moments = cotangents
    b, h, w, _ = p.shape
    wide = jnp.promote_types(kernel.dtype, jnp.float32)
    if with_moments:
        g_moments = g_moments / (b * g.shape[1] * g.shape[2])

    def one_chunk(sums, chunk):
        pc, gc, oc = chunk if with_moments else (*chunk, None)
        gc = gc.astype(wide)
        if with_moments:
            gc = gc + g_moments[0] + 2 * oc.astype(wide) * g_moments[1]
        centred = pc.astype(wide) - mean
        pre = centred * mul + bias
        _, op_vjp = jax.vjp(op, _act(pre, slope).astype(pc.dtype), kernel)
        dh, dk = op_vjp(gc.astype(g.dtype))
        dpre = dh.astype(wide) * _act_grad(pre, slope)
        d_mul = jnp.sum(dpre * centred, axis=(0, 1, 2))
        d_bias = jnp.sum(dpre, axis=(0, 1, 2))
        sums = jax.tree.map(jnp.add, sums, (d_mul, d_bias, dk))
        return sums, (dpre * mul).astype(pc.dtype)

    zeros = (jnp.zeros(mul.shape, wide), jnp.zeros(bias.shape, wide), jnp.zeros_like(kernel))
    chunk = conv_chunks.batch_chunk(b, max(h * w, g.shape[1] * g.shape[2]))
    xs = tuple(conv_chunks.as_chunks(x, chunk) for x in (p, g, out)[: 2 + with_moments])
    (d_mul, d_bias, dk), dp = jax.lax.scan(one_chunk, zeros, xs)
    d_mean = (-d_bias * mul).astype(mean.dtype)
    return dp.reshape(p.shape), d_mean, d_mul.astype(mul.dtype), d_bias.astype(bias.dtype), dk


_normalized_conv.defvjp(_normalized_conv_fwd, _normalized_conv_bwd)
