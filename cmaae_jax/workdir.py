"""The files of a training run's workdir, named once, and its saved config.

<workdir>/config.json          the resolved config of the run (written by training)
<workdir>/checkpoints/         orbax checkpoints
<workdir>/metrics.jsonl        training log, one JSON object per logged step
<workdir>/loss.png             the training curve
<workdir>/log.txt              every library's log (INFO and up) of the commands run on it
<workdir>/eval/metrics.json    evaluation metrics and the label-free threshold
<workdir>/eval/held_out.json   the label-free check alone (evaluate --held_out_only)
<workdir>/eval/pictures/       overlays of the evaluation
<workdir>/eval/reference.npy   the per-position reference evaluation chose (reference.FILE)
"""

import json
import pathlib

import ml_collections

from cmaae_jax import errors

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "metrics.jsonl"
LOSS_PLOT = "loss.png"
EVAL = "eval"
EVAL_METRICS = "metrics.json"
HELD_OUT = "held_out.json"
PICTURES = "pictures"
PR_CURVE = "pr_curve.png"
LOG = "log.txt"


class WorkdirError(errors.UserError, FileNotFoundError):
    """A workdir that lacks a file a command needs."""


def config_path(workdir) -> pathlib.Path:
    return pathlib.Path(workdir) / CONFIG


def checkpoints_dir(workdir) -> pathlib.Path:
    return pathlib.Path(workdir) / CHECKPOINTS


def eval_dir(workdir) -> pathlib.Path:
    return pathlib.Path(workdir) / EVAL


def eval_metrics_path(workdir) -> pathlib.Path:
    return eval_dir(workdir) / EVAL_METRICS


def held_out_path(workdir) -> pathlib.Path:
    return eval_dir(workdir) / HELD_OUT


def log_path(workdir, process: int = 0) -> pathlib.Path:
    """The log file of a command run on `workdir` (one per process of a multi-host run)."""
    name = LOG if process == 0 else f"log.process{process}.txt"
    return pathlib.Path(workdir) / name


def save_config(workdir, config):
    """Writes the resolved config whole, by a rename: a reader (the other processes of a
    multi-host run checking for a resume while the first writes it, or a resume after a
    kill) sees the whole file or none, never a truncated one."""
    path = config_path(workdir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config.to_json_best_effort(indent=2))
    tmp.replace(path)


def load_config(workdir) -> ml_collections.ConfigDict:
    """The resolved config that training saved next to its checkpoints."""
    path = config_path(workdir)
    if not path.is_file():
        raise WorkdirError(
            f"{path} not found: is {workdir} a training workdir (launch/train.py --workdir)?"
        )
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise WorkdirError(
            f"{path} is not a whole config ({e}): training writes it at its start; restore it "
            "or train in a new workdir"
        ) from None


def load_scoring_config(workdir) -> ml_collections.ConfigDict:
    """The run's config with the score fields its evaluation used: `eval/metrics.json`'s
    `config_overrides` ({"score.field": [trained, used]}) applied. The threshold and the
    reference that evaluation wrote belong to those fields, so predict and export score with
    them. Without an evaluation (or overrides): the run's config."""
    config = load_config(workdir)
    path = eval_metrics_path(workdir)
    if not path.is_file():
        return config
    try:
        overrides = json.loads(path.read_text()).get("config_overrides") or {}
        used = {tuple(key.split(".", 1)): value for key, (_, value) in overrides.items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise WorkdirError(
            f"{path} holds no readable evaluation record ({type(e).__name__}: {e}); run "
            f"launch/evaluate.py again"
        ) from e
    with config.unlocked():
        for (section, field), value in used.items():
            config[section][field] = value
    return config
