"""Config files inherit through ``_BASE_``: the dataset configs state only what differs from the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from handclip.config import Config, load_config
from handclip.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_child_keys_lay_over_the_base_section_by_section(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\nstage2: {epochs: 40, lr: 1.0e-5}\nmodel: {n_ctx: 4}\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nname: child\nstage2: {epochs: 7}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.seed, cfg.stage2.epochs, cfg.stage2.lr) == ("child", 3, 7, 1e-5)


def test_bases_chain_and_later_bases_win(tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 1\nstage1: {epochs: 10}\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\nseed: 2\n")
    (tmp_path / "c.yaml").write_text("stage1: {epochs: 30}\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "d.yaml").write_text("_BASE_: [../b.yaml, ../c.yaml]\nname: d\n")  # relative to the file
    cfg = load_config(sub / "d.yaml", ["stage1.lr=0.001"])
    assert (cfg.seed, cfg.stage1.epochs, cfg.stage1.lr, cfg.name) == (2, 30, 0.001, "d")


def test_missing_and_cyclic_bases_are_one_clear_error(tmp_path):
    (tmp_path / "child.yaml").write_text("_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml.*the _BASE_ of .*child\.yaml"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "x.yaml").write_text("_BASE_: y.yaml\n")
    (tmp_path / "y.yaml").write_text("_BASE_: x.yaml\n")
    with pytest.raises(ConfigError, match="names itself as a base"):
        load_config(tmp_path / "x.yaml")
    (tmp_path / "bad.yaml").write_text("_BASE_: {a: 1}\n")
    with pytest.raises(ConfigError, match="_BASE_ must be"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("name", ["11k_dorsal_r_vitb16", "11k_dorsal_l_vitb16", "11k_palmar_r_vitb16",
                                  "11k_palmar_l_vitb16", "hd_vitb16"])
def test_dataset_configs_state_only_their_differences(name):
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert raw["_BASE_"] == "clipreid_vitb16.yaml"
    assert set(raw) <= {"_BASE_", "name", "data"}, set(raw)
    assert set(raw["data"]) <= {"dataset", "root", "aspect"}
    cfg = load_config(CONFIGS / f"{name}.yaml", ["data.root=/data"])
    base = load_config(CONFIGS / "clipreid_vitb16.yaml")
    assert cfg.stage2 == base.stage2 and cfg.stage1 == base.stage1 and cfg.model == base.model
    assert cfg.name == name and cfg.data.dataset == raw["data"]["dataset"]


def test_the_recipe_file_states_the_built_in_defaults():
    """clipreid_vitb16.yaml writes the recipe out; apart from its validation interval it is the defaults."""
    recipe = load_config(CONFIGS / "clipreid_vitb16.yaml").to_dict()
    defaults = Config().to_dict()
    recipe["stage2"].pop("eval_every"), defaults["stage2"].pop("eval_every")
    assert recipe == defaults
