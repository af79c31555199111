"""The discriminative head (`model.segment_head`): where an image departs from its repair.

(image [B,H,W,3], reconstruction [B,H,W,3]) -> [image, reconstruction, |image - reconstruction|]
-> a small fully convolutional U-Net (two 2x downsamplings, additive skips) -> anomaly logits
[B,H,W]. It learns in stage 2 from the GAAGA paste masks: the auto-encoder's repair of a pasted
region differs from the input in ways a fixed residual (pixel or MSFR) weighs badly (texture
that reconstructs blurred everywhere, edges the model reproduces worse than the surface), and
the head learns which differences are pastes. The reconstruction reaches it without gradient
(`train.py`), so the auto-encoder trains exactly as without the head. Being fully
convolutional, it runs once on whole images and their blended window reconstructions at test
time (`scoring.py`); H and W must be multiples of 4.
"""

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from cmaae_jax import layers

WIDTHS = (16, 32, 64)  # channels at full, 1/2 and 1/4 resolution
PRIOR_LOGIT = -2.0  # initial output bias: about 12% of pixels anomalous, as a paste's share


class Segmenter(nn.Module):
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32

    def _conv(self, features, kernel, stride, padding, name):
        return layers.Conv(
            features, kernel, stride, padding, impl=self.impl, dtype=self.dtype, name=name
        )

    @nn.compact
    def __call__(self, image_BxHxWx3, rec_BxHxWx3):
        b, h, w, _ = image_BxHxWx3.shape
        chex.assert_shape([image_BxHxWx3, rec_BxHxWx3], (b, h, w, 3))
        if h % 4 or w % 4:
            raise ValueError(f"the segment head needs sides divisible by 4, got {h}x{w}")
        w1, w2, w3 = WIDTHS
        x = jnp.concatenate(
            [image_BxHxWx3, rec_BxHxWx3, jnp.abs(image_BxHxWx3 - rec_BxHxWx3)], axis=-1
        )
        full = nn.relu(self._conv(w1, 3, 1, 1, "full")(x))
        half = nn.relu(self._conv(w2, 4, 2, 1, "down1")(full))
        half = nn.relu(self._conv(w2, 3, 1, 1, "half")(half))
        quarter = nn.relu(self._conv(w3, 4, 2, 1, "down2")(half))
        quarter = nn.relu(self._conv(w3, 3, 1, 1, "quarter")(quarter))
        up = _upsample2(self._conv(w2, 1, 1, 0, "lift2")(quarter)) + half
        up = nn.relu(self._conv(w2, 3, 1, 1, "up2")(up))
        up = _upsample2(self._conv(w1, 1, 1, 0, "lift1")(up)) + full
        up = nn.relu(self._conv(w1, 3, 1, 1, "up1")(up))
        logits = self._conv(1, 1, 1, 0, "logits")(up)
        out = logits[..., 0].astype(jnp.float32) + PRIOR_LOGIT
        chex.assert_shape(out, (b, h, w))
        return out


def _upsample2(x_BxHxWxC):
    """Nearest-neighbour 2x upsampling."""
    return jnp.repeat(jnp.repeat(x_BxHxWxC, 2, axis=1), 2, axis=2)


def anomaly_score(logits):
    """The map of the head: softplus(logit) = -log(1 - p), the surprise of "normal" at
    probability p of "anomalous". Positive and increasing like p, but without p's rounding
    to exactly 1 in float32 above logit ~17, which would tie the most confident pixels."""
    return jax.nn.softplus(logits)
