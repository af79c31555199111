"""Embedded demo: procedural wood-like textures with synthetic defects, no download needed.

    python launch/train.py --config configs/demo.py --workdir runs/demo

Generates the texture tree under runs/demo_data, trains both stages and evaluates; metrics
land in runs/demo/eval/metrics.json (README has the measured figures). The aligned machined
part of RESULTS.md is `--config.data.category=part`.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.format = "synthetic"
    c.data.root = "runs/demo_data"  # where the procedural MVTec-layout tree is written
    c.data.category = "wood"  # synthetic.CATEGORIES: wood | carpet | tile | noise | part | cast ...
    c.data.image_size = 256
    c.data.synthetic_num_train = 60
    c.data.synthetic_num_test = 30
    c.model.memory_size = 100
    c.anomaly.patch_size = 128  # half the image side, as 256 at 512
    c.anomaly.bank_size = 32
    c.train.batch_size = 64
    c.train.crops_per_image = 16
    c.train.stage1_steps = 400
    c.train.stage2_steps = 200
    c.train.log_every = 20
    c.train.checkpoint_every = 100
    c.eval.val_fraction = 0.15
    return c
