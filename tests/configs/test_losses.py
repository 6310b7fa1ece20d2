"""Every loss config builds its loss from TorchRL model configs (or modules) and runs."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.data import Bounded
from torchrl.trainers.algorithms.configs import (
    MLPConfig,
    QValueModelConfig,
    TanhModuleConfig,
    TanhNormalModelConfig,
    TensorDictModuleConfig,
    TensorDictSequentialConfig,
    ValueModelConfig,
)

from torchrl_offline import registry
from torchrl_offline.configs import (
    LOSS_CONFIGS,
    BehaviorVAEConfig,
    CategoricalActorConfig,
    TanhMeanGaussianActorConfig,
    default_loss_components,
)
from torchrl_offline.configs.common import ConfigError, as_action_spec

OBS, ACT, N_ACTIONS, BATCH = 3, 2, 3, 8


def _mlp(n_in: int, n_out: int) -> MLPConfig:
    return MLPConfig(in_features=n_in, out_features=n_out, num_cells=[8])


def _batch(discrete: bool) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    if discrete:
        action = torch.randint(N_ACTIONS, (BATCH,), generator=g)
    else:
        action = torch.rand(BATCH, ACT, generator=g) * 2 - 1
    return TensorDict(
        {
            "observation": torch.randn(BATCH, OBS, generator=g),
            "action": action,
            "action_log_prob": torch.full((BATCH,), 1.0 / N_ACTIONS).log(),  # a uniform logger
            "mc_return": torch.randn(BATCH, 1, generator=g),  # the derived entries
            "mc_tail_discount": torch.full((BATCH, 1), 0.5),
            "mc_tail_observation": torch.randn(BATCH, OBS, generator=g),
            "model_data": torch.arange(BATCH) % 2 == 1,  # the model-rollout trainers' marks
            "next": {
                "action": action.flip(0),
                "observation": torch.randn(BATCH, OBS, generator=g),
                "reward": torch.randn(BATCH, 1, generator=g),
                "done": torch.zeros(BATCH, 1, dtype=torch.bool),
                "terminated": torch.zeros(BATCH, 1, dtype=torch.bool),
            },
        },
        [BATCH],
    )


TANH_NORMAL = TanhNormalModelConfig(network=_mlp(OBS, 2 * ACT), return_log_prob=True)
Q_SA = ValueModelConfig(network=_mlp(OBS + ACT, 1), in_keys=["observation", "action"])
V_S = ValueModelConfig(network=_mlp(OBS, 1), in_keys=["observation"])
Q_S = ValueModelConfig(
    network=_mlp(OBS, N_ACTIONS), in_keys=["observation"], out_keys=["action_value"]
)
CATEGORICAL = CategoricalActorConfig(network=_mlp(OBS, N_ACTIONS))
PAPER_GAUSSIAN = TanhMeanGaussianActorConfig(
    observation_dim=OBS, action_spec={"low": -1.0, "high": 1.0, "shape": [ACT]}, num_cells=[8]
)
DETERMINISTIC = TensorDictSequentialConfig(
    modules=[
        TensorDictModuleConfig(module=_mlp(OBS, ACT), in_keys=["observation"], out_keys=["param"]),
        TanhModuleConfig(in_keys=["param"], out_keys=["action"], low=-1.0, high=1.0),
    ]
)
ENSEMBLE = {
    "actor_network": TANH_NORMAL,
    "qvalue_network": Q_SA,
    "action_spec": {"low": -1.0, "high": 1.0, "shape": [ACT]},
}

BEHAVIOR_VAE = BehaviorVAEConfig(
    observation_dim=OBS, action_spec={"low": -1.0, "high": 1.0, "shape": [ACT]}, num_cells=[8]
)
PERTURBATION = TensorDictModuleConfig(
    module=_mlp(OBS + ACT, ACT), in_keys=["observation", "action"], out_keys=["perturbation"]
)

# name -> (fields, whether actions are discrete); networks are TorchRL model configs
CASES = {
    "bcq": (
        {"actor_network": PERTURBATION, "qvalue_network": Q_SA, "behavior_network": BEHAVIOR_VAE},
        False,
    ),
    "bear": (
        {"actor_network": TANH_NORMAL, "qvalue_network": Q_SA, "behavior_network": BEHAVIOR_VAE},
        False,
    ),
    "iql": ({"actor_network": PAPER_GAUSSIAN, "qvalue_network": Q_SA, "value_network": V_S}, False),
    "cql": (
        {
            "actor_network": TANH_NORMAL,
            "qvalue_network": Q_SA,
            "action_spec": {"low": -1.0, "high": 1.0, "shape": [ACT]},
            "num_random": 2,
        },
        False,
    ),
    "cal_ql": (
        {
            "actor_network": TANH_NORMAL,
            "qvalue_network": Q_SA,
            "action_spec": {"low": -1.0, "high": 1.0, "shape": [ACT]},
            "num_random": 2,
        },
        False,
    ),
    "awac": ({"actor_network": TANH_NORMAL, "qvalue_network": Q_SA}, False),
    "td3_bc": (
        {"actor_network": DETERMINISTIC, "qvalue_network": Q_SA, "bounds": [-1.0, 1.0]},
        False,
    ),
    "bc": ({"actor_network": DETERMINISTIC}, False),
    "rebrac": (
        {"actor_network": DETERMINISTIC, "qvalue_network": Q_SA, "bounds": [-1.0, 1.0]},
        False,
    ),
    "discrete_bc": ({"actor_network": CATEGORICAL}, True),
    "discrete_iql": (
        {
            "actor_network": CATEGORICAL,
            "qvalue_network": Q_S,
            "value_network": V_S,
            "action_space": "categorical",
        },
        True,
    ),
    "discrete_awac": (
        {"actor_network": CATEGORICAL, "qvalue_network": Q_S, "action_space": "categorical"},
        True,
    ),
    "awr": ({"actor_network": PAPER_GAUSSIAN, "value_network": V_S}, False),
    "discrete_awr": (
        {"actor_network": CATEGORICAL, "value_network": V_S, "action_space": "categorical"},
        True,
    ),
    "bandit_ips": ({"actor_network": CATEGORICAL, "action_space": "categorical"}, True),
    "discrete_bcq": (
        {
            "value_network": TensorDictSequentialConfig(
                modules=[
                    TensorDictModuleConfig(
                        module=_mlp(OBS, N_ACTIONS), in_keys=["observation"], out_keys=[key]
                    )
                    for key in ("action_value", "logits")
                ]
            ),
            "action_space": "categorical",
        },
        True,
    ),
    "edac": ({**ENSEMBLE, "num_qvalue_nets": 3}, False),
    "sac_n": ({**ENSEMBLE, "num_qvalue_nets": 3}, False),
    "mopo": (ENSEMBLE, False),
    "combo": ({**ENSEMBLE, "num_random": 2}, False),
    "discrete_cql": (
        {
            "value_network": QValueModelConfig(
                network=_mlp(OBS, N_ACTIONS), in_keys=["observation"], action_space="categorical"
            ),
            "action_space": "categorical",
        },
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(LOSS_CONFIGS))
def test_each_loss_config_builds_and_runs(name):
    assert set(CASES) == set(LOSS_CONFIGS)
    fields, discrete = CASES[name]
    cfg = OmegaConf.merge(OmegaConf.structured(LOSS_CONFIGS[name]), fields)
    has_targets = registry.get("algorithm", name).target_update
    if has_targets:
        cfg.gamma = 0.9
    torch.manual_seed(0)
    loss = instantiate(cfg)
    assert type(loss) is registry.get("loss", name)
    if has_targets:
        assert loss.value_estimator.gamma == pytest.approx(0.9)
    batch = _batch(discrete)
    if name == "bandit_ips":  # learns from one-step decisions: every step terminal
        batch["next", "terminated"].fill_(True)
    out = loss(batch)
    keys = default_loss_components(loss)
    assert keys and all(torch.isfinite(out[k]).all() for k in keys)


def test_discrete_bc_with_a_categorical_actor_module():
    cfg = OmegaConf.structured(LOSS_CONFIGS["bc"])
    actor = instantiate(CATEGORICAL)
    loss = instantiate(cfg, actor_network=actor)  # a module, passed as is
    assert loss.actor_network is actor
    out = loss(_batch(discrete=True))
    assert torch.isfinite(out["loss_bc"])


def test_partial_loss_accepts_the_networks_torchrl_trainers_pass():
    cfg = OmegaConf.structured(LOSS_CONFIGS["td3_bc"])
    cfg._partial_ = True
    cfg.bounds = [-1.0, 1.0]
    make = instantiate(cfg)
    actor, qvalue = instantiate(DETERMINISTIC), instantiate(Q_SA)
    loss = make(actor_network=actor, qvalue_network=qvalue, value_network=None)
    assert type(loss) is registry.get("loss", "td3_bc")


def test_action_spec_mapping():
    spec = as_action_spec({"low": [-1.0, -2.0], "high": [1.0, 2.0]}, "loss.action_spec")
    assert isinstance(spec, Bounded) and spec.shape == (2,)
    assert spec.space.high.tolist() == [1.0, 2.0]
    with pytest.raises(ConfigError, match=r"loss.action_spec.*'lo'"):
        as_action_spec({"lo": -1.0, "high": 1.0}, "loss.action_spec")


def test_each_loss_config_is_named_as_its_module_attribute_and_pickles():
    """A config class's ``__name__`` is the name it is exported under (pickle finds it)."""
    import pickle

    from torchrl_offline.configs import objectives

    for name, cls in LOSS_CONFIGS.items():
        assert getattr(objectives, cls.__name__) is cls, (name, cls.__name__)
        assert type(pickle.loads(pickle.dumps(cls()))) is cls
