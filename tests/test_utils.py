"""Config dictionaries: nested configs from dicts; fields added after caches existed keep earlier cache keys; the
compute device from the environment."""

from dataclasses import dataclass, field

import pytest
import torch

from peft_mcdi.utils import DictConfigMixin, compute_device, stable_hash


@dataclass
class Before(DictConfigMixin):
    lr: float = 1e-3


@dataclass
class After(DictConfigMixin):
    lr: float = 1e-3
    weights: dict = field(default_factory=dict, metadata={"omit_default": True})


def test_a_field_added_with_omit_default_keeps_old_keys_until_set():
    assert After().to_dict() == Before().to_dict()
    assert stable_hash(After().to_dict()) == stable_hash(Before().to_dict())
    changed = After(weights={"head": 2.0})
    assert changed.to_dict() == {"lr": 1e-3, "weights": {"head": 2.0}}
    assert After.from_dict(changed.to_dict()) == changed
    assert After.from_dict(After().to_dict()) == After()


@dataclass
class Outer(DictConfigMixin):
    inner: Before = field(default_factory=lambda: Before(lr=0.5))
    plain: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nested_from_dicts()


def test_nested_configs_given_as_dicts_become_their_classes():
    outer = Outer(inner={"lr": 0.1}, plain={"lr": 0.1})
    assert outer.inner == Before(lr=0.1) and outer.plain == {"lr": 0.1}  # a plain dict field stays a dict
    assert Outer.from_dict(outer.to_dict()) == outer
    with pytest.raises(ValueError, match=r"unknown Before keys \['lrr'\]"):
        Outer(inner={"lrr": 0.1})


def test_the_compute_device_comes_from_the_environment_and_a_bad_name_is_named(monkeypatch):
    monkeypatch.delenv("MCDI_DEVICE", raising=False)
    assert compute_device() == torch.device("cpu")
    monkeypatch.setenv("MCDI_DEVICE", "meta")
    assert compute_device() == torch.device("meta")
    monkeypatch.setenv("MCDI_DEVICE", "gpu")
    with pytest.raises(ValueError, match=r"\$MCDI_DEVICE must name a torch device .* got 'gpu'"):
        compute_device()
