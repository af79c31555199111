"""Orbax checkpoints of the training state: periodic, keep-N, asynchronous, atomic.

A checkpoint holds two items: `state` (step, params, batch statistics, optimizer state, as
host arrays: independent of the device count) and `meta` (JSON: stage, seed, config digest).
Orbax writes each step into a temporary directory and renames it when complete, so a killed
process never leaves a half-written step that `all_steps()` would list. `meta` also holds a
SHA-256 of the state's bytes, checked on restore: orbax stores raw array bytes without checksums,
so flipped or overwritten bytes would otherwise restore silently. A newest checkpoint that
cannot be read or fails its checksum (truncated, corrupted) is reported and the previous one is
used; when checkpoints exist but none is usable, restore refuses instead of starting over.
A checkpoint whose saved shapes (its metadata) differ from the config's model is refused before
any array is read, naming the first leaf that differs.

A failed restore leaves tensorstore reads in flight whose completion callbacks find orbax's
event loop closed; Python would print each as an "Event loop is closed" traceback.
`restore` installs a `sys.unraisablehook` that drops exactly those (every other unraisable
exception reaches the previous hook). The other reads of the same failed restore may fail too,
in tasks nobody awaits any more; asyncio would log each as "Task exception was never retrieved"
with a traceback. A filter on asyncio's logger drops exactly those whose error is a read of a
checkpoint's OCDBT database. The failure itself is the warning that names the step.
"""

import dataclasses
import hashlib
import logging as std_logging
import shutil
import sys
import traceback

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cmaae_jax import errors
from cmaae_jax import workdir as workdir_lib


class CheckpointError(errors.UserError, RuntimeError):
    """No usable checkpoint, or one that does not match the model of the config."""


def manager(
    workdir, keep: int = 3, async_save: bool = True, cleanup_tmp: bool = False
) -> ocp.CheckpointManager:
    """A CheckpointManager under `<workdir>/checkpoints`; only process 0 writes.

    Every process calls it (orbax synchronises them with barriers); the state is host numpy
    arrays, which orbax writes from the primary process alone. The workdir must be a folder
    all processes see (shared storage), as orbax requires for multi-host checkpoints.
    `cleanup_tmp` deletes the unfinished `*.orbax-checkpoint-tmp*` folders a killed writer left
    (only the training process should ask for it: a reader must not delete a live save).
    """
    mp = ocp.options.MultiprocessingOptions(primary_host=0)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=async_save,
        multiprocessing_options=mp,
    )
    path = workdir_lib.checkpoints_dir(workdir).absolute()
    if cleanup_tmp and jax.process_index() == 0:
        for tmp in sorted(path.glob("*.orbax-checkpoint-tmp*")):
            logging.warning("removing %s, left unfinished by an interrupted save", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    # Named handlers let `item_metadata` read the state's saved shapes (`_mismatch`).
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


def state_digest(state) -> str:
    """SHA-256 of the dtype, shape and bytes of every leaf of `state`, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def wait(mgr: ocp.CheckpointManager):
    """Waits for the pending save; its failure (disk full, no permission) is a CheckpointError."""
    try:
        mgr.wait_until_finished()
    except Exception as e:  # orbax re-raises the background thread's error
        first = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"saving a checkpoint in {mgr.directory} failed ({first}); is the disk full? Free "
            f"space and run the same command again: it resumes from the last complete one"
        ) from e


def save(mgr: ocp.CheckpointManager, step: int, state, meta: dict, force: bool = False):
    """Starts an (asynchronous) save of host-side `state` and JSON `meta` at `step`.

    The previous save is waited for first, so that its failure stops training at once.
    """
    wait(mgr)
    meta = {**meta, "state_sha256": state_digest(state)}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return mgr.save(step, args=args, force=force)


def read_meta(mgr: ocp.CheckpointManager, step: int) -> dict:
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _skip(mgr, step: int, why):
    text = str(why).strip()
    first = text.splitlines()[0][:300] if text else type(why).__name__
    logging.warning(
        "checkpoint %d in %s is unreadable (%s); trying an older one", step, mgr.directory, first
    )
    if text != first:
        logging.info("checkpoint %d: the whole error: %s", step, text)


def _is_closed_loop_callback(unraisable) -> bool:
    """An asyncio callback scheduled on a closed event loop (`call_soon_threadsafe`)."""
    exc = unraisable.exc_value
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return any(f.name == "call_soon_threadsafe" for f in frames)


def _drop_closed_loop_callbacks():
    """Installs (once) the `sys.unraisablehook` of the module docstring."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable):
        if not _is_closed_loop_callback(unraisable):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


def _is_abandoned_checkpoint_read(record) -> bool:
    """asyncio's log record of an unawaited task that failed reading a checkpoint."""
    exc = record.exc_info[1] if record.exc_info else None
    return (
        str(record.msg).startswith("Task exception was never retrieved")
        and exc is not None
        and "in OCDBT database" in str(exc)
    )


class _DropAbandonedCheckpointReads(std_logging.Filter):
    def filter(self, record):
        return not _is_abandoned_checkpoint_read(record)


def _drop_abandoned_reads():
    """Adds (once) the asyncio log filter of the module docstring."""
    log = std_logging.getLogger("asyncio")
    if not any(isinstance(f, _DropAbandonedCheckpointReads) for f in log.filters):
        log.addFilter(_DropAbandonedCheckpointReads())


def _present_fields(abstract):
    """A dataclass state's fields as a dict without those that are None (optional fields a
    config leaves out, e.g. TrainState.ema): the layout of a checkpoint written before such
    a field existed. None when there is no such field."""
    if not dataclasses.is_dataclass(abstract):
        return None
    fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)}
    present = {k: v for k, v in fields.items() if v is not None}
    return present if len(present) < len(fields) else None


def _restore_tree(mgr: ocp.CheckpointManager, step: int, abstract):
    """The state of checkpoint `step` restored into `abstract`; a checkpoint that lacks the
    fields `abstract` leaves None (written before they existed) restores into the others."""

    def restore(item):
        args = ocp.args.Composite(state=ocp.args.StandardRestore(item))
        return mgr.restore(step, args=args)["state"]

    try:
        return restore(abstract)
    except ValueError:
        present = _present_fields(abstract)
        if present is None:
            raise
        try:
            restored = restore(present)
        except ValueError:
            pass  # not that: report the first error
        else:
            return dataclasses.replace(abstract, **restored)
        raise


def _leaf_name(path) -> str:
    """A tree path as `a/b/0`, the same for a dataclass field, a dict key and a sequence index
    (the checkpoint's metadata stores dataclasses and named tuples as dicts)."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def _mismatch(mgr: ocp.CheckpointManager, step: int, abstract) -> str | None:
    """The first leaf of `abstract` that checkpoint `step` saved with another shape, or did
    not save, read from its metadata alone; None when all agree or there is no metadata.

    Checked before restoring: a restore that fails on a shape leaves orbax's reads in flight
    (module docstring), and a mismatch is the config's, which no older checkpoint fixes."""
    try:
        saved = mgr.item_metadata(step)["state"]
        shapes = {_leaf_name(p): tuple(m.shape) for p, m in jax.tree.leaves_with_path(saved)}
    except Exception:  # no readable metadata: the restore itself decides
        return None
    for path, leaf in jax.tree.leaves_with_path(abstract):
        name = _leaf_name(path)
        if name not in shapes:
            return f"{name} is not in the checkpoint"
        if shapes[name] != tuple(leaf.shape):
            return f"{name} has shape {shapes[name]} there, {tuple(leaf.shape)} here"
    return None


def _read(mgr: ocp.CheckpointManager, step: int, abstract_state_fn):
    """(state, meta) of checkpoint `step`, or None (with a warning) when it cannot be used."""
    try:
        meta = read_meta(mgr, step)
        abstract = abstract_state_fn(meta)
    except Exception as e:  # any unreadable checkpoint is skipped, loudly
        return _skip(mgr, step, e)
    differs = _mismatch(mgr, step, abstract)
    if differs is not None:
        raise CheckpointError(
            f"checkpoint {step} in {mgr.directory} does not match the model of this config "
            f"(another variant, memory size or latent size?): {differs}"
        )
    try:
        state = _restore_tree(mgr, step, abstract)
    except ValueError as e:
        if "shape" in str(e).lower() or "structure" in str(e).lower():
            raise CheckpointError(
                f"checkpoint {step} in {mgr.directory} does not match the model of this config "
                f"(another variant, memory size or latent size?): {e}"
            ) from e
        return _skip(mgr, step, e)
    except Exception as e:
        return _skip(mgr, step, e)
    want, got = meta.get("state_sha256"), state_digest(state)
    if want is not None and got != want:
        why = f"corrupt: SHA-256 of its arrays {got[:12]}..., expected {want[:12]}..."
        return _skip(mgr, step, why)
    return state, meta


def restore(mgr: ocp.CheckpointManager, abstract_state_fn, step: int | None = None):
    """Restores (step, state, meta) from `step`, or from the newest readable checkpoint.

    `abstract_state_fn(meta)` returns the tree of `jax.ShapeDtypeStruct` to restore into (its
    structure may depend on the stage recorded in `meta`). Returns None when there is none;
    raises CheckpointError when there are checkpoints but none can be used.
    """
    _drop_closed_loop_callbacks()
    _drop_abandoned_reads()
    steps = sorted(mgr.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {mgr.directory}; have {steps}")
        steps = [step]
    for s in steps:
        found = _read(mgr, s, abstract_state_fn)
        if found is not None:
            return s, *found
    if step is not None:
        raise CheckpointError(f"checkpoint {step} in {mgr.directory} could not be read")
    if steps:
        raise CheckpointError(
            f"none of the checkpoints {steps} in {mgr.directory} can be read (see the warnings "
            f"above); move that folder away to train from scratch"
        )
    return None
