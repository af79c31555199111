"""cmaae_jax/benchmark.py at a tiny size: one JSON object with the documented keys, sane values."""

import json
import os

import pytest

from cmaae_jax import benchmark
from configs import default

KEYS = (
    "train_patches_per_s",
    "train_step_s_median",
    "train_step_cpu_s_median",
    "infer_ms_per_image_median",
    "peak_rss_mb",
    "compile_s",
    "device_kind",
    "device_count",
    "gaaga_images_per_s",
    "train_step_gflop",
    "msfr_gflop_per_image",
    "matmul_f32_gflops",
    "train_gflops",
    "msfr_gflops",
)


def test_benchmark_json_has_the_keys_and_sane_values():
    options = benchmark.Options(
        batch=8, steps=1, warmup=1, image_size=128, infer_images=1, infer_batch=2,
        gaaga_batch=2, gaaga_steps=1, memory=16,
    )  # fmt: skip
    result = benchmark.run(options, default.get_config())
    assert json.loads(json.dumps(result)) == result  # one JSON object
    for key in KEYS:
        assert key in result, key
    assert result["batch"] == 8 and result["image_size"] == 128
    assert result["device_count"] >= 1 and isinstance(result["device_kind"], str)
    assert 0 < result["train_step_s_median"] < 600
    assert result["train_patches_per_s"] > 0
    # the compiling call, 1 warm-up and 1 timed call of 4 steps each; times are per step
    assert result["train_steps_per_call"] == 4 and result["train_steps_done"] == 3 * 4
    assert len(result["train_step_s_all"]) == 1
    assert 0 <= result["compile_s"] < 600
    assert result["compilation_cache"] == os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    assert 0 < result["infer_ms_per_image_median"] < 600_000
    assert result["infer_batched_batch"] == 2
    assert result["gaaga_images_per_s"] > 0
    assert result["peak_rss_mb"] >= result["train_peak_rss_mb"] > 0
    assert result["run_peak_rss_mb"] >= result["peak_rss_mb"]  # the batched maps come after


def test_benchmark_rejects_a_batch_that_does_not_split_over_devices():
    import jax

    if jax.local_device_count() == 1:
        pytest.skip("needs several devices")
    with pytest.raises(SystemExit, match="multiple of"):
        options = benchmark.Options(batch=jax.local_device_count() + 1, skip_infer=True)
        benchmark.run(options, default.get_config())


def test_conv_macs_by_hand():
    # Table I on a 64x64 patch, MACs = output pixels x cout x k*k x cin, layer by layer:
    encoder = (
        32 * 32 * 32 * 16 * 3  # conv1 4x4 s2: 64 -> 32
        + 32 * 32 * 32 * 9 * 32  # conv2 3x3 s1
        + 16 * 16 * 64 * 16 * 32  # conv3: 32 -> 16
        + 8 * 8 * 128 * 16 * 64  # conv4: 16 -> 8
        + 4 * 4 * 256 * 16 * 128  # conv5: 8 -> 4
        + 1 * 1 * 512 * 16 * 256  # conv6 4x4 valid: 4 -> 1
    )
    # transposed convs, MACs = input pixels x cin x cout x k*k:
    decoder = (
        1 * 512 * 256 * 16  # 1 -> 4
        + 16 * 256 * 128 * 16  # 4 -> 8
        + 64 * 128 * 64 * 16  # 8 -> 16
        + 256 * 64 * 32 * 16  # 16 -> 32
        + 1024 * 32 * 32 * 9  # 3x3 stride 1 at 32x32
        + 1024 * 32 * 3 * 16  # 32 -> 64
    )
    assert benchmark.conv_macs(64) == encoder + decoder == 2 * 38_273_024
    # MSFR features: encoder layers 1-3 on a 512x512 image.
    feats = 256 * 256 * 32 * 48 + 256 * 256 * 32 * 288 + 128 * 128 * 64 * 512
    assert benchmark.conv_macs(512, encoder_layers=3) == feats
