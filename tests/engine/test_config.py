"""Configs fail before any work starts, naming the key."""

from __future__ import annotations

import pytest

from medzsad.engine.config import ConfigError, load_config


def test_defaults_are_the_official_anomalyclip_settings():
    config = load_config()
    assert config.method == "anomalyclip"
    assert (config.train.epochs, config.train.batch_size, config.train.lr, config.train.seed) == (15, 8, 1e-3, 111)
    assert config.train.betas == [0.5, 0.999]
    assert config.backbone.model_name == "ViT-L-14-336" and config.backbone.pretrained == "openai"


def test_overrides_are_typed_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nmethod_config:\n  sigma: 2\n")
    config = load_config(path, ["train.batch_size=4", "data.test=[a,b]", "backbone.pretrained=null"])
    assert config.train.epochs == 3 and config.train.batch_size == 4
    assert config.data.test == ["a", "b"]
    assert config.backbone.pretrained is None
    assert config.method_config == {"sigma": 2}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epochz=3"], "unknown config key train.epochz"),
        (["train.epochs=ten"], "train.epochs: expected int"),
        (["method=nosuchmethod"], "unknown method 'nosuchmethod'"),
        (["method_config.n_ctx=x"], "method_config.n_ctx: expected int"),
        (["method_config.bogus=1"], "unknown config key method_config.bogus"),
        (["eval.precision=fp8"], "eval.precision"),
        (["eval.num_workers=-1"], "eval.num_workers: expected a number of processes"),
        (["eval.pixel_bins=1"], "eval.pixel_bins: expected at least 2 levels"),
        (["eval.pixel_bins=256", "eval.aupro_compat=true"], "eval.pixel_bins: the compatibility AUPRO"),
        (["train.resume=maybe"], "train.resume: expected true or false"),
        (["train"], "must look like key.subkey=value"),
    ],
)
def test_bad_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_method_config_check_becomes_a_config_error():
    with pytest.raises(ConfigError, match=r"method_config: .*prior_token_selection"):
        load_config(None, ["method=faprompt", "method_config.prior_token_selection=best"])


def test_loader_workers_are_automatic_on_a_gpu_only():
    import torch

    from medzsad.engine.runtime import loader_workers

    assert loader_workers(None, torch.device("cpu")) == 0  # workers would take the model's cores
    assert 0 <= loader_workers(None, torch.device("cuda")) <= 8
    assert loader_workers(3, torch.device("cpu")) == 3
    assert load_config(None, []).eval.num_workers is None
