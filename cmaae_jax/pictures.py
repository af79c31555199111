"""Pictures: overlays of image / ground truth / anomaly map / predicted mask, and a PR curve."""

import pathlib

import numpy as np
from PIL import Image, ImageDraw


def heat(map_HxW, threshold) -> np.ndarray:
    """RGB heat map, scaled so that the threshold sits in the middle of the colour range."""
    from matplotlib import colormaps

    scale = max(2.0 * float(threshold), 1e-12)
    rgba = colormaps["jet"](np.clip(map_HxW / scale, 0.0, 1.0))
    return (rgba[..., :3] * 255).astype(np.uint8)


def _tint(image_HxWx3, mask_HxW, colour):
    out = image_HxWx3.astype(np.float32)
    m = mask_HxW.astype(bool)
    out[m] = 0.5 * out[m] + 0.5 * np.asarray(colour, np.float32)
    return out.astype(np.uint8)


def overlay(image_u8, mask_u8, map_HxW, threshold, title="") -> Image.Image:
    """Four panels side by side: input, ground truth (green), heat map, prediction (red)."""
    pred = map_HxW >= threshold
    panels = [
        image_u8,
        _tint(image_u8, mask_u8, (0, 255, 0)) if mask_u8 is not None else image_u8,
        heat(map_HxW, threshold),
        _tint(image_u8, pred, (255, 0, 0)),
    ]
    h, w = image_u8.shape[:2]
    canvas = Image.new("RGB", (4 * w + 30, h + 16), "white")
    for i, p in enumerate(panels):
        canvas.paste(Image.fromarray(p), (i * (w + 10), 16))
    labels = ["input", "ground truth", "anomaly map", "prediction"]
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        draw.text((i * (w + 10) + 2, 2), label if i else f"{label} {title}", fill="black")
    return canvas


def save_overlay(path, image_u8, mask_u8, map_HxW, threshold, title=""):
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    overlay(image_u8, mask_u8, map_HxW, threshold, title).save(path)


def save_pr_curve(path, precision, recall, f1_point=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(recall, precision, lw=1.5)
    if f1_point is not None:
        ax.plot([f1_point[1]], [f1_point[0]], "ro", label="calibrated threshold")
        ax.legend()
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("pixel precision-recall")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
