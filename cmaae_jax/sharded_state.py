"""The training state on the devices of the step's pmap axis, with the optimizer state and
the moving average split over them (as ZeRO's first stage): each device keeps and updates
1/D of Adam's moments and of the average of the parameters.

The parameters and BatchNorm statistics stay whole on every device (the forward and
backward passes need them). Every non-scalar leaf of the optimizer state and every leaf of
the moving average (`train.ema_decay` > 0) is, on device i, chunk i of the flattened leaf
zero-padded to D chunks of equal size; scalars (Adam's count) stay whole. The step takes
the mean gradient's chunk (a reduce-scatter instead of the all-reduce), updates its chunk
of the parameters with its chunk of the moments, its chunk of the average from its new
parameter chunk, and gathers the parameter chunks back (`update`): the same numbers as
every device updating everything, for an optimizer that works element by element (Adam,
and `set_to_zero` for the frozen memory), with half the moments' and the average's host
memory and work per device on two devices. On the host (checkpoints, the switch to stage 2,
evaluation) the state has its full shapes: `place` splits it onto the devices, `to_host`
joins it back.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cmaae_jax import replicas


def _chunk_size(size: int, d: int) -> int:
    return -(-size // d)


def _is_split(x) -> bool:
    return len(x.shape) >= 1


def _padded_flat(x, d: int):
    flat = x.reshape(-1)
    return jnp.pad(flat, (0, d * _chunk_size(flat.size, d) - flat.size))


def own_chunk(x, axis: str = replicas.AXIS):
    """This device's chunk of x (whole on every device), inside the pmapped step."""
    d = jax.lax.axis_size(axis)
    c = _chunk_size(x.size, d)
    return jax.lax.dynamic_slice(_padded_flat(x, d), (jax.lax.axis_index(axis) * c,), (c,))


def _mean_chunk(g, axis: str):
    d = jax.lax.axis_size(axis)
    return jax.lax.psum_scatter(_padded_flat(g, d), axis, tiled=True) / d


def _whole(chunk, like, axis: str):
    return jax.lax.all_gather(chunk, axis, tiled=True)[: like.size].reshape(like.shape)


_WHOLE_ON_DEVICES = (
    "the {} has whole leaves on the devices: put the training state there with "
    "sharded_state.place (replicas.replicate copies it whole)"
)


def update(tx, grads, opt_state, params, factor, ema=None, average=None, axis=replicas.AXIS):
    """(new params, new split optimizer state, new split average) after one step of `tx` on
    the devices' mean of `grads`, its updates scaled by `factor` (the learning-rate
    schedule's); `average(ema_chunks, new_param_chunks)` renews the moving average's chunks
    (`ema` None: none is kept, None is returned)."""
    if any(len(x.shape) > 1 for x in jax.tree.leaves(opt_state)):
        raise ValueError(_WHOLE_ON_DEVICES.format("optimizer state"))
    g = jax.tree.map(lambda x: _mean_chunk(x, axis), grads)
    p = jax.tree.map(lambda x: own_chunk(x, axis), params)
    updates, opt_state = tx.update(g, opt_state, p)
    p = optax.apply_updates(p, jax.tree.map(lambda u: u * factor, updates))
    if ema is not None:
        pairs = zip(jax.tree.leaves(ema), jax.tree.leaves(p), strict=True)
        if any(e.shape != c.shape for e, c in pairs):
            raise ValueError(_WHOLE_ON_DEVICES.format("moving average"))
        ema = average(ema, p)
    return jax.tree.map(lambda c, x: _whole(c, x, axis), p, params), opt_state, ema


_axis_index_of_each_device = jax.pmap(
    lambda _: jax.lax.axis_index(replicas.AXIS), axis_name=replicas.AXIS
)


def _axis_indices() -> list[int]:
    """The pmap axis index of each local device, in `jax.local_devices()` order."""
    if jax.process_count() == 1:
        return list(range(jax.local_device_count()))
    out = _axis_index_of_each_device(np.zeros(jax.local_device_count()))
    index = {s.device: int(np.asarray(s.data).reshape(-1)[0]) for s in out.addressable_shards}
    return [index[device] for device in jax.local_devices()]


def place(state):
    """The host TrainState on this process's devices, each device given only its chunk of
    every split leaf (no whole copy of the optimizer state on any device)."""
    d, order = jax.device_count(), _axis_indices()

    def leaf(x):
        x = np.asarray(x)
        if not _is_split(x):
            return replicas.per_device([x] * len(order))
        flat = np.zeros(d * _chunk_size(x.size, d), x.dtype)
        flat[: x.size] = x.reshape(-1)
        rows = flat.reshape(d, -1)
        return replicas.per_device([rows[i] for i in order])

    opt_state, ema = replicas.in_step_layout(jax.tree.map(leaf, (state.opt_state, state.ema)))
    whole = replicas.replicate(state.replace(opt_state=None, ema=None))
    return whole.replace(opt_state=opt_state, ema=ema)


def shapes(state, axis_size: int | None = None):
    """The shapes and dtypes of `place(state)` (to compile the step before it exists); with
    `axis_size`, of a state split over that many entries of the axis, all local (a `vmap`
    of the step standing in for `pmap`)."""
    d, local = jax.device_count(), jax.local_device_count()
    if axis_size is not None:
        d = local = axis_size
    out = jax.tree.map(lambda x: jax.ShapeDtypeStruct((local, *x.shape), x.dtype), state)

    def split(x):
        n = (_chunk_size(math.prod(x.shape), d),) if _is_split(x) else ()
        return jax.ShapeDtypeStruct((local, *n), x.dtype)

    return out.replace(
        opt_state=jax.tree.map(split, state.opt_state), ema=jax.tree.map(split, state.ema)
    )


# Every split leaf as all devices' chunks [D, C], on every device (one program per tree).
_gathered = jax.pmap(
    lambda tree: jax.tree.map(
        lambda x: jax.lax.all_gather(x, replicas.AXIS) if x.ndim else x, tree
    ),
    axis_name=replicas.AXIS,
)


def to_host(rstate, tx):
    """The full host TrainState of the devices' `rstate` (`tx`: the stage's optimizer, for
    the optimizer state's full shapes). With one process every chunk is read where it lies;
    with several, the other processes' chunks are gathered onto each device first."""
    params = replicas.unreplicate_to_host(rstate.params)
    split = {"opt_state": rstate.opt_state, "ema": rstate.ema}  # [D, C]: a chunk per device
    full = {
        "opt_state": jax.eval_shape(tx.init, params),
        "ema": None if rstate.ema is None else params,
    }
    read = np.asarray
    if jax.process_count() > 1:
        split = _gathered(split)
        read = replicas.first_replica
    joined = jax.tree.map(
        lambda x, like: (
            read(x).reshape(-1)[: like.size].reshape(like.shape)
            if _is_split(like)
            else replicas.first_replica(x)
        ),
        split,
        full,
    )
    rest = replicas.unreplicate_to_host(rstate.replace(params=None, opt_state=None, ema=None))
    return rest.replace(params=params, **joined)
