"""The CMA-AE network: encoder (Table I) -> memory -> feature repair -> decoder.

image/patch [B,H,W,3] -> encoder -> z [B,D] -> memory (z_mem) -> repair (z_out) -> decoder
-> reconstruction [B,64,64,3]. The encoder is fully convolutional up to layer 5, so
`CMAAE.features` runs layers 1..3 on whole images for MSFR.
"""

import functools

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from cmaae_jax import layers, memory, norm_act, segmenter

VARIANTS = ("cmam", "mam", "cat", "ae")
DTYPES = ("float32", "bfloat16")  # compute dtypes (parameters stay float32)
CONV_IMPLS = layers.IMPLS  # auto: per platform at lowering (layers.py)
PATCH = 64

# (features, kernel, stride, padding, batch_norm, activation) per encoder layer (Table I).
ENCODER = (
    (32, 4, 2, 1, False, True),
    (32, 3, 1, 1, True, True),
    (64, 4, 2, 1, True, True),
    (128, 4, 2, 1, True, True),
    (256, 4, 2, 1, True, True),
    (None, 4, 1, 0, False, False),  # latent_dim
)
# Decoder: transposed convs (features, kernel, stride, padding); all but the last BN + ReLU.
DECODER = (
    (256, 4, 1, 0),
    (128, 4, 2, 1),
    (64, 4, 2, 1),
    (32, 4, 2, 1),
    (32, 3, 1, 1),
    (3, 4, 2, 1),
)


def for_local_devices(net):
    """`net` with `auto` resolved for this process's devices, for what runs only here (the
    pmapped training step, the in-process map functions): traced with one formulation, not
    with every platform's branch of `per_platform` (BENCHMARKS.md, fifty-second session).
    Whatever may be lowered for another platform (exports) keeps `auto`."""
    if net.impl != "auto":
        return net
    return net.clone(impl=layers.impl_on(jax.local_devices()[0].platform))


def per_platform(net, fn, *args):
    """`fn(net, *args)` with `net`'s convolutions chosen per platform when `net.impl` is
    `auto`: the whole computation (forward and, when `fn` differentiates, backward) runs with
    the `matmul` model on CPU and the `xla` model elsewhere (`layers.impl_on`), as one
    `platform_dependent` branch each, so no per-layer branch boundary stands between a layer
    and its gradient. Lowered for one platform, only its branch is compiled; every branch is
    traced (`for_local_devices` spares that where the platform is known)."""
    if net.impl != "auto":
        return fn(net, *args)
    return jax.lax.platform_dependent(
        *args,
        cpu=lambda *a: fn(net.clone(impl=layers.impl_on("cpu")), *a),
        default=lambda *a: fn(net.clone(impl=layers.impl_on("default")), *a),
    )


def _norm_after(y, moments, batch_norm: bool, slope, train, axis_name, name, bias=None):
    """The `norm_act` norm of the BatchNorm (flax's arithmetic and variables; statistics
    averaged across devices under pmap when `axis_name` is set; `moments` of y where the
    conv took them) and the activation after a conv's output y, or None where it has
    neither; `bias`: the conv's own, deferred to this norm (`layers.Conv`)."""
    if batch_norm:
        return (*norm_act.BatchNorm(train, axis_name, name=name)(y, moments), slope)
    return None if slope is None else norm_act.identity(y.shape[-1], slope, bias)


def _defers_bias(fused: bool, batch_norm: bool, slope, last: bool) -> bool:
    """Whether a layer's bias is added by the next conv's norm, inside its chunks (training's
    CPU path; the first encoder layer) rather than in a pass over the whole output."""
    return fused and not batch_norm and slope is not None and not last


def _chain(y, norm, fused: bool):
    """(input of the next conv, its pending norm): with `fused` (training's CPU path), y and
    the norm the next conv applies by chunks (norm_act.normalized_conv); else the
    normalised, activated y, and None."""
    if fused or norm is None:
        return y, norm
    return norm_act.affine_act(y, norm), None


class Encoder(nn.Module):
    latent_dim: int = 512
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    axis_name: str | None = None  # pmap axis over which BatchNorm statistics are averaged

    @nn.compact
    def __call__(self, x_BxHxWx3, train: bool, num_layers: int = 6, first: int = 0):
        """Returns the outputs of layers `first`..`num_layers`-1 (0-based) of an input to layer
        `first` (an image where 0); in training with the CPU formulation (`impl` matmul),
        whose layers pass their BatchNorm and activation on to the next conv (`_chain`), the
        last one alone."""
        fused = train and self.impl == "matmul"
        feats, h, norm = [], x_BxHxWx3, None
        for i, (f, k, s, p, bn, act) in enumerate(ENCODER[:num_layers]):
            if i < first:
                continue
            slope, last = norm_act.LEAKY if act else None, i == num_layers - 1
            defer = _defers_bias(fused, bn, slope, last)
            y, moments, *bias = layers.Conv(
                f or self.latent_dim,
                k,
                s,
                p,
                use_bias=not bn,
                impl=self.impl,
                dtype=self.dtype,
                name=f"conv{i + 1}",
            )(h, norm, with_moments=True, defer_bias=defer)
            name = f"bn{i + 1}"
            norm = _norm_after(y, moments, bn, slope, train, self.axis_name, name, *bias)
            h, norm = _chain(y, norm, fused and not last)
            if norm is None:
                feats.append(h)
        return feats


def encoder_layer(variables, i: int, x_BxHxWxC, padding, dtype=jnp.float32):
    """Encoder layer i (0-based) of a `CMAAE`'s variables in eval mode, its conv with the
    explicit zero padding ((top, bottom), (left, right)) in place of its own: the same conv,
    bias or BatchNorm and activation as `Encoder` (`window_features` computes parts of a
    window's feature map with it)."""
    _, k, s, _, bn, act = ENCODER[i]
    params = variables["params"]["encoder"]
    conv = params[f"conv{i + 1}"]
    y = layers.conv2d(x_BxHxWxC.astype(dtype), conv["kernel"].astype(dtype), s, padding, impl="xla")
    slope = norm_act.LEAKY if act else None
    if bn:
        stats = {"params": params[f"bn{i + 1}"]}
        stats["batch_stats"] = variables["batch_stats"]["encoder"][f"bn{i + 1}"]
        norm = (*norm_act.BatchNorm(False).apply(stats, y), slope)
    elif slope is not None:
        norm = norm_act.identity(y.shape[-1], slope, conv["bias"])
    else:
        return y + conv["bias"].astype(dtype)
    return norm_act.affine_act(y, norm)


class Decoder(nn.Module):
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    axis_name: str | None = None  # pmap axis over which BatchNorm statistics are averaged

    @nn.compact
    def __call__(self, z_BxD, train: bool, first: int = 0, last: int = len(DECODER)):
        """Layers `first`..`last`-1 (0-based) of an input to layer `first` (the code z where
        0, else the previous layer's normalised, activated output): the reconstruction where
        `last` is the last layer, else layer `last`-1's activated output (eval mode only)."""
        fused = train and self.impl == "matmul"
        if fused and last < len(DECODER):
            raise ValueError("the decoder stops early only in eval mode")
        h, norm = (z_BxD[:, None, None, :] if first == 0 else z_BxD), None
        for i, (f, k, s, p) in enumerate(DECODER[:last]):
            if i < first:
                continue
            last_layer = i == len(DECODER) - 1
            y, moments = layers.Conv(
                f,
                k,
                s,
                p,
                use_bias=last_layer,
                transpose=True,
                impl=self.impl,
                dtype=self.dtype,
                name=f"deconv{i + 1}",
            )(h, norm, with_moments=True)
            if last_layer:
                return jnp.tanh(y)
            bn = f"bn{i + 1}"
            norm = _norm_after(y, moments, True, norm_act.RELU, train, self.axis_name, bn)
            h, norm = _chain(y, norm, fused)
        return h


class CMAAE(nn.Module):
    """CMA-AE and its ablation variants (SPEC section 1), one code path."""

    variant: str = "cmam"
    memory_size: int = 500
    latent_dim: int = 512
    similarity: str = "cosine"
    shrink_threshold: float = -1.0
    temperature: float = 1.0
    gate: str = "softmax"
    segment_head: bool = False  # a discriminative head (segmenter.py) beside the decoder
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    axis_name: str | None = None  # pmap axis over which BatchNorm statistics are averaged

    def setup(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"model.variant must be one of {VARIANTS}, got {self.variant!r}")
        self.encoder = Encoder(self.latent_dim, self.impl, self.dtype, self.axis_name)
        self.decoder = Decoder(self.impl, self.dtype, self.axis_name)
        if self.variant != "ae":
            self.memory = memory.Memory(
                self.memory_size, self.similarity, self.shrink_threshold, self.temperature
            )
        if self.variant == "cmam":
            self.repair = memory.FeatureRepair(self.gate)
        elif self.variant == "cat":
            self.fusion = nn.Dense(self.latent_dim)
        if self.segment_head:
            self.segmenter = segmenter.Segmenter(self.impl, self.dtype)

    def __call__(self, x_Bx64x64x3, train: bool = False):
        """Returns (reconstruction [B,64,64,3] float32, aux dict with z, z_out, w_hat, entropy).
        (float64 where `dtype` is: the tests' exact runs under `jax.enable_x64`.)"""
        b = x_Bx64x64x3.shape[0]
        chex.assert_shape(x_Bx64x64x3, (b, PATCH, PATCH, 3))
        return self._from_code(self.encoder(x_Bx64x64x3, train)[-1], train)

    def reconstruct_from(self, h_Bxhxwxc, first: int):
        """`__call__` in eval mode from the output of encoder layer `first` (1-based) of 64x64
        windows, e.g. taken from their images' feature maps (`window_features`)."""
        return self._from_code(self.encoder(h_Bxhxwxc, False, first=first)[-1], False)

    def encoded_between(self, h_Bxhxwxc, first: int, last: int):
        """Encoder layers first+1..last (1-based) in eval mode, from layer `first`'s output:
        layer `last`'s (`scoring` runs the windows' layers in three parts, see
        `decoder_input_from`)."""
        return self.encoder(h_Bxhxwxc, False, last, first)[-1]

    def decoder_input_from(self, h_Bxhxwxc, first: int, decoder_layers: int = 1):
        """Eval mode from encoder layer `first`'s output to decoder layer `decoder_layers`'s
        activated output: the rest of the encoder, memory, repair and the decoder's first
        layers (`decoded_from` finishes it)."""
        z_out, _ = self._repaired(self.encoder(h_Bxhxwxc, False, first=first)[-1])
        return self.decoder(z_out, False, last=decoder_layers)

    def decoded_from(self, h_Bxhxwxc, first: int):
        """The reconstruction [B,64,64,3] in eval mode from decoder layer `first`'s activated
        output (1-based)."""
        wide = jnp.promote_types(self.dtype, jnp.float32)
        return self.decoder(h_Bxhxwxc, False, first=first).astype(wide)

    def _repaired(self, z_Bx1x1xD):
        """(z_out, aux): memory and repair of the last encoder layer's output."""
        b = z_Bx1x1xD.shape[0]
        wide = jnp.promote_types(self.dtype, jnp.float32)
        z_BxD = z_Bx1x1xD.reshape(b, -1).astype(wide)
        chex.assert_shape(z_BxD, (b, self.latent_dim))
        if self.variant == "ae":
            z_out, w_hat, entropy_B = z_BxD, None, jnp.zeros((b,), wide)
        else:
            z_mem, w_hat, entropy_B = self.memory(z_BxD)
            if self.variant == "mam":
                z_out = z_mem
            elif self.variant == "cat":
                z_out = self.fusion(jnp.concatenate([z_BxD, z_mem], axis=-1))
            else:
                z_out = self.repair(z_BxD, z_mem)
        return z_out, {"z": z_BxD, "z_out": z_out, "w_hat": w_hat, "entropy": entropy_B}

    def _from_code(self, z_Bx1x1xD, train: bool):
        """Memory, repair and decoder from the last encoder layer's output (`__call__`)."""
        z_out, aux = self._repaired(z_Bx1x1xD)
        rec = self.decoder(z_out, train).astype(jnp.promote_types(self.dtype, jnp.float32))
        chex.assert_shape(rec, (z_Bx1x1xD.shape[0], PATCH, PATCH, 3))
        return rec, aux

    def features(self, x_BxHxWx3, num_layers: int = 3):
        """Encoder layer 1..num_layers feature maps (eval mode), for MSFR on whole images."""
        return self.encoder(x_BxHxWx3, False, num_layers)

    def segment(self, x_BxHxWx3, rec_BxHxWx3):
        """Anomaly logits [B,H,W] of the discriminative head (requires `segment_head`)."""
        if not self.segment_head:
            raise ValueError("this model has no segment head (model.segment_head=False)")
        return self.segmenter(x_BxHxWx3, rec_BxHxWx3)

    def initialize(self, x_Bx64x64x3):
        """Touches every submodule, so that `init` creates all the parameters."""
        rec, _ = self(x_Bx64x64x3, train=False)
        if self.segment_head:
            self.segment(x_Bx64x64x3, rec)
        return rec


def code_statistics(aux) -> dict:
    """What the training log records of the latent codes (no gradient flows through it):
    `items_used`, the mean number of memory items with non-zero weight after shrinkage (0
    without a memory), and the RMS of the encoder's code z and of the decoder's input z_out
    (softmax gates shrink z_out ~latent_dim-fold; see memory.GATES)."""
    rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(jax.lax.stop_gradient(x))))
    w_hat = aux["w_hat"]
    used = 0.0 if w_hat is None else jnp.mean(jnp.sum(jax.lax.stop_gradient(w_hat) > 0, -1))
    return {"items_used": jnp.float32(used), "z_rms": rms(aux["z"]), "z_out_rms": rms(aux["z_out"])}


def from_config(config):
    """Builds the model from `config.model`."""
    m = config.model
    return CMAAE(
        variant=m.variant,
        memory_size=m.memory_size,
        latent_dim=m.latent_dim,
        similarity=m.similarity,
        shrink_threshold=m.shrink_threshold,
        temperature=m.get("temperature", 1.0),
        gate=m.gate,
        segment_head=bool(m.get("segment_head", False)),
        impl=m.conv_impl,
        dtype=jnp.dtype(m.dtype),
    )


def init(model, key):
    """Initial variables {'params', 'batch_stats'} for 64x64 patches.

    Jitted: op by op, every layer's ops would be compiled and cached one by one (about
    250 MB more host memory kept for the rest of the process on CPU, measured).
    """
    x = jnp.zeros((1, PATCH, PATCH, 3), jnp.float32)
    # The formulations share one parameter tree and initialisers, and the native convs
    # compile ~10x faster on CPU than the matmul formulation (tests/test_model.py checks
    # that both give the same variables).
    native = model.clone(impl="xla")
    return jax.jit(functools.partial(native.init, method="initialize"))(key, x)
