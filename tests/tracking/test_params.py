"""Params come only from the allow-list and only as stable primitive values."""

from __future__ import annotations

import pytest

from medzsad.tracking import config_hash, select_params
from medzsad.tracking.params import is_allowed_key, param_value

from .helpers import CONFIG_DICT


def test_select_params_keeps_allowed_primitives_only() -> None:
    params = select_params(CONFIG_DICT)
    assert params == {
        "seed": "111",
        "method.name": "anomalyclip",
        "method.prompt_length": "12",
        "method.depth": "9",
        "method.features": "[6, 12, 18, 24]",
        "data.image_size": "518",
        "data.name": "brainmri",
        "train.epochs": "15",
        "train.lr": "0.001",
    }
    # data.root (a path), the object repr and the section outside the allow-list are absent.


def test_path_and_secret_like_keys_are_denied_in_allowed_sections() -> None:
    assert is_allowed_key("train.lr")
    for key in ("train.output_dir", "model.weights_path", "eval.cache_root", "data.root", "method.hmac_salt"):
        assert not is_allowed_key(key), key


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
