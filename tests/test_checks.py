"""The shared argument checks and the ``Config`` base class every configuration derives from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from minitspeft.checks import check_int, check_number, is_int, is_number
from minitspeft.config import Config
from minitspeft.nn import TransformerConfig
from minitspeft.peft import AdapterConfig, GateConfig, LoraConfig


def test_is_int_and_is_number_refuse_bools_and_non_finite_values():
    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert is_number(0.5) and is_number(np.float32(2)) and is_number(4)
    assert not any(is_number(v) for v in (True, float("nan"), float("inf"), "1", None))


@pytest.mark.parametrize("value, ok", [(0, True), (0.999, True), (1, False), (-0.1, False), (None, False)])
def test_check_number_half_open_interval(value, ok):
    if ok:
        check_number("Op", "p", value, 0, 1, high_open=True)
    else:
        with pytest.raises(ValueError, match=r"Op: p must be in \[0, 1\), got"):
            check_number("Op", "p", value, 0, 1, high_open=True)


def test_check_int_names_the_bound_and_allows_none_only_when_asked():
    check_int("Op", "n", None, allow_none=True)
    with pytest.raises(ValueError, match="Op: n must be an integer >= 2, got 1"):
        check_int("Op", "n", 1, low=2)
    with pytest.raises(ValueError, match="integer >= 1, got None"):
        check_int("Op", "n", None)


@pytest.mark.parametrize("cls", [LoraConfig, AdapterConfig, GateConfig, TransformerConfig])
def test_every_config_is_a_config_and_round_trips_through_a_dict(cls):
    config = cls()
    assert isinstance(config, Config)
    assert cls.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("cls, change", [
    (LoraConfig, {"r": 0}), (AdapterConfig, {"placement": "middle"}), (GateConfig, {"temperature": -1.0}),
    (TransformerConfig, {"n_head": 3}),
])
def test_replace_and_from_dict_check_the_fields_again(cls, change):
    config = cls()
    with pytest.raises(ValueError, match=cls.__name__):
        config.replace(**change)
    with pytest.raises(ValueError, match=cls.__name__):
        cls.from_dict({**config.to_dict(), **change})


def test_unknown_and_missing_fields_are_named():
    with pytest.raises(ValueError, match=r"unknown fields \['rank'\]"):
        LoraConfig.from_dict({"rank": 4})
    with pytest.raises(ValueError, match=r"unknown fields \['rank'\]"):
        LoraConfig().replace(rank=4)

    @dataclass
    class Needs(Config):
        size: int

    with pytest.raises(ValueError, match=r"missing fields \['size'\]"):
        Needs.from_dict({})
