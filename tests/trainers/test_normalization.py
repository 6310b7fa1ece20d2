"""Training on normalised observations with policies that act on raw observations."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tests.trainers.conftest import StopAt, make_dataset
from torchrl_offline.trainers.algorithms import AlgorithmError, build_algorithm, specs_from_dataset
from torchrl_offline.trainers.finetune import finetune
from torchrl_offline.trainers.normalization import NormalizedPolicy, observation_moments
from torchrl_offline.trainers.offline import load_algorithm, train


def _shifted_dataset(**kw):
    data = make_dataset(**kw)
    for key in ("observation", ("next", "observation")):
        stored = data.storage._storage
        stored.set(key, stored.get(key) * 10.0 + 5.0)
    return data


class _Batches:
    """Records the observation means of the batches the loss sees."""

    def __init__(self):
        self.means = []

    def register(self, trainer):
        trainer.register_op("pre_steps_log", self)

    def __call__(self, batch):
        self.means.append(batch["observation"].mean().item())


def test_policy_wrapper_acts_on_raw_observations():
    data = _shifted_dataset()
    loc, scale = observation_moments(data)
    assert loc.mean().item() == pytest.approx(5.0, abs=2.0)
    assert scale.mean().item() == pytest.approx(10.0, rel=0.3)
    algo = build_algorithm(
        "iql", *specs_from_dataset(data), hidden_sizes=(8,), observation_norm=(loc, scale)
    )
    assert isinstance(algo.policy, NormalizedPolicy)
    raw = data.storage[:6].select("observation")
    td = raw.clone()
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        out = algo.policy(td)
        inner = algo.loss.actor_network(
            TensorDict({"observation": (raw["observation"] - loc) / scale}, [6])
        )
    assert torch.equal(out["observation"], raw["observation"])
    torch.testing.assert_close(out["action"], inner["action"])
    dist = algo.policy.get_dist(raw.clone())
    assert dist.log_prob(out["action"]).shape == (6,)
    td3 = build_algorithm(
        "td3_bc", *specs_from_dataset(data), hidden_sizes=(8,), observation_norm=(loc, scale)
    )
    assert not hasattr(td3.policy, "get_dist")
    with pytest.raises(AlgorithmError, match="shape"):
        build_algorithm("iql", *specs_from_dataset(data), observation_norm=(loc[:2], scale[:2]))


def test_train_normalizes_batches_and_checkpoints_the_statistics(tmp_path):
    data = _shifted_dataset(n=256)
    seen = _Batches()
    kw = dict(
        total_steps=8,
        batch_size=64,
        overrides={"hidden_sizes": (16,)},
        seed=0,
        normalize_observations=True,
        checkpoint_interval=4,
        progress=False,
    )
    full = train("iql", data, out_dir=tmp_path / "full", hooks=[seen], **kw)
    assert abs(sum(seen.means) / len(seen.means)) < 0.5  # raw batches have mean about 5
    loc, scale = full.algorithm.observation_norm
    algo, step = load_algorithm(tmp_path / "full")
    assert step == 8
    assert torch.equal(algo.observation_norm[0], loc) and torch.equal(
        algo.observation_norm[1], scale
    )
    obs = data.storage[:4].select("observation")
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        a = full.algorithm.policy(obs.clone())["action"]
        b = algo.policy(obs.clone())["action"]
    assert torch.equal(a, b)
    # interrupted and resumed equals uninterrupted, with normalisation
    train("iql", data, out_dir=tmp_path / "part", hooks=[StopAt(5)], **kw)
    resumed = train("iql", data, out_dir=tmp_path / "part", resume=True, **kw)
    for key, value in full.algorithm.loss.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, resumed.algorithm.loss.state_dict()[key]), key
    # resuming without normalisation is refused
    kw["normalize_observations"] = False
    with pytest.raises(ValueError, match="observation normalisation"):
        train("iql", data, out_dir=tmp_path / "part", resume=True, **kw)


def test_normalized_algorithm_evaluates_and_finetunes():
    data = _shifted_dataset()
    result = train(
        "td3_bc",
        data,
        total_steps=4,
        batch_size=16,
        normalize_observations=True,
        overrides={"hidden_sizes": (16,)},
        eval_env="Pendulum-v1",
        eval_interval=4,
        eval_episodes=1,
        eval_max_steps=10,
        progress=False,
        logger=None,
    )
    assert [e["step"] for e in result.evaluations] == [0, 4]
    online = finetune(
        result.algorithm,
        data,
        "Pendulum-v1",
        total_steps=6,
        batch_size=16,
        frames_per_batch=3,
        progress=False,
        logger=None,
    )
    assert online.step == 6


def test_ope_reads_log_probs_through_the_wrapper():
    from torchrl_offline.ope.policy import as_evaluation_policy

    data = _shifted_dataset()
    algo = build_algorithm(
        "iql",
        *specs_from_dataset(data),
        hidden_sizes=(8,),
        observation_norm=observation_moments(data),
    )
    batch = data.storage[:5]
    log_prob = as_evaluation_policy(algo.policy).log_prob(batch)
    assert log_prob.shape == (5,) and torch.isfinite(log_prob).all()


def test_every_observation_entry_of_a_batch_is_normalised():
    """The tail observation of AWR's and Cal-QL's Monte Carlo returns is an observation
    too: the value network that bootstraps from it was trained on normalised inputs."""
    from torchrl_offline.trainers.normalization import NormalizeObservations

    loc, scale = torch.tensor([5.0, -1.0]), torch.tensor([10.0, 2.0])
    raw = torch.tensor([[15.0, 1.0], [5.0, -1.0]])
    batch = TensorDict(
        {
            "observation": raw.clone(),
            ("next", "observation"): raw.clone(),
            "mc_tail_observation": raw.clone(),
            "action": raw.clone(),
        },
        [2],
    )
    NormalizeObservations(loc, scale)(batch)
    expected = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    for key in ("observation", ("next", "observation"), "mc_tail_observation"):
        assert torch.equal(batch[key], expected), key
    assert torch.equal(batch["action"], raw)  # not an observation
