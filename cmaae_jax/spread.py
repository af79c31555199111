"""Map work over the local devices: whole images by pmap, or one call's work split.

`replicate`, `pad_batch`, `shard`, `unshard` and `apply_sharded` feed a pmapped map function
(`scoring.make_map_fn(pmapped=True)`): each device takes whole images of a host batch.

pmap would keep one device busy with a single image and leave the others idle; for latency
(`make_map_fn(spread=True)`), under one jit, `split_batch` runs a function on each device's
share of a batch (the windows of an image), and `split_rows` runs a fully convolutional
function on overlapping row bands of whole images, each device cutting its slab from the
whole (3-channel) input and keeping its own band's output rows. Both are `jax.shard_map`
over a one-axis mesh of the local devices; with one device (`local_mesh()` is None) callers
run the function itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "spread"  # the mesh axis


def local_mesh() -> Mesh | None:
    """A one-axis mesh over the local devices; None with one device."""
    devices = jax.local_devices()
    return Mesh(np.asarray(devices), (AXIS,)) if len(devices) > 1 else None


def put_variables(variables):
    """`variables` placed whole on every device of `local_mesh()` (as a spread function takes
    them: arrays committed to one device would not mix with the mesh); unchanged with one
    device."""
    mesh = local_mesh()
    if mesh is None:
        return variables
    return jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))


def split_batch(mesh: Mesh | None, fn, variables, x_Nx___, shared=None):
    """`fn(variables, x)` with `x` (an array, or a tuple of arrays of one first axis) split
    along its first axis over `mesh`'s devices (zero-padded to a multiple of the device
    count, the padding dropped from every output); `fn(variables, x)` itself without a
    mesh. Outputs must keep `x`'s first axis. With `shared` (arrays every device reads
    whole): `fn(variables, x, shared, first)`, `first` the index in `x` of the device's
    first row."""
    if mesh is None:
        return fn(variables, x_Nx___) if shared is None else fn(variables, x_Nx___, shared, 0)
    n, d = _rows(x_Nx___), mesh.size
    padded = jax.tree.map(lambda a: jnp.pad(a, [(0, -n % d)] + [(0, 0)] * (a.ndim - 1)), x_Nx___)
    split, whole = PartitionSpec(AXIS), PartitionSpec()
    if shared is None:
        out = jax.shard_map(fn, mesh=mesh, in_specs=(whole, split), out_specs=split)(
            variables, padded
        )
    else:

        def per_device(v, x, s):
            return fn(v, x, s, jax.lax.axis_index(AXIS) * _rows(x))

        specs = (whole, split, whole)
        out = jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=split)(
            variables, padded, shared
        )
    return jax.tree.map(lambda o: o[:n], out)


def _rows(x_Nx___) -> int:
    """The first axis's length of an array or of a tuple of arrays (`split_batch`)."""
    return jax.tree.leaves(x_Nx___)[0].shape[0]


def row_bands(height: int, devices: int, margin: int, factor: int):
    """(slab length, slab starts) of `split_rows`, or None where the rows do not split: each
    device's band of height / devices rows (a multiple of `factor`) is read with at least
    `margin` rows beyond each side that is not the image's own edge, all slabs of one length
    (two devices: band + margin; more: band + 2 margin, edge slabs shifted inwards)."""
    band = height // devices
    length = band + (margin if devices == 2 else 2 * margin)
    if height % devices or band % factor or margin % factor or length > height:
        return None
    starts = [min(max(i * band - margin, 0), height - length) for i in range(devices)]
    return length, starts


def split_rows(mesh: Mesh, fn, variables, x_BxHxWxC, margin: int, factor: int):
    """The outputs of a fully convolutional `fn(variables, x) -> [o_k [B, H/f_k, W/f_k, ...]]`
    (f_k dividing `factor`) computed band by band: device i reads rows
    starts[i]..starts[i]+length of `x` (`row_bands`) and keeps its band's output rows. Exact
    when no output row of a band depends on an input row more than `margin` rows outside it
    (the reach of `fn`'s receptive field and zero padding); the caller checks `row_bands`.

    `x` goes to every device whole (an image or a reconstruction: 3 channels, one gather at
    most) and each cuts its slab itself: cut outside the devices, the slabs cost XLA two
    exchanges of most of the rows and ~3 ms more a 512x512 map (BENCHMARKS.md,
    forty-seventh session)."""
    h = x_BxHxWxC.shape[1]
    d = mesh.size
    length, starts = row_bands(h, d, margin, factor)
    band = h // d
    starts_D = jnp.asarray(starts, jnp.int32)
    offsets_D = jnp.asarray([i * band - s for i, s in enumerate(starts)], jnp.int32)

    def per_device(v, x_whole):
        i = jax.lax.axis_index(AXIS)
        slab = jax.lax.dynamic_slice_in_dim(x_whole, starts_D[i], length, axis=1)
        kept = []
        for o in fn(v, slab):
            f = length // o.shape[1]  # input rows per output row
            kept.append(jax.lax.dynamic_slice_in_dim(o, offsets_D[i] // f, band // f, axis=1))
        return kept

    whole, split = PartitionSpec(), PartitionSpec(None, AXIS)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(whole, whole), out_specs=split)(
        variables, x_BxHxWxC
    )


def replicate(variables):
    """Copies variables onto every local device (leading device axis), for pmapped map fns."""
    return jax_utils.replicate(variables)


def pad_batch(x_Bx___, multiple: int):
    """Pads the leading axis with zeros up to a multiple of `multiple`; returns (padded, B)."""
    b = x_Bx___.shape[0]
    pad = -b % multiple
    if pad:
        zeros = np.zeros((pad,) + x_Bx___.shape[1:], x_Bx___.dtype)
        x_Bx___ = np.concatenate([np.asarray(x_Bx___), zeros], axis=0)
    return x_Bx___, b


def shard(x_Bx___, num_devices: int):
    """[B, ...] -> [num_devices, B/num_devices, ...]; B must divide (see `pad_batch`)."""
    b = x_Bx___.shape[0]
    if b % num_devices:
        raise ValueError(f"batch {b} does not divide by {num_devices} devices; pad it first")
    return x_Bx___.reshape((num_devices, b // num_devices) + x_Bx___.shape[1:])


def unshard(x_DxBx___):
    """[D, B/D, ...] -> [B, ...], the inverse of `shard`."""
    return x_DxBx___.reshape((-1,) + x_DxBx___.shape[2:])


def apply_sharded(map_fn, variables, images_BxHxWx3, num_devices: int | None = None):
    """Runs a map fn on a host batch of any size. Returns maps [B,H,W] (a jax array).

    With `num_devices` None the function is the jitted one and is called directly. Otherwise
    `map_fn` is the pmapped one, `variables` are replicated: the batch is zero-padded to a
    multiple of `num_devices`, sharded, mapped, gathered, and the padding dropped.
    """
    if num_devices is None:
        return map_fn(variables, images_BxHxWx3)
    padded, b = pad_batch(images_BxHxWx3, num_devices)
    maps = map_fn(variables, shard(padded, num_devices))
    return unshard(maps)[:b]
