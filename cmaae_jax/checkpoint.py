"""Orbax checkpoints of the training state: periodic, keep-N, asynchronous, atomic.

A checkpoint holds two items: `state` (step, params, batch statistics, optimizer state, as
host arrays: independent of the device count) and `meta` (JSON: stage, seed, config digest).
Orbax writes each step into a temporary directory and renames it when complete, so a killed
process never leaves a half-written step that `all_steps()` would list. A newest checkpoint
that cannot be read (truncated, corrupted by hand) is reported and the previous one is used.
"""

import pathlib

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not match the model of the config."""


def manager(workdir, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    """A CheckpointManager under `<workdir>/checkpoints`; only process 0 writes."""
    if jax.process_count() > 1:
        mp = ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0})
    else:
        mp = ocp.options.MultiprocessingOptions()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=async_save,
        multiprocessing_options=mp,
    )
    path = pathlib.Path(workdir).absolute() / "checkpoints"
    return ocp.CheckpointManager(path, options=options)


def save(mgr: ocp.CheckpointManager, step: int, state, meta: dict, force: bool = False):
    """Starts an (asynchronous) save of host-side `state` and JSON `meta` at `step`."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return mgr.save(step, args=args, force=force)


def read_meta(mgr: ocp.CheckpointManager, step: int) -> dict:
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(mgr: ocp.CheckpointManager, abstract_state_fn, step: int | None = None):
    """Restores (step, state, meta) from `step`, or from the newest readable checkpoint.

    `abstract_state_fn(meta)` returns the tree of `jax.ShapeDtypeStruct` to restore into (its
    structure may depend on the stage recorded in `meta`). Returns None when there is none.
    """
    steps = sorted(mgr.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {mgr.directory}; have {steps}")
        steps = [step]
    for s in steps:
        try:
            meta = read_meta(mgr, s)
            abstract = abstract_state_fn(meta)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, loudly
            logging.warning(
                "checkpoint %d in %s is unreadable (%s); trying an older one", s, mgr.directory, e
            )
            continue
        try:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            state = mgr.restore(s, args=args)["state"]
        except ValueError as e:
            if "shape" in str(e).lower() or "structure" in str(e).lower():
                raise CheckpointError(
                    f"checkpoint {s} in {mgr.directory} does not match the model of this config "
                    f"(another variant, memory size or latent size?): {e}"
                ) from e
            logging.warning(
                "checkpoint %d in %s is unreadable (%s); trying an older one", s, mgr.directory, e
            )
            continue
        except Exception as e:  # noqa: BLE001
            logging.warning(
                "checkpoint %d in %s is unreadable (%s); trying an older one", s, mgr.directory, e
            )
            continue
        return s, state, meta
    if step is not None:
        raise CheckpointError(f"checkpoint {step} in {mgr.directory} could not be read")
    return None
