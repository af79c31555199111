"""Training progress: one progress bar per stage, a JSON-lines metrics log, a loss curve."""

import json
import pathlib
import time

from cmaae_jax import console
from cmaae_jax import workdir as workdir_lib


class TrainLog:
    """Writes `<workdir>/metrics.jsonl` and `loss.png` (primary process only) and shows one
    progress bar per stage (loss and patches/s; on the primary process).

    `stage_ends` are the steps that end stage 1 and stage 2 (`stage1_steps`, `stage1_steps +
    stage2_steps`); None reads them from the workdir's config.json (training writes it first),
    or shows one bar for all `total` steps when that is not there.
    """

    def __init__(
        self, workdir, primary: bool, start: int, total: int, batch_size: int, stage_ends=None
    ):
        self.path = pathlib.Path(workdir) / workdir_lib.TRAIN_LOG
        self.primary = primary
        self.batch_size = batch_size
        self.last_step, self.last_time = start, time.perf_counter()
        self.ends = tuple(stage_ends or _stage_ends(workdir, primary) or (total,))
        self.bar, self.stage, self.lo = None, 0, 0
        self._open(start)

    def _open(self, step: int):
        """Opens the bar of the stage that `step` (the next step to run) belongs to."""
        if self.bar is not None:
            self.bar.close()
        self.bar = None
        later = [i for i, end in enumerate(self.ends) if step < end]
        if not later:
            return
        i = later[0]
        self.stage, self.lo = i + 1, self.ends[i - 1] if i else 0
        desc = f"stage {self.stage}" if len(self.ends) > 1 else "training"
        self.bar = console.progress(
            self.ends[i] - self.lo, desc, "step", step - self.lo, disable=not self.primary
        )

    def write(self, step: int, stage: int, values: dict):
        now = time.perf_counter()
        rate = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        record = {"step": step, "stage": stage, **values, "patches_per_s": rate}
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={values['loss']:.4f}, patches/s={rate:.0f}", False)
            self.bar.update(step - self.lo - self.bar.n)
            if step >= self.ends[self.stage - 1]:
                self._open(step)  # the next stage's bar waits through its compilation
        if self.primary:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.primary and self.path.exists():
            plot_losses(self.path, self.path.with_name(workdir_lib.LOSS_PLOT))


def _stage_ends(workdir, primary: bool):
    """(stage1_steps, stage1_steps + stage2_steps) of the workdir's config.json, or None."""
    path = workdir_lib.config_path(workdir)
    if not primary or not path.is_file():
        return None
    try:
        t = json.loads(path.read_text())["train"]
        return (t["stage1_steps"], t["stage1_steps"] + t["stage2_steps"])
    except (ValueError, KeyError, TypeError):
        return None


def read(path) -> list[dict]:
    """Records of a metrics log; a resumed run's repeated steps keep their last record."""
    by_step = {}
    for line in pathlib.Path(path).read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # blank, or torn by a killed writer or a full disk
        if isinstance(r, dict) and "step" in r:
            by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


def plot_losses(log_path, out_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read(log_path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage in (1, 2):
        r = [x for x in records if x["stage"] == stage]
        if r:
            ax.plot([x["step"] for x in r], [x["loss"] for x in r], label=f"stage {stage}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
