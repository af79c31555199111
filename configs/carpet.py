"""MVTec AD carpet (the paper's Table III; paper F1 0.571).

    python launch/train.py --config configs/carpet.py --workdir runs/carpet \
        --config.data.root=/path/to/mvtec_anomaly_detection

Reference points: paper CMA-AE pixel F1 0.571; PatchCore (WRN50) pixel AUROC
0.991, PRO 0.969; PaDiM pixel AUROC 0.991. Not yet run here (MVTec AD is not on this
machine); expected result unknown until someone with the data runs it.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.format = "mvtec"
    c.data.root = "data/mvtec_anomaly_detection"  # override with --config.data.root
    c.data.category = "carpet"
    c.anomaly.natural_source = "skimage"  # the real photographs shipped inside scikit-image
    return c
