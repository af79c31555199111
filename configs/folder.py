"""Your own photographs: defect-free images to train on, and test images to score.

    python launch/train.py --config configs/folder.py --workdir runs/mine \
        --config.data.root=/path/to/photos

Layout (data.format=folder): <root>/good/* (training; a share is held out to calibrate the
threshold), and for a test split <root>/test_good/*, <root>/defective/* and
<root>/masks/<stem>_mask.png (defective images without masks count in image metrics only).
Photographs in the MVTec layout: add --config.data.format=mvtec with the category folder as
root (configs/magnetic_tile.py does so). The real-data settings of the dataset configs: GAAGA
cuts its pastes from the photographs inside scikit-image (no download). Keep data.image_size
near the photographs' own long side and not above it (README, "Using it").
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.format = "folder"
    c.data.root = ""  # required: --config.data.root=/path/to/photos
    c.anomaly.natural_source = "skimage"  # the real photographs shipped inside scikit-image
    return c
