"""MVTec AD wood (the paper's Table III; paper F1 0.703).

    python launch/train.py --config configs/wood.py --workdir runs/wood \
        --config.data.root=/path/to/mvtec_anomaly_detection

Reference points: paper CMA-AE pixel F1 0.703; PatchCore (WRN50) pixel AUROC
0.951, PRO 0.902; PaDiM pixel AUROC 0.949. Not yet run here (MVTec AD is not on this
machine); expected result unknown until someone with the data runs it.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.format = "mvtec"
    c.data.root = "data/mvtec_anomaly_detection"  # override with --config.data.root
    c.data.category = "wood"
    c.anomaly.natural_source = "skimage"  # the real photographs shipped inside scikit-image
    return c
