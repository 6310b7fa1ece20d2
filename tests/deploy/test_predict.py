"""``load_policy(...).predict(observation)``: greedy actions of every algorithm's policy from
arrays, with training's observation normalisation and the action spec's bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrl.data import Bounded, Categorical, Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import Actor

import torchrl_offline
from torchrl_offline.deploy import ObservationError, TensorPolicy, TrainedPolicy, load_policy
from torchrl_offline.trainers.algorithms import algorithm_names, build_algorithm
from torchrl_offline.trainers.checkpoint import CheckpointError, latest_checkpoint
from torchrl_offline.trainers.metadata import load_algorithm

LOC, SCALE = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 3.0])
SAMPLING = ("bcq", "bear")  # act with the best of sampled candidates


def is_discrete(name: str) -> bool:
    return torchrl_offline.registry.get("algorithm", name).action == "discrete"


def build(name: str, *, norm: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    discrete = is_discrete(name)
    action = Categorical(3, shape=()) if discrete else Bounded(-2.0, 2.0, (1,))
    extra = {"vae_hidden_sizes": (8,)} if name in SAMPLING else {}
    return build_algorithm(
        name,
        Unbounded(shape=(3,)),
        action,
        hidden_sizes=(8,),
        observation_norm=(LOC, SCALE) if norm else None,
        **extra,
    )


def observations(n: int = 16) -> np.ndarray:
    g = torch.Generator().manual_seed(1)
    return (LOC + SCALE * 2 * torch.randn(n, 3, generator=g)).numpy()


@pytest.mark.parametrize("name", algorithm_names())
def test_every_algorithm_predicts_greedy_actions_within_the_action_spec(name):
    algo = build(name)
    policy = TrainedPolicy(algo)
    obs = observations()
    batch = policy.predict(obs)
    single = policy.predict(obs[3])
    if is_discrete(name):
        assert batch.shape == (16,) and batch.dtype == np.int64
        assert single.shape == () and set(batch.tolist()) <= {0, 1, 2}
    else:
        assert batch.shape == (16, 1) and batch.dtype == np.float32
        assert single.shape == (1,) and np.all(np.abs(batch) <= 2.0)
    # deterministic, and each row's action does not depend on the rest of the batch (up to
    # float rounding: a CPU's matrix kernels for one row and for 16 may sum in other orders)
    np.testing.assert_array_equal(policy.predict(obs), batch)
    np.testing.assert_allclose(single, batch[3], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(policy.predict(torch.from_numpy(obs)), batch)
    if name not in SAMPLING:  # the action `evaluate` takes: TorchRL's deterministic one
        from tensordict import TensorDict

        with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
            td = algo.policy(TensorDict({"observation": torch.from_numpy(obs)}, [16]))
        np.testing.assert_array_equal(batch, td["action"].numpy())


def test_predict_applies_the_observation_normalisation_of_training():
    normalised, plain = build("iql"), build("iql", norm=False)
    plain.loss.load_state_dict(normalised.loss.state_dict())
    obs = observations()
    expected = TrainedPolicy(plain).predict((obs - LOC.numpy()) / SCALE.numpy())
    np.testing.assert_allclose(TrainedPolicy(normalised).predict(obs), expected, atol=1e-6)


def test_continuous_actions_are_clipped_to_the_action_bounds():
    actor = Actor(torch.nn.Identity(), in_keys=["observation"])
    module = TensorPolicy(actor, Unbounded(shape=(3,)), Bounded(-1.0, 1.0, (3,)))
    action = module(torch.tensor([[5.0, -5.0, 0.5]]))
    assert action.tolist() == [[1.0, -1.0, 0.5]]


def test_bcq_and_bear_choose_among_fixed_candidates_drawn_from_the_seed():
    obs = observations(32)
    for name in SAMPLING:
        algo = build(name)
        first = TrainedPolicy(algo, seed=0).predict(obs)
        np.testing.assert_array_equal(TrainedPolicy(algo, seed=0).predict(obs), first)
        assert not np.array_equal(TrainedPolicy(algo, seed=1).predict(obs), first), name
        torch.manual_seed(0)
        sampled = TrainedPolicy(algo).predict(obs, deterministic=False)
        assert not np.array_equal(sampled, first), name  # fresh candidates


def test_deterministic_false_samples_from_the_policy_with_torch_generator():
    policy = TrainedPolicy(build("iql"))
    obs = observations()
    torch.manual_seed(0)
    first = policy.predict(obs, deterministic=False)
    torch.manual_seed(0)
    np.testing.assert_array_equal(policy.predict(obs, deterministic=False), first)
    assert not np.array_equal(first, policy.predict(obs))
    assert np.all(np.abs(first) <= 2.0)


def test_load_policy_reads_a_run_directory_or_a_checkpoint_file(runs):
    run = runs("iql")
    checkpoint = latest_checkpoint(run / "checkpoints")
    policy = torchrl_offline.load_policy(run)
    assert isinstance(policy, TrainedPolicy)
    assert (policy.name, policy.step, policy.checkpoint) == ("iql", 2, checkpoint)
    assert repr(policy) == "TrainedPolicy(iql at step 2, observation (3,))"
    obs = observations()
    np.testing.assert_array_equal(load_policy(checkpoint).predict(obs), policy.predict(obs))
    algorithm, _ = load_algorithm(checkpoint)
    np.testing.assert_array_equal(TrainedPolicy(algorithm).predict(obs), policy.predict(obs))


def test_load_policy_of_a_discrete_run(runs):
    policy = load_policy(runs("discrete_cql", discrete=True))
    assert policy.name == "discrete_cql" and policy.predict(observations()).dtype == np.int64


def test_observations_of_another_shape_are_refused_with_the_expected_shape():
    policy = TrainedPolicy(build("td3_bc"))
    with pytest.raises(
        ObservationError,
        match=r"shape \(4,\); the td3_bc policy takes one "
        r"observation of shape \(3,\) or a batch of shape \(batch, 3\)",
    ):
        policy.predict(np.zeros(4))
    with pytest.raises(ObservationError, match=r"shape \(2, 2, 3\)"):
        policy.predict(np.zeros((2, 2, 3)))
    with pytest.raises(ObservationError, match="must be numbers"):
        policy.predict(np.array(["a", "b", "c"]))


def test_a_nan_or_infinite_observation_is_named_by_its_row():
    policy = TrainedPolicy(build("td3_bc"))
    obs = observations(5)
    obs[2, 1] = np.nan
    obs[4, 0] = np.inf
    with pytest.raises(ObservationError, match="observation row 2 holds a NaN") as err:
        policy.predict(obs)
    assert err.value.index == 2
    with pytest.raises(ObservationError, match="the observation holds"):
        policy.predict(obs[4])


def test_a_missing_checkpoint_is_an_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="No checkpoint found"):
        load_policy(tmp_path)
