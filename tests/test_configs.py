"""Every shipped config loads, validates and sets what its dataset needs."""

import importlib

import pytest

from cmaae_jax import configlib, datasets


@pytest.mark.parametrize("name", ["default", "demo", "wood", "carpet", "magnetic_tile"])
def test_config_validates(name):
    c = importlib.import_module(f"configs.{name}").get_config()
    configlib.validate(c)
    assert c.data.image_size % 64 == 0


def test_dagm_config_takes_the_class():
    from configs import dagm

    assert dagm.get_config("7").data.category == "Class7"
    assert dagm.get_config().data.format == "dagm"


def test_dataset_configs_change_only_a_few_fields():
    from configs import default, wood

    d, w = default.get_config().to_dict(), wood.get_config().to_dict()
    changed = [(s, k) for s in d for k in d[s] if d[s][k] != w[s][k]]
    assert sorted(changed) == [
        ("anomaly", "natural_source"),
        ("data", "category"),
        ("data", "root"),
    ]


def test_folder_config_is_the_default_with_real_photographs_and_asks_for_its_root(tmp_path):
    from configs import default, folder

    d, f = default.get_config().to_dict(), folder.get_config().to_dict()
    changed = [(s, k) for s in d for k in d[s] if d[s][k] != f[s][k]]
    assert sorted(changed) == [("anomaly", "natural_source"), ("data", "format")]
    assert f["anomaly"]["natural_source"] == "skimage" and f["data"]["format"] == "folder"
    configlib.validate(folder.get_config())
    with pytest.raises(datasets.DatasetError, match="data.root is empty"):
        datasets.check_eval_files(folder.get_config())  # what train.train does first
