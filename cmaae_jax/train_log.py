"""Training progress: a progress bar, a JSON-lines metrics log and a loss-curve picture."""

import json
import pathlib
import time

import tqdm

from cmaae_jax import workdir as workdir_lib


class TrainLog:
    """Writes `<workdir>/metrics.jsonl` and `loss.png` (primary process only) and a bar."""

    def __init__(self, workdir, primary: bool, start: int, total: int, batch_size: int):
        self.path = pathlib.Path(workdir) / workdir_lib.TRAIN_LOG
        self.primary = primary
        self.batch_size = batch_size
        self.last_step, self.last_time = start, time.perf_counter()
        self.bar = tqdm.tqdm(
            total=total, initial=start, disable=not primary, unit="step", dynamic_ncols=True
        )

    def write(self, step: int, stage: int, values: dict):
        now = time.perf_counter()
        rate = (step - self.last_step) * self.batch_size / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        record = {"step": step, "stage": stage, **values, "patches_per_s": rate}
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(stage=stage, loss=f"{values['loss']:.4f}", patches_s=f"{rate:.0f}")
        if self.primary:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self):
        self.bar.close()
        if self.primary and self.path.exists():
            plot_losses(self.path, self.path.with_name(workdir_lib.LOSS_PLOT))


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
