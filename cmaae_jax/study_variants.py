"""The study's rows: the variants of the paper's ablation (Table IV) and of issue 12's options.

Each variant is a set of config overrides of the study's base config (configs/study.py), and
optionally the variant whose checkpoints it scores instead of training its own (`cmaae_jax.study`
runs them). `name@scale` (`BUDGET_MARK`) runs a variant with `scale` times the base steps.
"""

# The paper's settings of the options issue 12 added (a row of every new study).
PAPER = {
    "model.gate": "softmax",
    "model.temperature": 1.0,
    "anomaly.paste_shape": "rect",
    "data.resize": "square",
    "score.stride": 64,
    "score.normalize": "none",
    "score.scales": (1, 2, 3),
    "score.method": "msfr",
    "score.reference": "none",
}
# The segment head's settings (its rows below).
SEGMENT = {
    "model.segment_head": True,
    "score.method": "segment",
    "score.normalize": "none",
    "score.stride": 16,
}
# name -> (description, overrides, variant whose checkpoints are evaluated or None)
VARIANTS = {  # in run order: the main comparison (full vs plain AE) first
    "full": ("CMA-AE: CMAM (softmax gates) + MSFR + two stages", {}, None),
    "pixel": ("full model, pixel residual in place of MSFR", {"score.method": "pixel"}, "full"),
    "ae": ("plain auto-encoder (no memory), MSFR", {"model.variant": "ae"}, None),
    "ae_pixel": ("plain auto-encoder, pixel residual", {"score.method": "pixel"}, "ae"),
    "sigmoid": ("sigmoid gates in place of softmax", {"model.gate": "sigmoid"}, None),
    "one_stage": ("stage 1 only, same total steps", {"one_stage": True}, None),
    "mam": ("MAM (MemAE memory) in place of CMAM", {"model.variant": "mam"}, None),
    "cat": ("concatenation + dense in place of the gates", {"model.variant": "cat"}, None),
    "dot": (
        "dot-product addressing (MemAE's code) in place of cosine",
        {"model.similarity": "dot"},
        None,
    ),
    "full_median": ("full model, each map over its median", {"score.normalize": "median"}, "full"),
    "ae_pixel_median": (
        "plain auto-encoder, pixel residual, each map over its median",
        {"score.method": "pixel", "score.normalize": "median"},
        "ae",
    ),
    # Issue 12: each option of the new defaults against the paper's setting, one at a time.
    "paper": ("the paper: softmax gates, rect paste, squashed square, grid, raw maps", PAPER, None),
    "softmax": ("softmax gates (the paper)", {"model.gate": "softmax"}, None),
    "scaled": ("softmax gates times the latent size", {"model.gate": "softmax_scaled"}, None),
    "tau01": ("cosine addressing at temperature 0.1", {"model.temperature": 0.1}, None),
    "rect": ("GAAGA pastes rectangles (eq. 1)", {"anomaly.paste_shape": "rect"}, None),
    "blob": ("GAAGA pastes random smooth shapes", {"anomaly.paste_shape": "blob"}, None),
    "ae_blob": (
        "plain auto-encoder (no memory) trained with blob pastes",
        {"model.variant": "ae", "anomaly.paste_shape": "blob"},
        None,
    ),
    "blob_p64": (
        "GAAGA pastes random smooth shapes no larger than the model's 64-px window",
        {"anomaly.paste_shape": "blob", "anomaly.patch_size": 64},
        None,
    ),
    # The segment head (segmenter.py): the same auto-encoders trained with a discriminative
    # head on the paste masks, scored by the head on windows every 16 pixels (raw maps: the
    # head's output is a probability already, not a residual that scales with exposure).
    "seg_blob": (
        "CMA-AE with blob pastes and the segment head, scored by the head",
        {**SEGMENT, "anomaly.paste_shape": "blob"},
        None,
    ),
    "ae_seg_blob": (
        "plain auto-encoder with blob pastes and the segment head, scored by the head",
        {**SEGMENT, "anomaly.paste_shape": "blob", "model.variant": "ae"},
        None,
    ),
    "seg_varied": (
        "CMA-AE with varied pastes (blobs, spots, strokes) and the segment head, scored by it",
        {**SEGMENT, "anomaly.paste_shape": "varied"},
        None,
    ),
    "varied": (
        "GAAGA pastes blobs, small spots and thin strokes",
        {"anomaly.paste_shape": "varied"},
        None,
    ),
    "varied_thin": (
        "varied pastes whose thinnest half-axis is 2 px at any paste size (1/32 of half of 128)",
        {"anomaly.paste_shape": "varied", "anomaly.thinnest_px": 2.0},
        None,
    ),
    "varied_focus": (
        "varied pastes, half of each image's stage-2 crops placed on the pastes",
        {"anomaly.paste_shape": "varied", "anomaly.focus_crops": 0.5},
        None,
    ),
    "varied_c4": (
        "varied pastes, 4 crops per image (16 images per step at batch 64, not 4)",
        {"anomaly.paste_shape": "varied", "train.crops_per_image": 4},
        None,
    ),
    "varied_cover": (
        "varied pastes, crops placed so that the image's sides are seen about as often",
        {"anomaly.paste_shape": "varied", "train.crop_placement": "cover"},
        None,
    ),
    "varied_ema": (
        "varied pastes, scored with a moving average of the parameters (decay 0.99)",
        {"anomaly.paste_shape": "varied", "train.ema_decay": 0.99},
        None,
    ),
    "varied_ema_last": (
        "varied_ema's checkpoints scored with the last step's parameters (paired with it)",
        {"score.weights": "last"},
        "varied_ema",
    ),
    "ae_varied": (
        "plain auto-encoder (no memory) trained with varied pastes",
        {"model.variant": "ae", "anomaly.paste_shape": "varied"},
        None,
    ),
    "ae_varied_pixel": (
        "plain auto-encoder trained with varied pastes, pixel residual",
        {"score.method": "pixel"},
        "ae_varied",
    ),
    "square": ("images squashed to a square (the paper)", {"data.resize": "square"}, None),
    "full_grid": ("full model, non-overlapping 64x64 grid", {"score.stride": 64}, "full"),
    "full_stride16": ("full model, windows every 16 pixels", {"score.stride": 16}, "full"),
    "full_fine": ("full model, MSFR of encoder layer 1 only", {"score.scales": (1,)}, "full"),
    "ae_fine": ("plain auto-encoder, MSFR of encoder layer 1 only", {"score.scales": (1,)}, "ae"),
    # The budget curve's rows (`name@scale`): the defaults (`score.scales=(1,)`) trained as rows
    # of their own, so that a budget point is trained and evaluated once; at scale 1 they
    # train exactly the models `full_fine` / `ae_fine` score.
    "full_l1": ("full model, the defaults (MSFR of layer 1)", {"score.scales": (1,)}, None),
    "ae_l1": (
        "plain auto-encoder, MSFR of layer 1",
        {"model.variant": "ae", "score.scales": (1,)},
        None,
    ),
    "cosine_fine": (
        "full model, Adam 1e-3 with warm-up + cosine decay per stage, MSFR of layer 1",
        {"train.learning_rate": 1e-3, "train.lr_schedule": "cosine", "score.scales": (1,)},
        None,
    ),
    "ae_cosine_fine": (
        "plain auto-encoder, Adam 1e-3 with warm-up + cosine decay per stage, MSFR of layer 1",
        {
            "model.variant": "ae",
            "train.learning_rate": 1e-3,
            "train.lr_schedule": "cosine",
            "score.scales": (1,),
        },
        None,
    ),
    "ae_pixel_stride16": (
        "plain auto-encoder, pixel residual, windows every 16 pixels",
        {"score.method": "pixel", "score.stride": 16},
        "ae",
    ),
}
BUDGET_MARK = "@"  # "full@0.25": the variant `full` with a quarter of the base config's steps
