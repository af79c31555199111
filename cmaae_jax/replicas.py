"""Data parallelism over this process's devices: the pmap axis, copies of a tree on every
device, reading one copy back, and a step compiled ahead of its first call.

The training step (train.py), the benchmark and the tests share these; nothing here knows
what the step computes.
"""

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from cmaae_jax import devices
from cmaae_jax import state as state_lib

AXIS = "batch"  # the pmap axis of the training step: one entry per local device


def replicate(tree):
    """Copies `tree` onto every local device, in the layout the pmapped step returns.

    Arrays placed as `flax.jax_utils.replicate` places them sit on an equal but differently
    keyed device mesh, so feeding them and then the step's own output would compile the step
    twice: the identity pmap puts them in the step's layout.
    """
    return in_step_layout(jax.tree.map(_on_every_device, tree))


def _on_every_device(x):
    """[D, ...]: x copied to each local device, without `flax.jax_utils.replicate`'s stack of
    a device array (one small program compiled per leaf shape, again after every
    `state.release_compiled_programs`: seconds a training stage)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.extended):
        return flax.jax_utils.replicate(x)  # PRNG keys: no host copy of them
    return per_device([np.asarray(x)] * jax.local_device_count())


def per_device(rows):
    """[D, ...]: host array rows[j] on local device j, placed as `flax.jax_utils.replicate`
    places its copies (`in_step_layout` then gives them the step's layout)."""
    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("_device_put_sharded",))
    sharding = jax.NamedSharding(mesh, jax.P("_device_put_sharded"))
    copies = [jax.device_put(np.asarray(r)[None], d) for r, d in zip(rows, devices, strict=True)]
    shape = (len(devices), *np.shape(rows[0]))
    return jax.make_array_from_single_device_arrays(shape, sharding, copies)


# Donated: its output takes over the copies it is given instead of adding two more to the
# peak host memory (BENCHMARKS.md, thirty-sixth session).
in_step_layout = jax.pmap(lambda x: x, axis_name=AXIS, donate_argnums=0)


def replica_shapes(tree):
    """The shapes and dtypes of `replicate(tree)`: what `compile_step` needs to compile the
    step before the replicas exist."""
    d = jax.local_device_count()
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((d, *np.shape(x)), x.dtype), tree)


def first_replica(x) -> np.ndarray:
    """The copy on this process's first device, read without dispatching an op: `x[0]` would
    compile a gather for every distinct shape (seconds per checkpoint on a small model)."""
    return np.asarray(x.addressable_data(0))[0]


def unreplicate_to_host(tree):
    return jax.tree.map(first_replica, tree)


def compile_step(step_fn, rstate, args: tuple, tag: str = "", cpu_scheduler: str = "default"):
    """The step compiled ahead of its first call, on every process, with what compiling freed
    handed back to the OS before the step allocates its own buffers: compiled by its first
    call instead, both came on top of each other in the peak host memory (BENCHMARKS.md).
    `rstate` and `args` may be shapes (`replica_shapes`, `jax.ShapeDtypeStruct`): compiled
    before the state is replicated, the compiler's memory and the replicas' never meet.
    With several processes they all compile and wait here (`tag` names the barrier): one
    that loads the step from the compilation cache would otherwise reach the first collective
    while another still compiles, and gloo's 30 s set-up would fail. Their step stays the
    pmapped function (its ahead-of-time executable expects global shapes, the calls give
    this process's), whose first call then finds the compiled step in the cache.
    `cpu_scheduler` (config train.cpu_scheduler) orders the step's instructions on a CPU
    with one process; several keep XLA's order (the pmapped call takes no compiler options,
    and compiled with others its cache entry would not be the one the call looks up)."""
    single = jax.process_count() == 1
    platform = jax.local_devices()[0].platform
    options = devices.cpu_compiler_options(cpu_scheduler, platform) if single else None
    compiled = step_fn.lower(rstate, *args).compile(compiler_options=options)
    devices.release_freed_host_memory()
    if single:
        return compiled
    ocp.multihost.sync_global_processes(f"cmaae_train_compiled_{tag}")
    return step_fn


def compiled_with_replicas(
    step_fn, state, args: tuple, tag: str, cpu_scheduler: str, place=None, shapes=None
):
    """(`compile_step`'s step, `replicate(state)`). With one process the step compiles from
    the replicas' shapes before they exist; several compile with the replicas themselves
    (pmap reads abstract shapes there as global ones).

    The programs JAX cached before (the state's initialisation, the optimizer's, an earlier
    replication) are freed first, and with one process also those the replication compiles
    (JAX's caches held them for the rest of the run: ~90 MB of host memory at the
    benchmark's batch 64; BENCHMARKS.md, thirty-eighth session). The step survives that:
    with one process it is the compiled executable; several keep their cache entry.
    `place` / `shapes`: how the state goes onto the devices and the shapes it has there
    (default `replicate` / `replica_shapes`; the training state's: `sharded_state`)."""
    place, shapes = place or replicate, shapes or replica_shapes
    state_lib.release_compiled_programs()
    if jax.process_count() > 1:
        rstate = place(state)
        return compile_step(step_fn, rstate, args, tag, cpu_scheduler), rstate
    compiled = compile_step(step_fn, shapes(state), args, tag, cpu_scheduler)
    rstate = place(state)
    state_lib.release_compiled_programs()
    return compiled, rstate
