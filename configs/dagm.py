"""DAGM 2007 class N (the paper's tile / cement / wallpaper come from DAGM classes).

    python launch/train.py --config configs/dagm.py:7 --workdir runs/dagm7 \
        --config.data.root=/path/to/DAGM2007

Paper Table III F1: tile 0.841, cement 0.792, wallpaper 0.902 (the paper does not say which
DAGM class each is). Images are 512x512 grayscale, read as 1 channel repeated to 3.
"""

from configs import default


def get_config(class_index="1"):
    c = default.get_config()
    c.data.format = "dagm"
    c.data.root = "data/DAGM2007"  # override with --config.data.root
    c.data.category = f"Class{int(class_index)}"
    c.anomaly.natural_source = "skimage"  # the real photographs shipped inside scikit-image
    return c
