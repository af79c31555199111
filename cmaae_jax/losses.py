"""CMA-AE training loss: weighted L1 reconstruction + memory-addressing entropy (sparsity),
optionally the first encoder layer's feature residual (what the default MSFR map scores), and
the segment head's per-pixel cross-entropy against the paste mask (stage 2)."""

import jax
import jax.numpy as jnp

# What stage 2 reconstructs (train.stage2_target): the clean image the anomaly was pasted into
# (learning to repair; the default) or the anomalous input itself (the paper's eq. 12 as printed).
STAGE2_TARGETS = ("clean", "input")


def reconstruction_l1(target, rec):
    """mean |target - rec| over every element."""
    return jnp.mean(jnp.abs(target - rec))


def total(target, rec, entropy_B, w_rec, w_sparse):
    """L = w_rec * mean|target - rec| + w_sparse * mean_b(entropy_b); returns (L, parts)."""
    rec_loss = reconstruction_l1(target, rec)
    sparse = jnp.mean(entropy_B)
    return w_rec * rec_loss + w_sparse * sparse, {"l1": rec_loss, "entropy": sparse}


def feature_residual(net, params, target_Bx64x64x3, rec_Bx64x64x3):
    """sum (F1(target) - F1(rec))^2 / sum F1(target)^2: the squared residual of encoder layer 1
    (the default MSFR scale, eq. 14) relative to the target's feature energy, so the weight
    `loss.w_feat` does not depend on the layer's scale. The layer is a fixed loss network
    here: its parameters and the denominator carry no gradient, so only the reconstruction
    (and through it the rest of the model) learns from this term, and the encoder cannot
    lower it by shrinking its first layer."""
    frozen = {"params": jax.lax.stop_gradient(params)}
    f_target = net.apply(frozen, target_Bx64x64x3, 1, method="features")[0]
    f_rec = net.apply(frozen, rec_Bx64x64x3, 1, method="features")[0]
    energy = jax.lax.stop_gradient(jnp.sum(jnp.square(f_target)))
    return jnp.sum(jnp.square(f_target - f_rec)) / (energy + 1e-12)


def segmentation_bce(logits_BxHxW, mask_BxHxW):
    """Mean binary cross-entropy of anomaly logits against a {0, 1} mask, over every pixel:
    -mean(m log sigmoid(l) + (1 - m) log(1 - sigmoid(l))), computed stably from the logits."""
    m = mask_BxHxW.astype(jnp.float32)
    return jnp.mean(m * jax.nn.softplus(-logits_BxHxW) + (1 - m) * jax.nn.softplus(logits_BxHxW))
