"""Default CMA-AE configuration: every field is documented here once.

Dataset configs import this file and change a few fields. Train and evaluate with

    python launch/train.py --config configs/default.py --workdir runs/default \
        --config.data.root=/path/to/mvtec --config.data.category=wood
    python launch/evaluate.py --config configs/default.py --workdir runs/default

Any field can be overridden on the command line: `--config.train.stage1_steps=100`.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.format = "mvtec"  # mvtec | dagm | folder | synthetic
    c.data.root = ""  # dataset root (for synthetic: where the generated tree is written)
    c.data.category = ""  # MVTec category, DAGM class ("Class7"), or synthetic.CATEGORIES key
    c.data.image_size = 512  # S: images resized to S x S (keep_aspect: long side S); k * 64
    c.data.resize = "keep_aspect"  # keep_aspect (long side S, reflect-padded) | square (paper)
    c.data.use_tfds = False  # read a prepared TFDS dataset (mvtec/dagm) instead of the folders
    c.data.tfds_data_dir = ""  # where TFDS keeps prepared datasets ("" = its default folder)
    c.data.synthetic_num_train = 48  # synthetic: number of good training images generated
    c.data.synthetic_num_test = 24  # synthetic: number of test images (half defective)
    c.data.stream = False  # train from an on-disk store decoded once (host memory: one batch)
    c.data.cache_dir = ""  # where data.stream keeps its image store ("" = <workdir>/image_store)

    c.model = ml_collections.ConfigDict()
    c.model.variant = "cmam"  # cmam (full) | mam (MemAE) | cat (concat+dense) | ae (no memory)
    c.model.memory_size = 500  # N, number of memory items
    c.model.latent_dim = 512  # size of the latent code z (Table I: 512)
    c.model.similarity = "cosine"  # cosine (paper) | dot (MemAE code)
    c.model.shrink_threshold = -1.0  # hard-shrinkage lambda; < 0 means 1 / memory_size
    c.model.temperature = 1.0  # addressing softmax temperature: w = softmax(sim / tau); 1 = paper
    c.model.gate = "sigmoid"  # FRM gates: sigmoid | softmax (paper) | softmax_scaled (D * softmax)
    c.model.segment_head = False  # a discriminative head learns the paste masks in stage 2
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    c.model.conv_impl = "auto"  # auto: CPU formulation on CPU, native elsewhere | matmul | xla

    c.loss = ml_collections.ConfigDict()
    c.loss.w_rec = 50.0  # weight of the L1 reconstruction loss
    c.loss.w_sparse = 0.01  # weight of the memory-addressing entropy loss
    c.loss.w_feat = 0.0  # > 0: weight of layer 1's relative feature residual (0 = paper)
    c.loss.w_seg = 1.0  # weight of the segment head's cross-entropy (stage 2, own parameters)

    c.anomaly = ml_collections.ConfigDict()
    c.anomaly.natural_source = "procedural"  # skimage (photos) | procedural | dir:PATH | tfds:NAME
    c.anomaly.patch_size = 256  # side of the pasted natural-image patch (half the image side)
    c.anomaly.bank_size = 64  # number of natural images kept in memory to crop from
    c.anomaly.blur_sigma = 3.0  # Gaussian-blur sigma (pixels) of the resized normal region
    c.anomaly.paste_shape = "varied"  # varied (blobs, spots, strokes) | blob | rect (eq. 1)
    c.anomaly.thinnest_px = 0.0  # varied: smallest half-axis in px (0: 1/32 of half the paste)
    c.anomaly.min_opacity = 1.0  # < 1: each training paste blended at opacity U[this, 1]; 1 paper
    c.anomaly.focus_crops = 0.0  # stage 2: share of each image's crops holding a pasted pixel

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0  # seed for parameters, crops, anomalies and data splits
    c.train.batch_size = 512  # global batch of 64x64 patches (divisible by the device count)
    c.train.crops_per_image = 16  # patches cropped from each sampled image per step
    c.train.crop_placement = "uniform"  # uniform corners (paper) | cover (sides seen more)
    c.train.crop_scales = (1,)  # image shrink factors cropped (as score.pyramid); (1,) paper
    c.train.stage1_steps = 2000  # stage 1: normal patches, target = input, all parameters
    c.train.stage2_steps = 1000  # stage 2: GAAGA images, memory frozen
    c.train.stage2_target = "clean"  # clean (repair the pasted anomaly) | input (paper eq. 12)
    c.train.learning_rate = 2e-4  # Adam step size
    c.train.b1 = 0.5  # Adam beta1
    c.train.b2 = 0.999  # Adam beta2
    c.train.lr_schedule = "constant"  # constant (paper) | cosine (per stage: warm-up, half cosine)
    c.train.warmup_fraction = 0.05  # cosine: share of each stage's steps spent warming up
    c.train.ema_decay = 0.0  # > 0: score with a moving average of the params (0 = paper)
    c.train.remat = "none"  # none | conv_outputs (recompute BatchNorm/ReLU: less host memory)
    c.train.cpu_scheduler = "memory"  # XLA:CPU op order: memory (less host memory) | default
    c.train.steps_per_call = 4  # steps run by one device call (a loop on device); 1: one each
    c.train.log_every = 20  # steps between metric-log lines
    c.train.checkpoint_every = 200  # steps between checkpoints
    c.train.keep_checkpoints = 3  # number of checkpoints kept

    c.score = ml_collections.ConfigDict()
    c.score.method = "auto"  # msfr (eq. 14) | pixel (|I - I'|) | segment (the head) | msfr_pixel
    # | auto: msfr, and score_options.ALIGNED_METHOD where score.reference applies a reference
    c.score.scales = (1,)  # encoder layers used by MSFR: (1,) finest, 4x4 px; paper (1, 2, 3)
    c.score.normalize = "none"  # none | median (each map / its median; RESULTS.md)
    c.score.reference = "auto"  # none | mean (minus normal per-position mean) | zscore | auto
    # zscore: minus the mean, over the spread; auto: reference.AUTO_KIND for aligned images
    c.score.reference_images = 64  # training images whose maps make the reference
    c.score.stride = 16  # test-time window stride: 64 = paper's grid; 32|16|8 blend overlaps
    c.score.pyramid = (1,)  # image scales scored: 1 as loaded, 2 halved, 4; geometric mean
    c.score.flip = "none"  # none | horizontal (average with the mirrored image's map: 2x work)
    c.score.batch_images = 8  # images scored per device per call
    c.score.weights = "average"  # average (train.ema_decay's, if kept) | last (the last step's)

    c.eval = ml_collections.ConfigDict()
    c.eval.val_fraction = 0.1  # share of train/good held out to calibrate the threshold
    # auto: geomean for maps z-scored per position (aligned images), pastes elsewhere |
    # pastes (GAAGA on held-out) | geomean (sqrt(quantile's x pastes')) | quantile | head (p=.5)
    c.eval.threshold_rule = "auto"
    c.eval.threshold_quantile = 0.999  # quantile rule: this quantile of held-out normal pixels
    c.eval.paste_prior = 0.005  # pastes: assumed share of defect pixels (0: as pasted, floored)
    # the threshold rule sees the held-out maps with the rim (image_score.normal_rim) left out
    # (RESULTS.md, thirty-fifth/sixth sessions: label-free F1 up on 3 of 3 fresh seeds)
    c.eval.threshold_rim = True
    # image score of a map: top (mean of its highest 0.03%) | max | top_inner (top with a rim
    # left out, its width chosen on the held-out normal maps; metrics.json image_rim)
    c.eval.image_score = "top"
    c.eval.held_out_check = True  # metrics of GAAGA pastes on held-out images (no defect label)
    c.eval.max_pictures = 40  # overlay pictures written by evaluate.py
    return c
