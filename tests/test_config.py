"""The config tree machinery (configtree) with the data section's schema (DataConfig)."""

from __future__ import annotations

import pytest
import yaml

from ark_dist.configtree import apply_overrides, from_dict, load_config, to_dict
from ark_dist.data.config import ARK6, DataConfig, PolicyConfig, StoreConfig, ViewConfig


def write_yaml(tmp_path, data) -> str:
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def load_error(*overrides: str, data: dict | None = None) -> str:
    """The ValueError message of loading `data` plus overrides."""
    with pytest.raises(ValueError) as info:
        from_dict(DataConfig, apply_overrides(data or {}, list(overrides)))
    return str(info.value)


# ---------------------------------------------------------------- defaults and loading


def test_defaults_from_empty_dict():
    cfg = from_dict(DataConfig, {})
    assert cfg == DataConfig()
    # the documented Ark defaults, spelled out
    assert cfg.num_workers == 4 and cfg.store.url == "out/store" and cfg.views.image_size == 224
    assert cfg.datasets == ARK6
    assert cfg.policy("chexpert").uncertain == "lsr" and cfg.policy("chexpert").lsr_range == (0.55, 0.85)
    assert cfg.policy("mimic_cxr") == PolicyConfig(uncertain="ones", blank="zero")
    assert cfg.views.crop_scale == (0.08, 1.0)


def test_defaults_from_none_and_no_file():
    assert from_dict(DataConfig, None) == DataConfig()
    assert load_config(DataConfig) == DataConfig()


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(DataConfig, path) == DataConfig()


def test_yaml_file_and_overrides(tmp_path):
    path = write_yaml(tmp_path, {
        "num_workers": 2,
        "datasets": ["chexpert", "shenzhen"],
        "store": {"url": "/data/store", "retries": 3},
        "views": {"teacher": "whole_image", "crop_scale": [0.2, 0.9]},
    })
    cfg = load_config(DataConfig, path, ["num_workers=8", "store.url=s3://b/p", "views.image_size=768",
                                          "views.load_size=800", "policies.mimic_cxr.uncertain=zeros"])
    assert isinstance(cfg, DataConfig) and isinstance(cfg.store, StoreConfig) and isinstance(cfg.views, ViewConfig)
    assert cfg.num_workers == 8  # override beats the file
    assert cfg.store.url == "s3://b/p"
    assert cfg.store.retries == 3  # the file's sibling key survives an override in the same section
    assert cfg.store.backoff_s == 0.5  # defaults fill what neither gives
    assert cfg.views.image_size == 768 and cfg.views.load_size == 800
    assert cfg.views.teacher == "whole_image"
    assert cfg.views.crop_scale == (0.2, 0.9) and isinstance(cfg.views.crop_scale, tuple)
    assert cfg.datasets == ["chexpert", "shenzhen"]
    assert isinstance(cfg.policies["mimic_cxr"], PolicyConfig)
    assert cfg.policy("mimic_cxr").uncertain == "zeros"
    assert cfg.policy("mimic_cxr").blank == "zero"


def test_override_values_parsed_as_yaml():
    cfg = from_dict(DataConfig, apply_overrides({}, [
        "store.backoff_s=0.25", "views.crop_scale=[0.3, 0.7]", "store.cache_dir=null", "views.ten_crop=true",
        "max_steps_per_round=50", "store.endpoint_url=http://127.0.0.1:9000",
    ]))
    assert cfg.store.backoff_s == 0.25
    assert cfg.views.crop_scale == (0.3, 0.7)
    assert cfg.store.cache_dir is None
    assert cfg.views.ten_crop is True
    assert cfg.max_steps_per_round == 50
    assert cfg.store.endpoint_url == "http://127.0.0.1:9000"


def test_int_accepted_where_float_expected():
    cfg = from_dict(DataConfig, {"store": {"block_mb": 8}})
    assert cfg.store.block_mb == 8.0 and isinstance(cfg.store.block_mb, float)


def test_apply_overrides_on_nested_dict():
    data = {"store": {"url": "a", "retries": 2}}
    out = apply_overrides(data, ["store.url=b", "views.gamma=[0.5, 1.5]", "x=1"])
    assert out == {"store": {"url": "b", "retries": 2}, "views": {"gamma": [0.5, 1.5]}, "x": 1}
    # later overrides win
    assert apply_overrides({}, ["num_workers=1", "num_workers=3"]) == {"num_workers": 3}


@pytest.mark.parametrize("bad", ["num_workers", "num_workers8", "=3", ""])
def test_malformed_override(bad):
    with pytest.raises(ValueError) as info:
        apply_overrides({}, [bad])
    assert repr(bad) in str(info.value)


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(ValueError, match="num_workers"):
        apply_overrides({"num_workers": 4}, ["num_workers.x=1"])


def test_missing_yaml_file(tmp_path):
    missing = tmp_path / "nope" / "data.yaml"
    with pytest.raises(ValueError) as info:
        load_config(DataConfig, missing)
    assert str(missing) in str(info.value)


def test_invalid_yaml_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("store: [unclosed\n")
    with pytest.raises(ValueError) as info:
        load_config(DataConfig, path)
    assert str(path) in str(info.value)


def test_yaml_top_level_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError):
        load_config(DataConfig, path)


# ---------------------------------------------------------------- unknown keys


def test_unknown_top_level_key():
    msg = load_error("numworkers=8")
    assert "numworkers" in msg and "unknown" in msg


def test_unknown_nested_key_names_the_dotted_path():
    msg = load_error("views.imagesize=768")
    assert "views.imagesize" in msg
    msg = load_error("policies.chexpert.uncertian=ones")
    assert "policies.chexpert.uncertian" in msg


def test_unknown_key_from_yaml_file(tmp_path):
    path = write_yaml(tmp_path, {"store": {"url": "x", "endpoint": "http://h"}})
    with pytest.raises(ValueError) as info:
        load_config(DataConfig, path)
    assert "store.endpoint" in str(info.value)


# ---------------------------------------------------------------- wrong types


@pytest.mark.parametrize("override, key", [
    ("num_workers=abc", "num_workers"),
    ("num_workers=true", "num_workers"),      # a bool is not an int here
    ("num_workers=2.5", "num_workers"),
    ("views.crop_scale=[1]", "views.crop_scale"),
    ("views.crop_scale=0.5", "views.crop_scale"),
    ("views.crop_scale=[0.1, x]", "views.crop_scale"),
    ("views.ten_crop=1", "views.ten_crop"),
    ("store.url=5", "store.url"),
    ("store.retries=[3]", "store.retries"),
    ("datasets=chexpert", "datasets"),
    ("store=s3://b", "store"),
    ("policies=[chexpert]", "policies"),
    ("store.block_mb=false", "store.block_mb"),
])
def test_wrong_type_names_the_key(override, key):
    assert key in load_error(override)


@pytest.mark.parametrize("override, key", [
    ("max_steps_per_round=abc", "max_steps_per_round"),   # int | None
    ("store.endpoint_url=5", "store.endpoint_url"),       # str | None
    ("store.cache_dir=[1]", "store.cache_dir"),           # str | None
])
def test_wrong_type_of_optional_field_names_the_key(override, key):
    assert key in load_error(override)


def test_optional_fields_accept_none_and_value():
    assert from_dict(DataConfig, {"max_steps_per_round": None}).max_steps_per_round is None
    assert from_dict(DataConfig, {"store": {"cache_dir": "/tmp/c"}}).store.cache_dir == "/tmp/c"


# ---------------------------------------------------------------- impossible values


@pytest.mark.parametrize("override, names", [
    ("num_workers=-1", "num_workers"),
    ("policies.chexpert.lsr_range=[0.9, 0.2]", "policies.chexpert"),
    ("policies.chexpert.lsr_range=[0.2, 1.5]", "policies.chexpert"),
    ("default_policy.lsr_range=[-0.1, 0.5]", "default_policy"),
    ("views.photometric_p=2", "photometric_p"),
    ("views.shift_scale_rotate_p=-0.5", "shift_scale_rotate_p"),
    ("views.crop_scale=[0.5, 0.2]", "crop_scale"),
    ("views.image_size=8", "image_size"),
    ("store.retries=0", "retries"),
    ("prefetch_factor=0", "prefetch_factor"),
    ("max_steps_per_round=0", "max_steps_per_round"),
    ("datasets=[]", "datasets"),
    ("datasets=[chexpert, chexpert]", "datasets"),
])
def test_impossible_value_names_the_key_or_section(override, names):
    assert names in load_error(override)


def test_photometric_p_boundaries_accepted():
    cfg = from_dict(DataConfig, apply_overrides({}, ["views.photometric_p=0", "views.shift_scale_rotate_p=1"]))
    assert cfg.views.photometric_p == 0.0 and cfg.views.shift_scale_rotate_p == 1.0


# ---------------------------------------------------------------- Literal fields


@pytest.mark.parametrize("override, key, allowed", [
    ("policies.mimic_cxr.uncertain=maybe", "policies.mimic_cxr.uncertain", ["ones", "zeros", "lsr", "masked"]),
    ("default_policy.blank=ignore", "default_policy.blank", ["zero", "masked"]),
    ("default_policy.readers=all", "default_policy.readers", ["any", "majority"]),
    ("views.teacher=student", "views.teacher", ["same_geometry", "whole_image"]),
])
def test_literal_rejects_and_lists_allowed(override, key, allowed):
    msg = load_error(override)
    assert key in msg
    for value in allowed:
        assert value in msg


@pytest.mark.parametrize("value", ["ones", "zeros", "lsr", "masked"])
def test_literal_accepts_each_allowed(value):
    cfg = from_dict(DataConfig, apply_overrides({}, [f"default_policy.uncertain={value}"]))
    assert cfg.default_policy.uncertain == value


# ---------------------------------------------------------------- round trip


def test_to_dict_is_plain_data():
    d = to_dict(DataConfig())
    assert d["views"]["crop_scale"] == [0.08, 1.0]  # tuples become lists
    assert d["policies"] == {"chexpert": {"uncertain": "lsr", "lsr_range": [0.55, 0.85], "blank": "zero",
                                          "readers": "any"}}
    assert d["store"]["cache_dir"] is None and d["num_workers"] == 4
    # survives a YAML dump and load unchanged
    assert yaml.safe_load(yaml.safe_dump(d)) == d


def test_round_trip_defaults_and_changed():
    cfg = DataConfig()
    assert to_dict(from_dict(DataConfig, to_dict(cfg))) == to_dict(cfg)
    assert from_dict(DataConfig, to_dict(cfg)) == cfg
    changed = load_config(DataConfig, None, [
        "num_workers=0", "store.url=s3://b/p", "views.image_size=768", "views.load_size=768",
        "views.crop_scale=[0.3, 0.6]", "policies.mimic_cxr.uncertain=masked", "policies.vindr_cxr.readers=majority",
        "datasets=[vindr_cxr, chexpert]", "max_steps_per_round=100",
    ])
    assert changed != cfg
    assert to_dict(from_dict(DataConfig, to_dict(changed))) == to_dict(changed)
    assert from_dict(DataConfig, to_dict(changed)) == changed


def test_round_trip_through_yaml_file(tmp_path):
    cfg = load_config(DataConfig, None, ["views.teacher=whole_image", "policies.chexpert.lsr_range=[0.6, 0.8]"])
    path = write_yaml(tmp_path, to_dict(cfg))
    assert load_config(DataConfig, path) == cfg


def test_a_policy_override_keeps_the_other_datasets_defaults():
    from ark_dist.configtree import load_config
    from ark_dist.data.config import DataConfig

    cfg = load_config(DataConfig, None, ["policies.mimic_cxr.uncertain=zeros"])
    assert cfg.policy("mimic_cxr").uncertain == "zeros"
    assert cfg.policy("chexpert").uncertain == "lsr", "Ark's CheXpert default survives an override of another dataset"


def test_an_empty_yaml_section_accepts_overrides(tmp_path):
    from ark_dist.configtree import load_config
    from ark_dist.data.config import DataConfig

    path = tmp_path / "c.yaml"
    path.write_text("views:\nnum_workers: 3\n")
    cfg = load_config(DataConfig, path, ["views.image_size=768", "views.load_size=896"])
    assert cfg.views.image_size == 768 and cfg.num_workers == 3


def test_exponent_floats_from_yaml_are_numbers():
    from ark_dist.config import load

    assert load(None, ["optim.min_lr=1e-5"]).optim.min_lr == 1e-5
    with pytest.raises(ValueError, match="optim.lr"):
        load(None, ["optim.lr=fast"])


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).resolve().parents[1].glob("configs/*.yaml")))
def test_every_recipe_in_configs_loads_and_validates(path):
    from ark_dist.config import Config, load

    assert isinstance(load(path), Config)


def test_local_paths_become_absolute_for_workers(tmp_path, monkeypatch):
    from ark_dist.config import load

    monkeypatch.chdir(tmp_path)
    cfg = load(None, ["data.store.url=out/store", "train.storage_path=s3://bucket/runs"])
    assert cfg.data.store.url == str(tmp_path / "out" / "store")
    assert cfg.train.storage_path == "s3://bucket/runs"
