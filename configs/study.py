"""Ablation-study budget on magnetic tile (launch/study.py), small enough for 2 shared CPU cores.

    python launch/study.py --config configs/study.py --workdir_root runs/study

This is far below the paper's budget (512 px images, batch 512, thousands of steps): images are
resized to 128 px (a 2x2 grid of 64x64 patches), the batch is 64 patches and the stages are
60 + 30 steps (about 20 patches/s on the shared 2-core CPU it was measured on). The
full-budget study (GPU, or a CPU with hours to spare) is

    python launch/study.py --config configs/magnetic_tile.py --workdir_root runs/study_full

RESULTS.md's main table is this config at 256 px and 1200 + 600 steps (~15 min per model):
pixel AUROC 0.585 (full CMA-AE) and 0.560 (plain AE, pixel residual), both near chance on the
pooled pixels, 0.88-0.94 on blowholes.
"""

from configs import magnetic_tile


def get_config():
    c = magnetic_tile.get_config()
    c.data.image_size = 128
    c.anomaly.patch_size = 64  # half the image side, as the paper's 256 at 512
    c.score.normalize = "none"  # the paper's maps; normalisation is a variant of its own
    c.train.batch_size = 64  # 4 images x 16 crops per step
    c.train.stage1_steps = 60
    c.train.stage2_steps = 30
    c.train.log_every = 10
    c.train.checkpoint_every = 30
    c.train.keep_checkpoints = 1
    c.eval.max_pictures = 10
    return c
