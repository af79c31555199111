"""What a command prints: the closing summary table, and a whole tiny training run through
launch/train.py (short, no absl INFO lines, warnings kept, the summary last, a log file)."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

from conftest import IN_PROCESS_LEVEL, tiny_config, xla_flags

from cmaae_jax import calibration, console, reference, train_log

ROOT = pathlib.Path(__file__).resolve().parents[1]
ABSL_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ ")


def test_summary_table_lines(tmp_path):
    (tmp_path / "loss.png").write_bytes(b"")
    result = {
        "checkpoint_step": 600,
        "num_images": 12,
        "num_defective": 6,
        "num_images_without_masks": 2,
        "pixel_f1": 0.66149,
        "pixel_f1_max": 0.8104,
        "pixel_auroc": 0.99712,
        "pixel_ap": 0.9,
        "pixel_aupro": float("nan"),
        "image_auroc": 1.0,
        "threshold": 0.0123456,
        "threshold_rule": "quantile 0.999 of held-out normal pixel scores",
        "method": "msfr_pixel",
        "reference": {"setting": "auto", "used": True, "kind": "zscore"},
    }
    w = str(tmp_path)
    assert console.summary_lines(result, tmp_path) == [
        "evaluation of checkpoint 600 (12 test images, 6 defective, 2 without masks)",
        "  pixel_f1      0.661",
        "  pixel_f1_max  0.810",
        "  pixel_auroc   0.997",
        "  pixel_ap      0.900",
        "  pixel_aupro   n/a",
        "  image_auroc   1.000",
        "  threshold     0.01235 (quantile 0.999 of held-out normal pixel scores)",
        "  map           msfr_pixel, z-scored per position",
        "files",
        f"  workdir       {w}",
        f"  log           {w}/log.txt",
        f"  loss curve    {w}/loss.png",
        f"  metrics       {w}/eval/metrics.json",
        f"  pictures      {w}/eval/pictures",
    ]
    unaligned = {"method": "msfr", "reference": {"setting": "auto", "used": False, "kind": None}}
    assert console.map_description(unaligned) == "msfr, no per-position reference"
    tested = {**unaligned["reference"], "excess_none": 0.012, "excess_mean": 0.01164}
    need = f"{100 * reference.MIN_NARROWING:.0f}% needed"
    assert console.map_description({"method": "msfr", "reference": tested}) == (
        f"msfr, no per-position reference (alignment test: normal tail 3% narrower, {need})"
    )
    assert console.map_description({"method": "pixel"}) == "pixel, no per-position reference"
    mean = {"method": "msfr", "reference": {"kind": "mean"}}
    assert console.map_description(mean) == "msfr, minus the normal per-position mean"
    parts = {"method": "msfr_pixel", "reference": {"kind": "zscore", "components": ["a", "b"]}}
    assert console.map_description(parts) == (
        "msfr_pixel, z-scored per position (each of a and b, then averaged)"
    )
    parts["reference"]["weights"] = [1.0, 2.0]
    assert console.map_description(parts) == (
        "msfr_pixel, z-scored per position (each of a and b, then weighted 1:2)"
    )
    assert console.summary_lines(None, "runs/x") == [
        "files",
        "  workdir       runs/x",
        "  log           runs/x/log.txt",
    ]


def test_training_shows_one_bar_per_stage(tmp_path):
    log = train_log.TrainLog(tmp_path, True, 2, 8, 16, stage_ends=(4, 8))
    assert (log.bar.desc, log.bar.n, log.bar.total) == ("stage 1", 2, 4)
    log.write(4, 1, {"loss": 1.0})
    assert (log.bar.desc, log.bar.n, log.bar.total) == ("stage 2", 0, 4)  # opened at once
    log.write(6, 2, {"loss": 0.5})
    assert log.bar.n == 2 and log.bar.postfix.startswith("loss=0.5000, patches/s=")
    log.write(8, 2, {"loss": 0.25})
    assert log.bar is None
    assert [r["step"] for r in train_log.read(tmp_path / "metrics.jsonl")] == [4, 6, 8]
    # Without stage_ends, the stages come from the run's config.json; a resume mid-stage 2:
    (tmp_path / "config.json").write_text('{"train": {"stage1_steps": 3, "stage2_steps": 5}}')
    log = train_log.TrainLog(tmp_path, True, 5, 8, 16)
    assert (log.bar.desc, log.bar.n, log.bar.total) == ("stage 2", 2, 5)
    log.bar.close()


def _write_config(config, path):
    path.write_text(
        "import json\n\nimport ml_collections\n\n\ndef get_config():\n"
        f"    return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n"
    )
    return path


def _shown(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def test_a_tiny_training_run_prints_one_screen_ending_with_the_summary(tmp_path):
    config = tiny_config(tmp_path / "data", model__latent_dim=16, eval__max_pictures=1)
    work = tmp_path / "work"
    leftover = work / "checkpoints" / "2.orbax-checkpoint-tmp-1"
    leftover.mkdir(parents=True)  # an interrupted save: training warns and removes it
    # the in-process tests' level: the tiny run's programs are theirs, from the test cache
    env = dict(os.environ, XLA_FLAGS=xla_flags(4, IN_PROCESS_LEVEL))
    config_file = _write_config(config, tmp_path / "tiny.py")
    proc = subprocess.run(
        [sys.executable, "launch/train.py", f"--config={config_file}", f"--workdir={work}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
    )
    text = proc.stdout.decode()  # bytes: text=True would turn each bar update's "\r" into "\n"
    assert proc.returncode == 0, text[-3000:]
    lines = text.split("\n")  # what a terminal shows: the bars update in place with "\r"
    assert len(lines) < 40, text
    assert not any(ABSL_INFO.match(part) for part in re.split(r"[\r\n]", text)), text
    assert f"warning: removing {leftover}, left unfinished by an interrupted save" in lines
    for stage in (1, 2):  # a bar per stage, with the loss and the patch rate
        assert re.search(rf"stage {stage}: 100%.*4/4.*loss=[\d.]+, patches/s=\d+", text)
    m = json.loads((work / "eval" / "metrics.json").read_text())
    tail = [
        f"  pixel_f1      {m['pixel_f1']:.3f}",
        f"  pixel_f1_max  {m['pixel_f1_max']:.3f}",
        f"  pixel_auroc   {m['pixel_auroc']:.3f}",
        f"  pixel_ap      {m['pixel_ap']:.3f}",
        f"  pixel_aupro   {m['pixel_aupro']:.3f}",
        f"  image_auroc   {m['image_auroc']:.3f}",
        f"  threshold     {m['threshold']:.4g} (quantile 0.999 of held-out normal pixel scores)",
        "  map           msfr, no per-position reference",  # tiny_config: score.reference=none
        "held-out check (GAAGA pastes on held-out normal images; no defect label)",
        *(f"  {k:<14}{_shown(m['held_out'][k])}" for k in calibration.HELD_OUT_KEYS),
        "files",
        f"  workdir       {work}",
        f"  log           {work}/log.txt",
        f"  loss curve    {work}/loss.png",
        f"  metrics       {work}/eval/metrics.json",
        f"  pictures      {work}/eval/pictures",
        "",
    ]
    assert lines[-len(tail) - 1] == "evaluation of checkpoint 8 (8 test images, 4 defective)"
    assert lines[-len(tail) :] == tail
    # The libraries' INFO logs are in the workdir's log file instead.
    log = (work / "log.txt").read_text().splitlines()
    assert "launch/train.py" in log[0]
    assert sum(bool(ABSL_INFO.match(line)) and "checkpoint_manager.py" in line for line in log) > 5
