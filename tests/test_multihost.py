"""Two local processes (2 virtual CPU devices each) train together through jax.distributed.

Both end with bit-identical parameters; they match a one-process run on 4 devices (the same
global batch: every process draws it and keeps its own rows); only process 0 writes the
checkpoints and the metrics log. CPU collectives are gloo, jax's default (no flag needed).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import IN_PROCESS_LEVEL, tiny_config, xla_flags

from cmaae_jax import checkpoint, datasets, model, train, train_log
from cmaae_jax import state as state_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker(i, port, config_file, workdir, out, log):
    env = dict(os.environ, XLA_FLAGS=xla_flags(2, IN_PROCESS_LEVEL))
    cmd = [sys.executable, str(ROOT / "tests" / "multihost_worker.py"), f"--port={port}"]
    cmd += ["--num_processes=2", f"--process_id={i}", f"--config={config_file}"]
    cmd += [f"--workdir={workdir}", f"--out={out}"]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_all(procs, timeout):
    """Exit codes; once one process fails the others are killed (they would wait for it)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
            return codes
        time.sleep(0.2)
    return [p.poll() for p in procs]


def _get(tree, path):
    for entry in path:
        tree = tree[entry.key]
    return tree


def _load(path):
    with np.load(path) as z:
        info = json.loads(str(z["__info__"]))
        return info, {k: z[k] for k in z.files if k != "__info__"}


@pytest.mark.slow
def test_two_processes_train_together_and_only_the_primary_writes(tmp_path, monkeypatch):
    # Stage 1 only: the real training step, compiled once per process, in both its forms:
    # with `train.steps_per_call` 2 the first call runs steps 1-2 as one call (logged and
    # saved after it), the third step is a call of its own (the stage ends after it).
    config = tiny_config(
        tmp_path / "data",
        model__latent_dim=16,
        train__stage1_steps=STEPS,
        train__stage2_steps=0,
        train__steps_per_call=2,
        train__log_every=2,
        train__checkpoint_every=2,
        train__ema_decay=0.5,  # split over the devices like Adam's moments
    )
    datasets.load_splits(config)  # writes the synthetic tree once, before the workers read it
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json())
    workdir, port = tmp_path / "multi", _free_port()
    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(2)]
    procs = [
        _worker(i, port, config_file, workdir, tmp_path / f"p{i}.npz", logs[i]) for i in range(2)
    ]
    try:
        # Meanwhile, the same code in this one process on 4 devices.
        made, make = [], train.make_multi_step
        monkeypatch.setattr(
            train, "make_multi_step", lambda *a, **k: made.append(k) or make(*a, **k)
        )
        single = train.train(config, str(tmp_path / "single"))
        assert made == [{"steps": 2}]
        codes = _wait_all(procs, timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()
    texts = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)

    (info0, p0), (info1, p1) = _load(tmp_path / "p0.npz"), _load(tmp_path / "p1.npz")
    assert [info0["process_index"], info1["process_index"]] == [0, 1]
    assert info0["device_count"] == 4 and info0["local_device_count"] == 2
    assert info0["step"] == info1["step"] == STEPS
    # orbax's barriers waited at the coordination service, not in a gloo collective
    assert info0["orbax_coordinator_barriers"] and info1["orbax_coordinator_barriers"]
    assert p0.keys() == p1.keys()
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    # The one-process run saw the same images and crops: the same losses, step by step. The
    # gradients are summed in another order (gloo across processes), and Adam turns the
    # rounding of near-zero gradients into steps of up to lr, so the parameters agree to a
    # few percent of the update.
    multi_loss = [r["loss"] for r in train_log.read(workdir / "metrics.jsonl")]
    single_loss = [r["loss"] for r in train_log.read(tmp_path / "single" / "metrics.jsonl")]
    np.testing.assert_allclose(multi_loss, single_loss, rtol=1e-3)
    init = state_lib.init_state(config, model.from_config(config)).params
    num = den = 0.0
    for path, v in jax.tree_util.tree_leaves_with_path(single.params):
        k, v0 = jax.tree_util.keystr(path), np.asarray(_get(init, path))
        num += float(np.sum(np.square(p0[k] - np.asarray(v))))
        den += float(np.sum(np.square(np.asarray(v) - v0)))
    print(f"multi-process vs one process: relative update difference {np.sqrt(num / den):.4f}")
    assert np.sqrt(num / den) < 0.05

    # Only process 0 wrote: one log record per log line, array data from process 0 alone, and
    # the progress bar on process 0 only.
    logged = [2, STEPS]
    assert [r["step"] for r in train_log.read(workdir / "metrics.jsonl")] == logged
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == len(logged)
    ckpts = workdir / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir()) == logged
    assert not list(ckpts.rglob("*process_1*"))
    assert "step/s" in texts[0] and "step/s" not in texts[1]
    mgr = checkpoint.manager(workdir, async_save=False)
    try:
        step, state, _ = state_lib.restore_state(config, model.from_config(config), mgr)
    finally:
        mgr.close()
    assert step == STEPS
    for path, v in jax.tree_util.tree_leaves_with_path(state.params):
        np.testing.assert_array_equal(p0[jax.tree_util.keystr(path)], v)
    # Adam's moments: each process held only its devices' shares (sharded_state); the
    # checkpoint gathered them whole, in order: as close to the one-process run's checkpoint
    # as the parameters (a share out of place would differ by the moments' own size).
    mgr = checkpoint.manager(tmp_path / "single", async_save=False)
    try:
        _, single_state, _ = state_lib.restore_state(config, model.from_config(config), mgr)
    finally:
        mgr.close()
    multi, one = jax.tree.leaves(state.opt_state), jax.tree.leaves(single_state.opt_state)
    assert [np.shape(a) for a in multi] == [np.shape(b) for b in one]
    pairs = [
        (np.asarray(a, np.float64), np.asarray(b))
        for a, b in zip(multi, one, strict=True)
        if np.ndim(b)
    ]
    num = sum(float(np.sum(np.square(a - b))) for a, b in pairs)
    den = sum(float(np.sum(np.square(b))) for _, b in pairs)
    assert np.sqrt(num / den) < 0.05, np.sqrt(num / den)
    # The moving average, gathered likewise: as close to the one-process run's as the
    # parameters, measured against its distance from the initial parameters.
    num = den = 0.0
    for path, v in jax.tree_util.tree_leaves_with_path(single_state.ema):
        v, v0 = np.asarray(v, np.float64), np.asarray(_get(init, path))
        num += float(np.sum(np.square(np.asarray(_get(state.ema, path)) - v)))
        den += float(np.sum(np.square(v - v0)))
    assert den > 0 and np.sqrt(num / den) < 0.05, np.sqrt(num / den)
