"""The ConfigStore entries: names, defaults against the constructors, no collisions."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from torchrl_offline import registry
from torchrl_offline.configs import (
    DATASET_CONFIGS,
    LOSS_CONFIGS,
    ConfigError,
    OfflineTrainerConfig,
    config_entries,
    register_configs,
)
from torchrl_offline.trainers.offline import OfflineTrainer, train

# Config fields that are not constructor arguments, per kind.
_LOSS_EXTRA = {"gamma", "algorithm"}  # make_value_estimator's; make_loss's
_NOT_FIELDS = {"self", "kwargs"}


def _fresh_store() -> ConfigStore:
    cs = object.__new__(ConfigStore)
    cs.__init__()
    return cs


def _fields(cls) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        if f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        elif f.default is dataclasses.MISSING:
            out[f.name] = MISSING
        else:
            out[f.name] = f.default
    return out


def _params(fn, *, follow_kwargs_to=None) -> dict[str, inspect.Parameter]:
    params = {
        name: p
        for name, p in inspect.signature(fn).parameters.items()
        if name not in _NOT_FIELDS and p.kind is not p.VAR_KEYWORD
    }
    if follow_kwargs_to is not None:
        for name, p in _params(follow_kwargs_to).items():
            params.setdefault(name, p)
    return params


def _same(config_default, ctor_default) -> bool:
    if ctor_default is inspect.Parameter.empty:
        return config_default is MISSING or config_default is None
    if isinstance(ctor_default, torch.dtype):
        return getattr(torch, config_default) is ctor_default
    if isinstance(ctor_default, tuple):
        return tuple(config_default) == ctor_default
    if isinstance(ctor_default, float):
        return config_default == pytest.approx(ctor_default, rel=1e-12)
    return config_default == ctor_default and type(config_default) is type(ctor_default)


def test_every_registered_loss_has_a_stored_config():
    cs = register_configs()
    assert set(registry.BUILTIN_ALGORITHMS) == set(LOSS_CONFIGS)
    for name in registry.names("algorithm"):
        assert f"offline_{name}.yaml" in cs.repo["loss"], name


@pytest.mark.parametrize("name", sorted(LOSS_CONFIGS))
def test_loss_config_defaults_equal_the_constructor(name):
    cls = registry.get("loss", name)
    # a constructor taking **kwargs passes them to its base class's
    takes_kwargs = any(
        p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()
    )
    follow = cls.__mro__[1].__init__ if takes_kwargs else None
    params = _params(cls.__init__, follow_kwargs_to=follow)
    fields = _fields(LOSS_CONFIGS[name])
    assert set(fields) - _LOSS_EXTRA == set(params) - _LOSS_EXTRA
    # every loss with target networks has a value estimator
    assert ("gamma" in fields) == registry.get("algorithm", name).target_update
    assert fields["algorithm"] == name
    for key, param in params.items():
        if key not in fields:  # gamma of the constructors that still take it
            continue
        if key.endswith("_network"):
            assert fields[key] is None  # networks come from other configs
            continue
        assert _same(fields[key], param.default), (name, key, fields[key], param.default)


@pytest.mark.parametrize(
    "name, loader",
    [
        ("minari", "torchrl_offline.data.minari:load_minari"),
        ("logged", "torchrl_offline.data.logged:from_logged"),
        ("collect", "torchrl_offline.data.collect:collect_dataset"),
    ],
)
def test_dataset_config_defaults_equal_the_loader(name, loader):
    module, _, attr = loader.partition(":")
    fn = getattr(__import__(module, fromlist=[attr]), attr)
    params = _params(fn)
    if name == "collect":  # then loaded with load_minari
        from torchrl_offline.data.minari import load_minari

        for key in ("batch_size", "sampler", "transform", "dtype", "one_hot_actions", "cache_dir"):
            params[key] = inspect.signature(load_minari).parameters[key]
        params["reuse_existing"] = inspect.Parameter(
            "reuse_existing", inspect.Parameter.KEYWORD_ONLY, default=True
        )
    fields = _fields(DATASET_CONFIGS[name])
    assert set(fields) == set(params)
    for key, param in params.items():
        assert _same(fields[key], param.default), (name, key, fields[key], param.default)


def test_trainer_config_defaults_equal_offline_trainer():
    params = _params(OfflineTrainer.__init__)
    fields = _fields(OfflineTrainerConfig)
    assert set(params) <= set(fields)
    as_in_train = {"eval_env", "eval_interval", "eval_episodes", "eval_max_steps", "resume"}
    as_in_train |= {"checkpoint_interval", "keep_checkpoints"}
    extra = {"lr", "tau", "hooks", "checkpoint_dir", "model_rollouts", "td_lambda"}
    assert set(fields) - set(params) == extra | as_in_train
    train_params = _params(train)
    for key in as_in_train:
        params[key] = train_params[key]
    for key, param in params.items():
        assert _same(fields[key], param.default), (key, fields[key], param.default)


def test_names_do_not_collide_with_torchrl(monkeypatch):
    from torchrl.trainers.algorithms import configs as torchrl_configs

    cs = _fresh_store()
    monkeypatch.setattr(ConfigStore, "instance", staticmethod(lambda: cs))
    torchrl_configs._register_configs()

    def entries():
        return {(g, n) for g, group in cs.repo.items() if isinstance(group, dict) for n in group}

    theirs = entries()
    register_configs(cs)
    ours = {(g, f"{n}.yaml") for g, n, _ in config_entries()}
    assert not ours & theirs
    assert entries() == theirs | ours
    # TorchRL's entries in the groups we share are still TorchRL's
    for group, name in [("loss", "iql"), ("loss", "cql"), ("trainer", "iql"), ("trainer", "cql")]:
        assert cs.repo[group][f"{name}.yaml"].node["_target_"].startswith("torchrl.")
    assert cs.repo["replay_buffer"]["base.yaml"].node["_target_"].startswith("torchrl.")


def test_register_is_idempotent_and_refuses_foreign_entries():
    cs = _fresh_store()
    register_configs(cs)
    register_configs(cs)
    # every registered algorithm's (ours, and any another test or package registered)
    assert len(cs.repo["loss"]) == len(registry.names("algorithm")) >= len(LOSS_CONFIGS)

    foreign = _fresh_store()
    foreign.store(group="loss", name="offline_iql", node={"_target_": "somebody.else.Loss"})
    with pytest.raises(ConfigError, match=r"loss/offline_iql.*somebody\.else\.Loss"):
        register_configs(foreign)


def test_importing_the_package_does_not_need_hydra():
    code = "import sys, torchrl_offline, torchrl_offline.trainers; print('hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
