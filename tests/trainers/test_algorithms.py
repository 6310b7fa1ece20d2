"""build_algorithm: standard networks, defaults, overrides, and a few training steps each."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torchrl.data import Bounded, Categorical, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tests.trainers.conftest import make_dataset
from torchrl_offline import registry
from torchrl_offline.data.episodes import with_derived_keys
from torchrl_offline.trainers.algorithms import (
    ALGORITHMS,
    AlgorithmError,
    HyperparameterError,
    algorithm_defaults,
    algorithm_names,
    build_algorithm,
    declaration,
    make_lr_scheduler,
    specs_from_dataset,
)
from torchrl_offline.trainers.offline import OfflineTrainer

OBS = Unbounded(shape=(3,))
BOX = Bounded(-2.0, 2.0, (1,))


def _model_based(name: str) -> bool:
    """Whether algorithm ``name`` trains on model rollouts (its batches mark the model rows)."""
    return declaration(name).model_rollouts is not None


def test_every_builtin_loss_has_an_algorithm():
    for name in registry.BUILTIN_ALGORITHMS:
        assert name in ALGORITHMS and name in algorithm_names()
    assert set(algorithm_names()) <= set(registry.names("loss"))


def test_an_unknown_algorithm_or_preset_names_the_valid_ones():
    with pytest.raises(AlgorithmError, match="valid names: .*td3_bc"):
        build_algorithm("td4_bc", OBS, BOX)
    with pytest.raises(HyperparameterError, match="valid presets: adroit, antmaze, .*mujoco"):
        build_algorithm("iql", OBS, BOX, preset="gym")


def test_a_preset_sets_its_values_and_overrides_apply_on_top():
    algo = build_algorithm("iql", OBS, BOX, hidden_sizes=(8,), preset="antmaze")
    assert (algo.loss.expectile, algo.loss.temperature) == (0.9, 10.0)
    assert algo.hyperparameters["expectile"] == 0.9  # a checkpoint rebuilds the same loss
    algo = build_algorithm("iql", OBS, BOX, hidden_sizes=(8,), preset="antmaze", expectile=0.8)
    assert (algo.loss.expectile, algo.loss.temperature) == (0.8, 10.0)


def test_a_choice_outside_the_declared_values_is_refused():
    with pytest.raises(HyperparameterError, match="actor_lr_schedule must be one of cosine"):
        build_algorithm("iql", OBS, BOX, actor_lr_schedule="linear")


def test_declarations_do_not_restate_the_loss_defaults():
    """Declared defaults are network/optimizer/loop settings; the loss's come from it."""
    for name in algorithm_names():
        decl = declaration(name)
        assert not set(decl.defaults) & set(decl.loss_arguments()), name
        for group in decl.optimizer:
            assert group.lr in decl.defaults, (name, group.lr)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_each_algorithm_trains_through_the_trainer(name):
    torch.manual_seed(0)
    discrete = declaration(name).action == "discrete"
    data = make_dataset(
        discrete=discrete, one_step=name == "bandit_ips", model_marks=_model_based(name)
    )
    obs_spec, act_spec = specs_from_dataset(data)
    algo = build_algorithm(name, obs_spec, act_spec, hidden_sizes=(16,))
    assert algo.name == name
    data = with_derived_keys(data, algo.derived_keys, gamma=0.99)  # what train() adds
    before = {k: v.clone() for k, v in algo.loss.state_dict().items() if torch.is_tensor(v)}
    trainer = OfflineTrainer(
        replay_buffer=data,
        loss_module=algo.loss,
        optimizer=algo.optimizer,
        total_steps=4,
        loss_components=algo.loss_keys,
        target_net_updater=algo.target_updater,
    )
    trainer.train()
    assert trainer.step == 4
    after = algo.loss.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert any("actor" in k or "value_network" in k for k in changed)
    if algo.target_updater is not None:
        assert any(k.startswith("target_") for k in changed)
    for value in after.values():
        if torch.is_tensor(value) and value.is_floating_point():
            assert torch.isfinite(value).all()
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        action = algo.policy(data.storage[:5].select("observation"))["action"]
    if discrete:
        assert action.dtype == torch.int64 and action.shape == (5,)
        assert ((action >= 0) & (action < 3)).all()
    else:
        assert action.shape == (5, 1) and (action.abs() <= 2.0).all()


@pytest.mark.parametrize("name", ALGORITHMS)
def test_check_inputs_false_removes_the_per_update_host_read(name, monkeypatch):
    """Every loss checks batch and losses by default (one host read per update, a device
    sync on GPU); ``check_inputs=False`` removes the read and the error with it."""
    from torchrl_offline.objectives import _checks

    torch.manual_seed(0)
    discrete = declaration(name).action == "discrete"
    data = make_dataset(
        discrete=discrete, one_step=name == "bandit_ips", model_marks=_model_based(name)
    )
    obs_spec, act_spec = specs_from_dataset(data)
    checked = build_algorithm(name, obs_spec, act_spec, hidden_sizes=(8,))
    batch = with_derived_keys(data, checked.derived_keys, gamma=0.99).sample().clone()
    batch["observation"][3, 0] = float("nan")
    assert checked.loss.check_inputs
    with pytest.raises(
        ValueError, match=r"'observation' holds NaN/inf \(first at batch index \(3,\)\)"
    ):
        checked.loss(batch.clone())
    unchecked = build_algorithm(name, obs_spec, act_spec, hidden_sizes=(8,), check_inputs=False)
    reads = []
    monkeypatch.setattr(_checks, "_probably_all_finite", lambda t: reads.append(t) or True)
    out = unchecked.loss(batch.clone())
    assert reads == []
    assert any(k.startswith("loss_") for k in out.keys())


def test_cql_lagrange_multiplier_is_trained():
    torch.manual_seed(0)
    data = make_dataset()
    obs_spec, act_spec = specs_from_dataset(data)
    algo = build_algorithm("cql", obs_spec, act_spec, hidden_sizes=(16,), with_lagrange=True)
    assert "loss_alpha_prime" in algo.loss_keys
    before = algo.loss.log_alpha_prime.detach().clone()
    trainer = OfflineTrainer(
        replay_buffer=data,
        loss_module=algo.loss,
        optimizer=algo.optimizer,
        total_steps=3,
        loss_components=algo.loss_keys,
        target_net_updater=algo.target_updater,
    )
    trainer.train()
    assert not torch.equal(algo.loss.log_alpha_prime.detach(), before)


def test_continuous_names_resolve_to_discrete_variants():
    for name in ("iql", "cql", "awac", "bc"):
        algo = build_algorithm(name, OBS, Categorical(3), hidden_sizes=(8,))
        assert algo.name == f"discrete_{name}"


def test_discrete_variants_take_the_hyperparameters_they_forward():
    """DiscreteIQLLoss forwards **kwargs to IQLLoss: expectile and temperature are valid
    overrides (AlgorithmError before)."""
    algo = build_algorithm("iql", OBS, Categorical(3), hidden_sizes=(8,), expectile=0.9)
    assert (algo.loss.expectile, algo.loss.temperature) == (0.9, 3.0)
    assert {"expectile", "temperature", "max_weight"} <= set(algorithm_defaults("discrete_iql"))


def test_paper_defaults():
    iql = build_algorithm("iql", OBS, BOX)
    assert (iql.loss.expectile, iql.loss.temperature) == (0.7, 3.0)
    assert iql.hyperparameters["hidden_sizes"] == [256, 256]
    assert [g["lr"] for g in iql.optimizer.param_groups] == [3e-4, 3e-4, 3e-4]
    assert iql.target_updater is not None and iql.hyperparameters["tau"] == 0.005
    cql = build_algorithm("cql", OBS, BOX)
    # the recommended conservative term: d3rlpy's 5 alpha' (gap - 10), by dual descent
    assert (cql.loss.min_q_weight, cql.loss.with_lagrange) == (5.0, True)
    assert cql.loss.target_action_gap == 50.0
    lrs = {g["name"]: g["lr"] for g in cql.optimizer.param_groups}
    assert lrs == {"actor": 1e-4, "qvalue": 3e-4, "alpha": 1e-4}  # alpha and alpha'
    paper = build_algorithm("cql", OBS, BOX, preset="mujoco")
    assert (paper.loss.min_q_weight, paper.loss.with_lagrange) == (10.0, False)
    td3 = build_algorithm("td3_bc", OBS, BOX)
    assert (td3.loss.alpha, td3.policy_update_delay, td3.target_update_delay) == (2.5, 2, 1)
    assert build_algorithm("td3_bc", OBS, BOX, target_update_delay=2).target_update_delay == 2
    assert build_algorithm("awac", OBS, BOX).loss.awac_lambda == 1.0  # d3rlpy's
    assert build_algorithm("awac", OBS, BOX, preset="corl").loss.awac_lambda == pytest.approx(1 / 3)
    assert build_algorithm("awac", OBS, BOX, preset="small").loss.awac_lambda == 1.0
    assert build_algorithm("bc", OBS, BOX).target_updater is None


def test_overrides_reach_the_loss_and_networks():
    algo = build_algorithm(
        "iql", OBS, BOX, hidden_sizes=(8, 4), expectile=0.9, actor_lr=1e-3, gamma=0.9
    )
    assert algo.loss.expectile == 0.9
    assert algo.hyperparameters["hidden_sizes"] == [8, 4]
    assert algo.optimizer.param_groups[0]["lr"] == 1e-3
    linear = [m for m in algo.loss.actor_network.modules() if isinstance(m, torch.nn.Linear)]
    # The IQL actor outputs the mean only (its log-std is a state-independent parameter).
    assert [m.out_features for m in linear] == [8, 4, 1]
    assert algo.loss.value_estimator.gamma == pytest.approx(0.9)


def test_unknown_name_lists_valid_names():
    with pytest.raises(AlgorithmError, match="Unknown algorithm 'sac'.*iql.*td3_bc"):
        build_algorithm("sac", OBS, BOX)


def test_unknown_override_lists_valid_keys():
    with pytest.raises(AlgorithmError, match="Unknown hyperparameter 'expectil'.*expectile"):
        build_algorithm("iql", OBS, BOX, expectil=0.9)


def test_bad_override_values():
    with pytest.raises(AlgorithmError, match="actor_lr"):
        build_algorithm("iql", OBS, BOX, actor_lr=-1.0)
    with pytest.raises(AlgorithmError, match="hidden_sizes"):
        build_algorithm("iql", OBS, BOX, hidden_sizes="big")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("expectile", "abc", "expectile must be a number (default 0.7), got 'abc'"),
        ("num_qvalue_nets", 2.5, "num_qvalue_nets must be an integer"),
        ("check_inputs", "yes", "check_inputs must be true or false"),
        ("gamma", None, "gamma must be a number"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_hyperparameter_error(key, value, message):
    """Review of issue 15, finding 6: `expectile=abc` raised a raw TypeError."""
    from torchrl_offline.trainers.algorithms import HyperparameterError

    with pytest.raises(HyperparameterError, match=re.escape(message)):
        build_algorithm("iql", OBS, BOX, **{key: value})
    assert build_algorithm("iql", OBS, BOX, temperature=3).loss.temperature == 3  # int for float


def test_unsupported_specs():
    with pytest.raises(AlgorithmError, match="td3_bc needs a continuous"):
        build_algorithm("td3_bc", OBS, Categorical(3))
    with pytest.raises(AlgorithmError, match="discrete_iql needs a discrete"):
        build_algorithm("discrete_iql", OBS, BOX)
    with pytest.raises(AlgorithmError, match="bounded"):
        build_algorithm("iql", OBS, Unbounded(shape=(1,)))


def test_defaults_list_loss_keywords():
    keys = algorithm_defaults("cql")
    assert {"hidden_sizes", "gamma", "tau", "actor_lr", "min_q_weight", "num_random"} <= set(keys)
    with pytest.raises(AlgorithmError):
        algorithm_defaults("nope")


@pytest.mark.filterwarnings("ignore:Detected call of .lr_scheduler.step")
@pytest.mark.parametrize("horizon, total", [(0, 4), (6, 4), (1_000_000, 3)])
def test_iql_cosine_schedule_on_the_actor_only(horizon, total):
    """The paper's cosine over ``actor_lr_decay_steps`` (0: over the run)."""
    algo = build_algorithm("iql", OBS, BOX, hidden_sizes=(8,), actor_lr_decay_steps=horizon)
    sched = make_lr_scheduler(algo, total_steps=total)
    lrs = []
    for _ in range(total):
        sched.step()
        lrs.append(algo.optimizer.param_groups[0]["lr"])
    n = horizon or total
    expected = [3e-4 * 0.5 * (1 + math.cos(math.pi * k / n)) for k in range(1, total + 1)]
    assert lrs == pytest.approx(expected)
    assert algo.optimizer.param_groups[1]["lr"] == 3e-4
    assert make_lr_scheduler(build_algorithm("td3_bc", OBS, BOX, hidden_sizes=(8,)), 4) is None


def test_iql_decays_over_the_papers_million_steps_by_default():
    assert algorithm_defaults("iql")["actor_lr_decay_steps"] == 1_000_000
    with pytest.raises(HyperparameterError, match="actor_lr_decay_steps must be an int >= 0"):
        build_algorithm("iql", OBS, BOX, actor_lr_decay_steps=-1)


def test_specs_from_dataset_reads_the_spaces():
    obs_spec, act_spec = specs_from_dataset(make_dataset())
    assert obs_spec.shape == (3,)
    assert isinstance(act_spec, Bounded)
    assert act_spec.space.low.item() == -2.0 and act_spec.space.high.item() == 2.0
    _, disc = specs_from_dataset(make_dataset(discrete=True))
    assert isinstance(disc, Categorical) and disc.space.n == 3


def test_a_default_preset_applies_unless_another_is_named(monkeypatch):
    """The recommended setting (``default_preset``) where it is not the loss's own
    defaults; naming another preset replaces it, values not on top of it."""
    from dataclasses import replace

    from torchrl_offline.objectives.cql import CQL_ALGORITHM

    monkeypatch.setattr(registry, "_entries", {k: dict(v) for k, v in registry._entries.items()})
    custom = replace(CQL_ALGORITHM, name="cql_test", default_preset="lagrange")
    registry.register("algorithm", "cql_test", custom)
    assert algorithm_defaults("cql_test")["min_q_weight"] == 1.0
    algo = build_algorithm("cql_test", OBS, BOX, hidden_sizes=(8,))
    assert (algo.loss.min_q_weight, algo.loss.with_lagrange) == (1.0, True)
    algo = build_algorithm("cql_test", OBS, BOX, hidden_sizes=(8,), preset="mujoco")
    assert (algo.loss.min_q_weight, algo.loss.with_lagrange) == (10.0, False)
    assert algo.hyperparameters["lagrange_thresh"] == 10.0  # the loss's, not "lagrange"'s
    with pytest.raises(ValueError, match="default_preset 'nope' is not one of its presets"):
        replace(CQL_ALGORITHM, default_preset="nope")


@pytest.mark.parametrize("name", registry.BUILTIN_ALGORITHMS)
def test_every_algorithm_has_a_small_preset_of_2x64_networks(name):
    """``preset="small"``: every network (``*hidden_sizes``) at 2x64, for CPU runs; the
    other settings are the algorithm's defaults (its default preset's included), but for
    a model-based algorithm's model and rollout schedule, which are scaled down too
    (``MODEL_BASED_SMALL_PRESET``)."""
    from torchrl_offline.objectives.mopo import MODEL_BASED_SMALL_PRESET

    decl = declaration(name)
    act = Categorical(3) if decl.action == "discrete" else BOX
    algo = build_algorithm(name, OBS, act, preset="small")
    sizes = {k: v for k, v in algo.hyperparameters.items() if k.endswith("hidden_sizes")}
    assert sizes and set(map(tuple, sizes.values())) == {(64, 64)}
    scaled = set(MODEL_BASED_SMALL_PRESET) if _model_based(name) else set()
    others = {k: v for k, v in algorithm_defaults(name).items() if k not in {*sizes, *scaled}}
    assert {k: algorithm_defaults(name, "small")[k] for k in others} == others
    widths = {p.shape[-2] for p in algo.loss.parameters() if p.ndim >= 2}  # weights' outputs
    assert max(widths) == 64, widths  # no layer wider


def test_a_sizes_only_preset_goes_on_top_of_the_default_preset():
    cql = declaration("cql")
    assert cql.default_preset == "d3rlpy"
    assert cql.preset_chain() == ("d3rlpy",)
    assert cql.preset_chain("small") == ("d3rlpy", "small")
    assert cql.preset_chain("mujoco") == ("mujoco",)  # other presets replace the default
    algo = build_algorithm("cql", OBS, BOX, preset="small", min_q_weight=1.0)
    assert algo.hyperparameters["hidden_sizes"] == [64, 64] and algo.loss.min_q_weight == 1.0
    assert algo.loss.with_lagrange  # d3rlpy's


def test_specs_are_read_from_a_dataset_when_not_given():
    from tensordict import TensorDict

    from torchrl_offline.data.storage import make_replay_buffer

    action = torch.tensor([[-0.5, 0.0], [1.5, 1.0], [0.0, 0.0], [1.0, 0.5]])
    rb = make_replay_buffer(TensorDict({"observation": torch.zeros(4, 5), "action": action}, [4]))
    algo = build_algorithm("td3_bc", dataset=rb, hidden_sizes=(8,))
    assert algo.observation_spec.shape == (5,)
    assert torch.equal(algo.action_spec.space.low, torch.tensor([-0.5, 0.0]))
    assert torch.equal(algo.action_spec.space.high, torch.tensor([1.5, 1.0]))
    # an explicit spec wins over the dataset's
    algo = build_algorithm("td3_bc", None, Bounded(-1.0, 1.0, (2,)), dataset=rb, hidden_sizes=(8,))
    assert torch.equal(algo.action_spec.space.high, torch.ones(2))
    with pytest.raises(AlgorithmError, match="or a dataset= to read them from"):
        build_algorithm("td3_bc", hidden_sizes=(8,))
