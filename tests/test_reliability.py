"""Killed, corrupted and resized training runs end where an uninterrupted run ends.

* SIGKILL at a random moment of a step, and during an asynchronous checkpoint save, then the
  same command again: the final parameters are bit-identical to an uninterrupted run, and no
  checkpoint that restore would pick up is ever half-written.
* A truncated or corrupt newest checkpoint is reported and the previous one is used, without
  the "Event loop is closed" tracebacks of the reads orbax leaves in flight.
* A checkpoint written with 4 devices resumes with 2.

The subprocesses run `launch/train.py` itself; they share the compilation cache of conftest.
"""

import asyncio
import json
import logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest
from conftest import IN_PROCESS_LEVEL, tiny_config, xla_flags

from cmaae_jax import checkpoint, model, train, train_log
from cmaae_jax import state as state_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TMP = ".orbax-checkpoint-tmp"


def _config(root, **overrides):
    # latent_dim 16 shrinks checkpoints (17 MB) and steps; the network is otherwise the real one.
    return tiny_config(root, model__latent_dim=16, **overrides)


def _flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def _assert_same(a, b):
    a, b = _flat(a), _flat(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _restore(config, workdir, step=None):
    mgr = checkpoint.manager(workdir, async_save=False)
    try:
        return state_lib.restore_state(config, model.from_config(config), mgr, step)
    finally:
        mgr.close()


def _write_config(config, path):
    path.write_text(
        "import json\n\nimport ml_collections\n\n\ndef get_config():\n"
        f"    return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n"
    )
    return path


def _launch(config_file, workdir, log, devices=4):
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices, IN_PROCESS_LEVEL))
    cmd = [sys.executable, str(ROOT / "launch" / "train.py"), "--noevaluate"]
    cmd += [f"--config={config_file}", f"--workdir={workdir}"]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_for(predicate, proc, what, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {what}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _tmp_dirs(workdir):
    return sorted(p.name for p in (workdir / "checkpoints").glob(f"*{TMP}*"))


def _check_every_listed_step_restores(config, workdir):
    """Each step orbax lists restores completely and passes its checksum."""
    mgr = checkpoint.manager(workdir, async_save=False)
    try:
        steps = mgr.all_steps()
        net = model.from_config(config)
        for s in steps:
            assert state_lib.restore_state(config, net, mgr, s)[0] == s
    finally:
        mgr.close()
    return sorted(steps)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """An uninterrupted 8-step run (4 devices, in process): (workdir, final state)."""
    workdir = tmp_path_factory.mktemp("reference")
    state = train.train(_config(data_root), str(workdir))
    return workdir, state


@pytest.mark.slow
def test_sigkill_during_a_step_and_during_a_save_then_resume_is_exact(
    data_root, reference, tmp_path
):
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    config = _config(data_root)
    config_file = _write_config(config, tmp_path / "tiny.py")
    workdir, logs = tmp_path / "run", []
    report = {"seed": seed}

    def run(i):
        logs.append((tmp_path / f"run{i}.log").open("w"))
        return _launch(config_file, workdir, logs[-1])

    # 1: killed at a random moment (training or saving) after a random step in 3..5, so that
    # a checkpoint (step 2) exists or is being written and steps remain.
    proc = run(1)
    report["kill_after_step"] = k = rng.randint(3, 5)
    _wait_for(lambda: _logged_steps(workdir) >= k, proc, f"step {k}")
    report["delay_s"] = delay = rng.uniform(0.0, 0.5)
    time.sleep(delay)
    assert proc.poll() is None, "run 1 ended before it was killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = _logged_steps(workdir)
    report["run1"] = {"logged": logged, "tmp": _tmp_dirs(workdir)}
    report["run1"]["complete"] = _check_every_listed_step_restores(config, workdir)

    # 2: resumes, then is killed while an asynchronous save is being written (its temporary
    # folder exists). Leftovers of run 1 are removed before run 2 logs its first step.
    proc = run(2)
    _wait_for(
        lambda: _logged_steps(workdir) > logged and _tmp_dirs(workdir), proc, "a checkpoint save"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    report["run2"] = {"logged": _logged_steps(workdir) - logged, "tmp": _tmp_dirs(workdir)}
    complete = _check_every_listed_step_restores(config, workdir)
    report["run2"]["complete"] = complete
    assert complete, report

    # 3: the same command finishes; the result is the uninterrupted one, bit for bit.
    proc = run(3)
    assert proc.wait(timeout=600) == 0, (tmp_path / "run3.log").read_text()[-3000:]
    for f in logs:
        f.close()
    print(json.dumps(report))
    resumed = [i for i in (2, 3) if "resuming from" in (tmp_path / f"run{i}.log").read_text()]
    assert resumed == ([2, 3] if report["run1"]["complete"] else [3]), report
    assert _tmp_dirs(workdir) == [], "a leftover temporary checkpoint folder was not cleaned up"
    step, state, _ = _restore(config, workdir)
    assert step == 8
    _assert_same(state, _restore(config, reference[0])[1])  # params, optimizer, statistics
    log = [r["step"] for r in _read_log(workdir)]
    assert log == list(range(1, 9)), report


def _read_log(workdir):
    return train_log.read(workdir / "metrics.jsonl")


def _copy_checkpoints(reference, dest, steps):
    for s in steps:
        shutil.copytree(reference[0] / "checkpoints" / str(s), dest / "checkpoints" / str(s))
    shutil.copy(reference[0] / "config.json", dest / "config.json")
    return dest


def _largest_state_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=os.path.getsize)


def _truncate(step_dir):
    f = _largest_state_file(step_dir)
    os.truncate(f, os.path.getsize(f) // 2)


def _overwrite_bytes(step_dir):
    f = _largest_state_file(step_dir)
    with f.open("r+b") as fh:  # same size, other bytes: only the checksum can tell
        fh.seek(os.path.getsize(f) // 3)
        fh.write(np.random.default_rng(0).bytes(4096))


def _flip_one_bit(step_dir):
    f = _largest_state_file(step_dir)
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x10
    f.write_bytes(bytes(b))


def _zero_every_file(step_dir):
    for f in step_dir.rglob("*"):
        if f.is_file():
            os.truncate(f, 0)


def _garbage_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text('{"stage": 2, "se')


def _delete_state(step_dir):
    shutil.rmtree(step_dir / "state")


CORRUPTIONS = [_truncate, _overwrite_bytes, _flip_one_bit, _zero_every_file, _garbage_meta]
CORRUPTIONS += [_delete_state]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(
    data_root, reference, tmp_path, caplog, corrupt
):
    config = _config(data_root)
    workdir = _copy_checkpoints(reference, tmp_path, (6, 8))
    corrupt(workdir / "checkpoints" / "8")
    step, state, _ = _restore(config, workdir)
    assert step == 6
    _assert_same(state, _restore(config, reference[0], 6)[1])
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("checkpoint 8" in m and ("unreadable" in m or "corrupt" in m) for m in warned)


# Without the filter of checkpoint.py this printed 88 to 248 such tracebacks (4 runs).
_RESTORE = """
import sys
from cmaae_jax import inference, workdir
config = workdir.load_config(sys.argv[1])
print("restored", inference.restore_variables(config, sys.argv[1])[0])
"""


def _restore_in_subprocess(workdir):
    env = dict(os.environ, XLA_FLAGS=xla_flags(4, IN_PROCESS_LEVEL))
    cmd = [sys.executable, "-c", _RESTORE, str(workdir)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_a_truncated_checkpoint_is_skipped_without_event_loop_tracebacks(
    data_root, reference, tmp_path
):
    workdir = _copy_checkpoints(reference, tmp_path, (6, 8))
    _truncate(workdir / "checkpoints" / "8")
    proc = _restore_in_subprocess(workdir)
    assert proc.returncode == 0 and proc.stdout.split() == ["restored", "6"], proc.stderr[-3000:]
    assert "checkpoint 8" in proc.stderr and "trying an older one" in proc.stderr
    assert "Event loop is closed" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_event_loop_filter_passes_every_other_unraisable_exception(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoint._drop_closed_loop_callbacks()
    checkpoint._drop_closed_loop_callbacks()  # installed once
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        closed = e
    other = RuntimeError("Event loop is closed")  # the same text, raised elsewhere
    boom = ValueError("boom")
    for exc in (closed, other, boom):
        sys.unraisablehook(types.SimpleNamespace(exc_value=exc, exc_traceback=exc.__traceback__))
    assert [u.exc_value for u in seen] == [other, boom]


def test_the_asyncio_filter_drops_only_abandoned_checkpoint_reads():
    log = logging.getLogger("asyncio")
    checkpoint._drop_abandoned_reads()
    checkpoint._drop_abandoned_reads()  # installed once
    assert sum(isinstance(f, checkpoint._DropAbandonedCheckpointReads) for f in log.filters) == 1
    read = ValueError('OUT_OF_RANGE: Error reading "k/0.0" in OCDBT database at local file "x/8"')
    other = ValueError("boom")
    records = [
        log.makeRecord("asyncio", logging.ERROR, __file__, 1, msg, None, exc_info)
        for msg, exc_info in [
            ("Task exception was never retrieved\nfuture: <Task>", (ValueError, read, None)),
            ("Task exception was never retrieved\nfuture: <Task>", (ValueError, other, None)),
            ("Unclosed client session", None),
            ("Exception in callback", (ValueError, read, None)),  # not an abandoned task
        ]
    ]
    assert [bool(log.filter(r)) for r in records] == [False, True, True, True]


def test_training_resumes_past_a_corrupt_checkpoint_exactly(data_root, reference, tmp_path):
    workdir = _copy_checkpoints(reference, tmp_path, (4, 6))
    _flip_one_bit(workdir / "checkpoints" / "6")  # silent corruption, found by the checksum
    state = train.train(_config(data_root), str(workdir))
    _assert_same(state.params, reference[1].params)


def test_no_readable_checkpoint_is_an_error_not_a_silent_restart(data_root, reference, tmp_path):
    workdir = _copy_checkpoints(reference, tmp_path, (6, 8))
    for s in (6, 8):
        _flip_one_bit(workdir / "checkpoints" / str(s))
    with pytest.raises(checkpoint.CheckpointError, match=r"none of the checkpoints \[8, 6\]"):
        _restore(_config(data_root), workdir)


def test_leftover_temporary_folders_are_never_restored_and_are_cleaned(
    data_root, reference, tmp_path
):
    workdir = _copy_checkpoints(reference, tmp_path, (6,))
    ckpts = workdir / "checkpoints"
    # What a kill during a save leaves: items written but the step not committed, and a
    # half-written one.
    shutil.copytree(reference[0] / "checkpoints" / "8", ckpts / f"8{TMP}")
    # (orbax versions that commit by rename write no commit_success.txt: nothing to remove)
    (ckpts / f"8{TMP}" / "commit_success.txt").unlink(missing_ok=True)
    shutil.copytree(reference[0] / "checkpoints" / "8", ckpts / f"10{TMP}-1764331234")
    for f in (ckpts / f"10{TMP}-1764331234").rglob("commit_success.txt"):
        f.unlink()
    _truncate(ckpts / f"10{TMP}-1764331234")
    config = _config(data_root)
    assert _restore(config, workdir)[0] == 6
    mgr = checkpoint.manager(workdir, cleanup_tmp=True)  # what training opens
    assert mgr.all_steps() == [6]
    mgr.wait_until_finished()
    mgr.close()
    assert _tmp_dirs(workdir) == []
    assert (ckpts / "6").is_dir()


@pytest.mark.slow
def test_checkpoint_from_four_devices_resumes_on_two(data_root, reference, tmp_path):
    config = _config(data_root)
    workdir = _copy_checkpoints(reference, tmp_path / "run", (4, 6))
    log = tmp_path / "run.log"
    with log.open("w") as fh:
        proc = _launch(_write_config(config, tmp_path / "tiny.py"), workdir, fh, devices=2)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "resuming from checkpoint 6" in text
    step, state, _ = _restore(config, workdir)
    assert step == 8
    before = _restore(config, reference[0], 6)[1].params
    # Stage 2 on 2 devices: the memory stays frozen, everything else trains, nothing diverges.
    np.testing.assert_array_equal(state.params["memory"]["items"], before["memory"]["items"])
    after, was = _flat(state.params), _flat(before)
    assert all(not np.array_equal(v, was[k]) for k, v in after.items() if "encoder" in k)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
    # The same images from the same parameters (only the crops and pasted anomalies are drawn
    # per device): losses close to the 4-device run's.
    log = _read_log(workdir)
    assert [r["step"] for r in log] == [7, 8]
    ref = {r["step"]: r["loss"] for r in _read_log(reference[0])}
    for r in log:
        assert abs(r["loss"] - ref[r["step"]]) < 0.25 * ref[r["step"]], (r, ref)
