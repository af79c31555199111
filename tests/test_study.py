"""The study's pure parts: variant overrides and the per-defect-type table."""

import numpy as np
import pytest

from cmaae_jax import study


def test_variant_config_overrides():
    from configs import study as study_config

    base = study_config.get_config()
    one = study.variant_config(base, "one_stage", 3)
    assert one.train.seed == 3 and one.train.stage2_steps == 0
    assert one.train.stage1_steps == base.train.stage1_steps + base.train.stage2_steps
    pix = study.variant_config(base, "ae_pixel", 0)  # scored from the ae checkpoints
    assert (pix.model.variant, pix.score.method) == ("ae", "pixel")
    assert base.model.variant == "cmam" and base.train.seed != 3  # base untouched


def test_type_table_means_over_seeds():
    def rec(variant, seed, blow, crack):
        keys = dict.fromkeys(study.KEYS, 0.0)
        per = {"blowhole": {**keys, "pixel_auroc": blow}, "crack": {**keys, "pixel_auroc": crack}}
        return {"variant": variant, "seed": seed, "per_type": per}

    records = [rec("ae", 0, 0.5, 0.7), rec("full", 0, 0.8, 0.6), rec("full", 1, 0.9, 0.4)]
    lines = study.type_table(records).splitlines()
    assert lines[0] == "| variant | blowhole | crack |"
    assert lines[2] == "| full | 0.850 | 0.500 |"  # VARIANTS order: full before ae
    assert lines[3] == "| ae | 0.500 | 0.700 |"
    assert study.type_table([{"variant": "full", "seed": 0}]) == ""


def test_budget_suffix_scales_both_stages():
    from configs import study as study_config

    base = study_config.get_config()
    quarter = study.variant_config(base, "ae@0.25", 1)
    assert quarter.model.variant == "ae" and quarter.train.seed == 1
    assert quarter.train.stage1_steps == round(base.train.stage1_steps / 4)
    assert quarter.train.stage2_steps == round(base.train.stage2_steps / 4)
    assert study.split_name("full") == ("full", 1.0)
    study.check_names(["full@2", "ae_pixel@0.5"])
    with pytest.raises(ValueError, match="unknown variants"):
        study.check_names(["nonsense@2"])
    with pytest.raises(ValueError, match="must be a number"):
        study.check_names(["full@x"])


def test_budget_curves_mean_over_seeds_sorted_by_patches():
    def rec(variant, seed, steps, value):
        per = {"crack": dict.fromkeys(study.KEYS, value)}
        return {"variant": variant, "seed": seed, "steps": steps, "batch_size": 64, "per_type": per}

    records = [
        rec("ae@2", 0, [20, 10], 0.6),
        rec("ae@0.5", 0, [5, 2], 0.2),
        rec("ae@0.5", 1, [5, 2], 0.4),
        rec("full", 0, [10, 5], 0.9),  # one budget only: no curve
    ]
    curves = study.budget_curves(records)
    assert list(curves) == ["ae"]
    np.testing.assert_allclose(curves["ae"]["crack"], [(7 * 64, 0.3), (30 * 64, 0.6)])
