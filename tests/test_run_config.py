"""A trained run owns its config: evaluation binds to it, a resume or an evaluation with another
model is refused, and score-only changes are applied and recorded."""

import copy
import json
import logging

import jax
import pytest
from conftest import tiny_config, untrained_workdir

from cmaae_jax import checkpoint, evaluate, model, state, train
from cmaae_jax import workdir as workdir_lib


@pytest.fixture(scope="module")
def sigmoid_run(tmp_path_factory):
    """A run's workdir (its config.json and a checkpoint of initial weights: what binds a
    config is the workdir, not training)."""
    root = tmp_path_factory.mktemp("run_config")
    work = untrained_workdir(root / "work", model__gate="sigmoid", model__latent_dim=16)
    config = tiny_config(work / "data", model__gate="sigmoid", model__latent_dim=16)
    return work, config, work  # the data's parent is the workdir itself


def test_evaluate_without_config_uses_the_trained_model(sigmoid_run):
    root, config, work = sigmoid_run
    own = evaluate.evaluate(None, str(work))
    explicit = evaluate.evaluate(config, str(work))
    for key in ("pixel_auroc", "pixel_f1_max", "threshold"):
        assert own[key] == explicit[key]
    assert own["config_overrides"] == {} == explicit["config_overrides"]


def test_evaluate_with_another_gate_is_refused_naming_both_values(sigmoid_run):
    root, _, work = sigmoid_run
    default_gate = tiny_config(root / "data", model__gate="softmax", model__latent_dim=16)
    with pytest.raises(state.ConfigMismatchError) as e:
        evaluate.evaluate(default_gate, str(work))
    msg = str(e.value)
    assert "model.gate='softmax'" in msg and "model.gate='sigmoid'" in msg and str(work) in msg


def test_score_fields_are_applied_and_recorded(sigmoid_run):
    root, config, work = sigmoid_run
    pixel = tiny_config(root / "data", model__gate="sigmoid", model__latent_dim=16)
    pixel.score.method = "pixel"
    result = evaluate.evaluate(pixel, str(work))
    trained = config.score.method  # the default, `auto`: msfr on these (no reference)
    assert result["config_overrides"] == {"score.method": [trained, "pixel"]}
    assert result["method"] == "pixel"
    saved = json.loads(workdir_lib.eval_metrics_path(work).read_text())
    assert saved["config_overrides"] == {"score.method": [trained, "pixel"]}
    assert result["pixel_auroc"] != evaluate.evaluate(None, str(work))["pixel_auroc"]


def test_data_fields_of_a_command_line_config_are_announced(sigmoid_run, caplog):
    """A --config's data fields replace the run's (new data to score): one warning line per
    field that differs, naming both values; the run's own fields say nothing."""
    root, config, work = sigmoid_run
    other = copy.deepcopy(config)
    other.data.category = "elsewhere"
    with caplog.at_level(logging.WARNING):
        bound, overrides = state.bind_config(other, str(work))
    assert bound.data.category == "elsewhere" and overrides == {}
    assert "data.category='elsewhere'" in caplog.text
    assert f"the run trained on {config.data.category!r}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        state.bind_config(config, str(work))
    assert "data." not in caplog.text


def test_resume_with_another_gate_is_refused_and_keeps_config_json(sigmoid_run):
    root, _, work = sigmoid_run
    before = workdir_lib.config_path(work).read_text()
    other = tiny_config(
        root / "data", model__gate="softmax", model__latent_dim=16, train__stage2_steps=6
    )
    with pytest.raises(state.ConfigMismatchError, match="model.gate"):
        train.train(other, str(work))
    assert workdir_lib.config_path(work).read_text() == before


def test_checkpoint_digest_covers_every_trained_field(sigmoid_run):
    root, config, work = sigmoid_run
    base = state.config_digest(config)
    changed = {
        "model.gate": "softmax",
        "model.similarity": "dot",
        "model.temperature": 0.5,
        "model.shrink_threshold": 0.01,
        "data.image_size": 128,
        "data.resize": "square",
        "model.segment_head": True,
    }
    for name, value in changed.items():
        other = tiny_config(root / "data", model__gate="sigmoid", model__latent_dim=16)
        section, key = name.split(".")
        with other.unlocked():
            other[section][key] = value
        assert state.config_digest(other) != base, name
    other = tiny_config(root / "data", model__gate="softmax", model__latent_dim=16)
    mgr = checkpoint.manager(work, async_save=False)
    try:
        with pytest.raises(checkpoint.CheckpointError, match="another model"):
            state.restore_state(other, model.from_config(other), mgr)
    finally:
        mgr.close()


def test_a_checkpoint_with_the_old_digest_still_restores(tmp_path):
    config = tiny_config(tmp_path / "data", model__latent_dim=16)
    mgr = checkpoint.manager(tmp_path, async_save=False)
    initial = state.init_state(config, model.from_config(config))
    legacy = {"stage": 1, "seed": 0, "model_digest": state._legacy_digest(config)}
    checkpoint.save(mgr, 1, initial, legacy, force=True)
    mgr.wait_until_finished()
    assert state.restore_state(config, model.from_config(config), mgr)[0] == 1
    other = tiny_config(tmp_path / "data", model__latent_dim=16, model__memory_size=8)
    with pytest.raises(checkpoint.CheckpointError, match="another"):  # shape or digest
        state.restore_state(other, model.from_config(other), mgr)
    mgr.close()


def test_a_checkpoint_of_another_memory_size_is_refused_from_its_metadata(tmp_path, monkeypatch):
    # The saved shapes are read before any array: the refusal names the leaf and both shapes,
    # and no restore starts (one that fails on a shape leaves orbax's reads in flight).
    config = tiny_config(tmp_path / "data", model__latent_dim=16, model__memory_size=16)
    mgr = checkpoint.manager(tmp_path, async_save=False)
    checkpoint.save(mgr, 2, state.init_state(config, model.from_config(config)), {"stage": 1})
    mgr.wait_until_finished()

    def no_restore(*args):
        raise AssertionError("restore attempted")

    monkeypatch.setattr(checkpoint, "_restore_tree", no_restore)
    other = tiny_config(tmp_path / "data", model__latent_dim=16, model__memory_size=8)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.restore(
            mgr, lambda meta: state.abstract_state(other, model.from_config(other), 1)
        )
    mgr.close()
    assert "checkpoint 2" in str(e.value)
    assert "params/memory/items has shape (16, 16) there, (8, 16) here" in str(e.value)


def test_a_checkpoint_written_before_the_average_existed_restores(tmp_path):
    # Checkpoints before train.ema_decay had no `ema` entry in their tree: written here as
    # that tree, they restore with ema None and the same arrays, and score with them.
    import dataclasses

    import numpy as np
    import orbax.checkpoint as ocp

    config = tiny_config(tmp_path / "data", model__latent_dim=16)
    net = model.from_config(config)
    initial = state.init_state(config, net)
    assert initial.ema is None
    old_tree = {f.name: getattr(initial, f.name) for f in dataclasses.fields(initial)}
    del old_tree["ema"]
    mgr = checkpoint.manager(tmp_path, async_save=False)
    meta = state.checkpoint_meta(config, 1)
    # the old TrainState's digest: its leaves in field order (ema None adds none)
    meta["state_sha256"] = checkpoint.state_digest(initial)
    args = ocp.args.Composite(state=ocp.args.StandardSave(old_tree), meta=ocp.args.JsonSave(meta))
    mgr.save(3, args=args, force=True)
    mgr.wait_until_finished()
    step, restored, _ = state.restore_state(config, net, mgr)
    mgr.close()
    assert step == 3 and restored.ema is None
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(initial), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a config that keeps an average needs one: that checkpoint is refused, not half-read
    averaged = tiny_config(tmp_path / "data", model__latent_dim=16, train__ema_decay=0.9)
    mgr = checkpoint.manager(tmp_path, async_save=False)
    with pytest.raises(checkpoint.CheckpointError):
        state.restore_state(averaged, model.from_config(averaged), mgr)
    mgr.close()


def test_fields_added_later_leave_older_digests_alone(tmp_path):
    # The digest of checkpoints written before `model.segment_head` existed, by hand: sha1 of
    # the other trained fields' JSON. A config at the field's default must reproduce it.
    import hashlib
    import json

    config = tiny_config(tmp_path / "data", model__gate="sigmoid", model__latent_dim=16)
    m, d = config.model, config.data
    old_fields = [
        ["model.variant", m.variant],
        ["model.memory_size", m.memory_size],
        ["model.latent_dim", m.latent_dim],
        ["model.similarity", m.similarity],
        ["model.shrink_threshold", m.shrink_threshold],
        ["model.temperature", m.temperature],
        ["model.gate", m.gate],
        ["data.image_size", d.image_size],
        ["data.resize", d.resize],
    ]
    expected = hashlib.sha1(json.dumps(old_fields).encode()).hexdigest()[:12]
    assert state.config_digest(config) == expected
    with config.unlocked():
        del config.model["segment_head"]
    assert state.config_digest(config) == expected


def test_evaluating_a_folder_that_is_no_run_names_its_missing_config(tmp_path):
    """No --config and no config.json: one clear error naming the file, no traceback of a
    missing config (a launcher prints the UserError's line)."""
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    for call in (evaluate.evaluate, evaluate.check_held_out):
        with pytest.raises(workdir_lib.WorkdirError) as e:
            call(None, str(empty))
        assert str(workdir_lib.config_path(empty)) in str(e.value) and "not found" in str(e.value)


def test_config_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    # A write that fails halfway (a kill, a full disk) leaves the previous config.json as it
    # was, and no reader ever sees a half-written one: the text goes to a side file first.
    config = tiny_config(tmp_path / "data", model__latent_dim=16)
    workdir_lib.save_config(tmp_path, config)
    before = workdir_lib.config_path(tmp_path).read_text()
    changed = copy.deepcopy(config)
    changed.train.seed = config.train.seed + 1
    real_write = type(tmp_path).write_text

    def half_then_fail(path, text, *args, **kwargs):
        real_write(path, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(type(tmp_path), "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        workdir_lib.save_config(tmp_path, changed)
    monkeypatch.undo()
    assert workdir_lib.config_path(tmp_path).read_text() == before
    workdir_lib.save_config(tmp_path, changed)
    assert workdir_lib.load_config(tmp_path).train.seed == config.train.seed + 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("config")] == ["config.json"]


def test_a_truncated_config_is_one_line_naming_the_file(tmp_path):
    path = workdir_lib.config_path(tmp_path)
    path.write_text('{"train": {"seed": ')
    with pytest.raises(workdir_lib.WorkdirError) as e:
        workdir_lib.load_config(tmp_path)
    assert str(path) in str(e.value) and "not a whole config" in str(e.value)
    assert "\n" not in str(e.value)
