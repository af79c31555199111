"""CMA-AE training loss: weighted L1 reconstruction + memory-addressing entropy (sparsity),
and the segment head's per-pixel cross-entropy against the paste mask (stage 2)."""

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


def segmentation_bce(logits_BxHxW, mask_BxHxW):
    """Mean binary cross-entropy of anomaly logits against a {0, 1} mask, over every pixel:
    -mean(m log sigmoid(l) + (1 - m) log(1 - sigmoid(l))), computed stably from the logits."""
    m = mask_BxHxW.astype(jnp.float32)
    return jnp.mean(m * jax.nn.softplus(-logits_BxHxW) + (1 - m) * jax.nn.softplus(logits_BxHxW))
