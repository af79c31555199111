"""Memory addressing (MAM, eqs. 2-5) and the gated feature repair module (FRM, eqs. 6-10)."""

import jax
import jax.numpy as jnp
from flax import linen as nn

EPS_SHRINK = 1e-12  # hard-shrinkage / log epsilon of eqs. 4-5
SIMILARITIES = ("cosine", "dot")  # cosine: the paper (eq. 2); dot: the MemAE code
# FRM gate activation: softmax (the paper, Table I), sigmoid, or softmax times the latent size
# D (`softmax_scaled`: a softmax over D features averages 1/D, which shrinks z_out ~D-fold and
# starves the decoder's first BatchNorm; scaled by D the gates average 1 and keep softmax's
# competition between features).
GATES = ("softmax", "sigmoid", "softmax_scaled")
EPS_NORM = 1e-8  # cosine-similarity norm floor (as torch.nn.functional.normalize)


def l2_normalize(x, axis=-1, eps=EPS_NORM):
    """x / max(||x||, eps), with a zero (not NaN) gradient at x = 0."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def address(z_BxD, memory_NxD, similarity="cosine", shrink_threshold=None, temperature=1.0):
    """Soft addressing with hard shrinkage.

    Returns (z_mem [B,D], w_hat [B,N], entropy [B]): w = softmax_i(sim(z, m_i) / temperature);
    w_hat = relu(w - lam) * w / (|w - lam| + eps), L1-renormalised; z_mem = w_hat @ M;
    entropy_b = sum_i -w_hat_i log(w_hat_i + eps). `temperature` 1 is the paper; cosine
    similarities lie in [-1, 1], so at temperature 1 the weights stay within e^2 of each other
    and at least N / e^2 items survive the shrinkage; a temperature < 1 lets the memory be sparse.
    """
    n = memory_NxD.shape[0]
    lam = 1.0 / n if shrink_threshold is None or shrink_threshold < 0 else shrink_threshold
    if similarity == "cosine":
        sim_BxN = l2_normalize(z_BxD) @ l2_normalize(memory_NxD).T
    elif similarity == "dot":
        sim_BxN = z_BxD @ memory_NxD.T
    else:
        raise ValueError(f"model.similarity must be 'cosine' or 'dot', got {similarity!r}")
    w_BxN = jax.nn.softmax(sim_BxN / temperature, axis=-1)
    shifted = w_BxN - lam
    w_hat = jax.nn.relu(shifted) * w_BxN / (jnp.abs(shifted) + EPS_SHRINK)
    w_hat = w_hat / (jnp.sum(w_hat, axis=-1, keepdims=True) + EPS_SHRINK)
    z_mem_BxD = w_hat @ memory_NxD
    entropy_B = jnp.sum(-w_hat * jnp.log(w_hat + EPS_SHRINK), axis=-1)
    return z_mem_BxD, w_hat, entropy_B


def fuse(z, forget, inp, candidate):
    """Eq. 10: the repaired code f * z + i * C."""
    return forget * z + inp * candidate


class Memory(nn.Module):
    """N x D memory matrix M, initialised U(-1/sqrt(D), 1/sqrt(D)), and its addressing."""

    size: int
    similarity: str = "cosine"
    shrink_threshold: float = -1.0
    temperature: float = 1.0

    @nn.compact
    def __call__(self, z_BxD):
        d = z_BxD.shape[-1]
        bound = 1.0 / jnp.sqrt(d)
        items = self.param(
            "items",
            lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound),
            (self.size, d),
        )
        z_BxD = z_BxD.astype(jnp.promote_types(z_BxD.dtype, jnp.float32))
        return address(z_BxD, items, self.similarity, self.shrink_threshold, self.temperature)


class FeatureRepair(nn.Module):
    """Gated fusion of the encoder code z and the memory code z_mem (eqs. 6-10)."""

    gate: str = "softmax"

    @nn.compact
    def __call__(self, z_BxD, z_mem_BxD):
        d = z_BxD.shape[-1]
        if self.gate == "softmax":
            act = jax.nn.softmax
        elif self.gate == "sigmoid":
            act = jax.nn.sigmoid
        elif self.gate == "softmax_scaled":
            act = lambda x: d * jax.nn.softmax(x)
        else:
            raise ValueError(f"model.gate must be one of {GATES}, got {self.gate!r}")
        c = jnp.concatenate([z_BxD, z_mem_BxD], axis=-1)
        forget = act(nn.Dense(d, name="forget")(c))
        inp = act(nn.Dense(d, name="input")(c))
        candidate = jnp.tanh(nn.Dense(d, name="candidate")(c))
        return fuse(z_BxD, forget, inp, candidate)
