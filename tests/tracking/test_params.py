"""Params: generated from the engine's typed config, allow-listed, stable primitive values."""

from __future__ import annotations

from pathlib import Path

import pytest

from medzsad.engine.config import load_config, method_config_for, read_yaml
from medzsad.engine.jobs import run_params
from medzsad.tracking import Purpose, config_hash, select_params
from medzsad.tracking.params import is_allowed_key, param_value

from .helpers import CONFIG_DICT

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_select_params_keeps_allowed_primitives_only() -> None:
    params = select_params(CONFIG_DICT)
    assert params == {
        "method": "anomalyclip",
        "method_config.prompt_length": "12",
        "method_config.depth": "9",
        "method_config.features": "[6, 12, 18, 24]",
        "backbone.model_name": "ViT-L-14-336",
        "data.ct_window": "[40.0, 80.0]",
        "data.split": "test",
        "train.epochs": "15",
        "train.lr": "0.001",
    }
    # data.test (paths), backbone.weights_path, the object repr and the unknown section are absent.


def test_path_and_secret_like_keys_are_denied_in_allowed_sections() -> None:
    assert is_allowed_key("train.lr") and is_allowed_key("method_config.alpha")
    for key in ("train.output_dir", "backbone.weights_path", "eval.cache_root", "data.test", "data.train_root"):
        assert not is_allowed_key(key), key


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_file_logs_its_method_config_as_params(path: Path) -> None:
    config = load_config(path)
    evaluation = run_params(config, Purpose.ZERO_SHOT_EVAL)
    written = read_yaml(path).get("method_config", {})
    every = set(vars(method_config_for(config)))  # the defaults the file leaves out are settings too
    assert written and set(written) <= every
    for key in every:
        assert f"method_config.{key}" in evaluation, key
    for key, value in written.items():
        assert param_value(evaluation[f"method_config.{key}"]) == param_value(value) or str(
            evaluation[f"method_config.{key}"]
        ).startswith("sha256:"), key
    assert evaluation["data.ct_window"] == config.data.ct_window and evaluation["backbone.model_name"]
    assert not any(k.startswith("train.") for k in evaluation), "no training params on an evaluation run"
    assert "backbone.image_size" not in evaluation
    training = run_params(config, Purpose.AUX_TRAIN)
    assert "train.epochs" in training and not any(k.startswith("eval.") for k in training)
    for params in (evaluation, training):
        for key, value in params.items():
            assert is_allowed_key(key), key
            param_value(value)  # a stable primitive MLflow can show


@pytest.mark.parametrize("value", [object(), {"a": 1}, [object()], "<Foo object at 0x7f00aa>", "x" * 300])
def test_non_primitive_values_are_refused(value: object) -> None:
    with pytest.raises(TypeError):
        param_value(value)


def test_config_hash_is_stable_and_order_free() -> None:
    a = {"x": 1, "y": {"b": 2, "a": 3}}
    b = {"y": {"a": 3, "b": 2}, "x": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "x": 2})
    assert len(config_hash(a)) == 64
