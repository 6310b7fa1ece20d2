"""collect_dataset: Minari datasets made by running behaviour policies in gymnasium envs."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torchrl.envs.libs.gym import GymEnv
from torchrl.modules import NormalParamExtractor, ProbabilisticActor, TanhNormal

from torchrl_offline.data.behavior import (
    EpsilonGreedyPolicy,
    GaussianNoisePolicy,
    MixturePolicy,
    UniformRandomPolicy,
)
from torchrl_offline.data.collect import collect_dataset
from torchrl_offline.data.errors import DatasetError

STEPS = 260  # Pendulum: one full 200-step episode, then one cut by the budget


@pytest.fixture(autouse=True)
def datasets_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


class Recorder(TensorDictModuleBase):
    """Delegates to a policy and keeps a copy of every step it produced."""

    def __init__(self, policy: TensorDictModuleBase, fail_after: int | None = None):
        super().__init__()
        self.policy = policy
        self.in_keys = policy.in_keys
        self.out_keys = policy.out_keys
        self.steps: list[TensorDictBase] = []
        self.fail_after = fail_after

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.fail_after is not None and len(self.steps) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        out = self.policy(tensordict)
        self.steps.append(out.exclude("collector", "next").clone())
        return out


def _episodes(path: Path) -> list:
    return list(minari.MinariDataset(path / "data").iterate_episodes())


def _concat(episodes, field: str) -> np.ndarray:
    if field == "observations":
        return np.concatenate([ep.observations[:-1] for ep in episodes])
    if field in ("action_log_prob", "action_prob", "policy_id"):
        return np.concatenate([np.asarray(ep.infos[field])[1:] for ep in episodes])
    return np.concatenate([getattr(ep, field) for ep in episodes])


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _truncnorm_logpdf(x: float, mu: float, sigma: float, low: float, high: float) -> float:
    mass = _phi((high - mu) / sigma) - _phi((low - mu) / sigma)
    z = (x - mu) / sigma
    return -0.5 * z * z - math.log(sigma * math.sqrt(2 * math.pi)) - math.log(mass)


def _pendulum_actor() -> TensorDictModule:
    torch.manual_seed(0)
    return TensorDictModule(torch.nn.Linear(3, 1), ["observation"], ["action"])


def _cartpole_greedy(obs: torch.Tensor) -> torch.Tensor:
    """Push toward the pole's angular velocity (a decent CartPole controller)."""
    return (obs[..., 3] > 0).long()


def _replay_in_gymnasium(env_id: str, episodes, seed: int) -> None:
    """Re-run the logged actions in a fresh gymnasium env: same observations, rewards, ends."""
    env = gym.make(env_id)
    for k, ep in enumerate(episodes):
        obs, _ = env.reset(seed=seed) if k == 0 else env.reset()
        np.testing.assert_array_equal(ep.observations[0], obs)
        for t, action in enumerate(ep.actions):
            obs, reward, terminated, truncated, _ = env.step(action)
            np.testing.assert_array_equal(ep.observations[t + 1], obs)
            np.testing.assert_allclose(ep.rewards[t], reward, rtol=1e-6)
            assert ep.terminations[t] == terminated
            if t < len(ep.actions) - 1 or k < len(episodes) - 1:
                assert ep.truncations[t] == truncated


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_pendulum_gaussian_noise(datasets_root, data_format):
    actor = _pendulum_actor()
    recorder = Recorder(GaussianNoisePolicy(actor, GymEnv("Pendulum-v1").action_spec, sigma=0.5))
    path = collect_dataset(
        "Pendulum-v1",
        recorder,
        STEPS,
        dataset_id="pendulum/gauss-v0",
        seed=3,
        data_format=data_format,
    )
    assert path == datasets_root / "pendulum" / "gauss-v0"
    dataset = minari.MinariDataset(path / "data")
    assert dataset.total_steps == STEPS and dataset.storage.metadata["data_format"] == data_format
    episodes = _episodes(path)
    assert [len(ep.actions) for ep in episodes] == [200, STEPS - 200]
    # the time-limit end is a truncation; the budget-cut last episode too
    assert episodes[0].truncations[-1] and not episodes[0].terminations.any()
    assert episodes[1].truncations[-1] and not episodes[1].truncations[:-1].any()

    # stored values are the ones the policy produced, in order
    # (the collector first probes the policy once on the reset state to learn its outputs)
    steps = torch.stack(recorder.steps[-STEPS:])
    np.testing.assert_array_equal(_concat(episodes, "observations"), steps["observation"].numpy())
    np.testing.assert_array_equal(_concat(episodes, "actions"), steps["action"].numpy())
    np.testing.assert_array_equal(
        _concat(episodes, "action_log_prob"), steps["action_log_prob"].double().numpy()
    )
    assert np.isnan(episodes[0].infos["action_log_prob"][0])

    # log-probs against an independent truncated-normal density
    obs = _concat(episodes, "observations")
    actions = _concat(episodes, "actions")
    log_probs = _concat(episodes, "action_log_prob")
    with torch.no_grad():
        mu = actor.module(torch.as_tensor(obs)).clamp(-2.0, 2.0).double().numpy()
    for i in range(0, STEPS, 7):
        expected = _truncnorm_logpdf(float(actions[i, 0]), float(mu[i, 0]), 0.5, -2.0, 2.0)
        assert abs(log_probs[i] - expected) < 1e-5

    # the env really produced these observations and rewards from these actions
    _replay_in_gymnasium("Pendulum-v1", episodes, seed=3)


def test_cartpole_epsilon_greedy_truncates_the_last_episode():
    greedy = TensorDictModule(_cartpole_greedy, ["observation"], ["action"])
    path = collect_dataset(
        "CartPole-v1",
        lambda env: EpsilonGreedyPolicy(greedy, env.action_spec_unbatched, epsilon=0.3),
        300,
        dataset_id="cartpole/eps-v0",
        seed=1,
    )
    episodes = _episodes(path)
    assert sum(len(ep.actions) for ep in episodes) == 300 and len(episodes) >= 2
    for ep in episodes[:-1]:  # the controller with 30% random actions falls within 300 steps
        assert ep.terminations[-1] != ep.truncations[-1]
        assert not ep.terminations[:-1].any() and not ep.truncations[:-1].any()
    last = episodes[-1]
    assert last.truncations[-1] and not last.terminations[-1]
    obs = torch.as_tensor(_concat(episodes, "observations"))
    actions = torch.as_tensor(_concat(episodes, "actions"))
    assert actions.dtype == torch.int64 and actions.shape == (300,)
    expected = 0.15 + 0.7 * (actions == _cartpole_greedy(obs)).double()
    np.testing.assert_allclose(_concat(episodes, "action_prob"), expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        _concat(episodes, "action_log_prob"), expected.log().numpy(), rtol=1e-6
    )
    _replay_in_gymnasium("CartPole-v1", episodes, seed=1)


def _mixture_factory(env):
    spec = env.action_spec_unbatched
    greedy = TensorDictModule(_cartpole_greedy, ["observation"], ["action"])
    return MixturePolicy(
        [UniformRandomPolicy(spec), EpsilonGreedyPolicy(greedy, spec, epsilon=0.1)],
        [0.4, 0.6],
        per="episode",
    )


def test_per_episode_mixture_records_the_acting_component():
    path = collect_dataset(
        "CartPole-v1", _mixture_factory, 400, dataset_id="cartpole/mix-v0", seed=2
    )
    episodes = _episodes(path)
    ids = []
    for ep in episodes:
        policy_id = np.asarray(ep.infos["policy_id"])
        assert policy_id[0] == -1 and len(set(policy_id[1:].tolist())) == 1
        ids.append(int(policy_id[1]))
        obs = torch.as_tensor(ep.observations[:-1])
        actions = torch.as_tensor(ep.actions)
        if ids[-1] == 0:
            expected = torch.full((len(actions),), 0.5, dtype=torch.float64)
        else:
            expected = 0.05 + 0.9 * (actions == _cartpole_greedy(obs)).double()
        np.testing.assert_allclose(np.asarray(ep.infos["action_prob"])[1:], expected, rtol=1e-6)
    assert set(ids) == {0, 1}
    metadata = minari.MinariDataset(path / "data").storage.metadata
    assert metadata["behavior_policy"].startswith("MixturePolicy(per='episode'")


def test_per_step_mixture_on_pendulum_records_the_mixture_density():
    actor = _pendulum_actor()

    def factory(env):
        spec = env.action_spec_unbatched
        gaussian = GaussianNoisePolicy(actor, spec, sigma=0.3)
        return MixturePolicy([UniformRandomPolicy(spec), gaussian], [0.2, 0.8], per="step")

    path = collect_dataset(
        "Pendulum-v1", factory, 120, dataset_id="pendulum/mix-v0", data_format="arrow"
    )
    episodes = _episodes(path)
    obs, actions = _concat(episodes, "observations"), _concat(episodes, "actions")
    log_probs, ids = _concat(episodes, "action_log_prob"), _concat(episodes, "policy_id")
    assert set(ids.tolist()) == {0, 1}
    with torch.no_grad():
        mu = actor.module(torch.as_tensor(obs)).clamp(-2.0, 2.0).double().numpy()
    for i in range(120):
        gauss = math.exp(_truncnorm_logpdf(float(actions[i, 0]), float(mu[i, 0]), 0.3, -2, 2))
        assert abs(log_probs[i] - math.log(0.2 / 4.0 + 0.8 * gauss)) < 1e-5


def test_probabilistic_actor_used_as_is():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), NormalParamExtractor())
    module = TensorDictModule(net, ["observation"], ["loc", "scale"])
    actor = ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -2.0, "high": 2.0},
        return_log_prob=True,
    )
    path = collect_dataset("Pendulum-v1", actor, 100, dataset_id="pendulum/tanh-v0", seed=4)
    episodes = _episodes(path)
    obs = torch.as_tensor(_concat(episodes, "observations"))
    actions = torch.as_tensor(_concat(episodes, "actions"))
    with torch.no_grad():
        dist = actor.get_dist(TensorDict({"observation": obs}, batch_size=[100]))
        expected = dist.log_prob(actions).reshape(100).double().numpy()
    np.testing.assert_allclose(_concat(episodes, "action_log_prob"), expected, atol=1e-5)
    assert "action_prob" not in episodes[0].infos


@pytest.mark.parametrize("kind", ["gaussian_noise", "probabilistic"])
def test_float32_policy_on_a_float64_mujoco_env(kind):
    """MuJoCo emits float64 observations; a float32 network acts on them, and the dataset
    keeps the env's own float64 values."""
    torch.manual_seed(0)
    if kind == "gaussian_noise":
        actor = TensorDictModule(torch.nn.Linear(4, 1), ["observation"], ["action"])
        policy = GaussianNoisePolicy(actor, gym.spaces.Box(-3.0, 3.0, (1,)), sigma=0.3)
    else:
        net = torch.nn.Sequential(torch.nn.Linear(4, 2), NormalParamExtractor())
        policy = ProbabilisticActor(
            TensorDictModule(net, ["observation"], ["loc", "scale"]),
            in_keys=["loc", "scale"],
            distribution_class=TanhNormal,
            distribution_kwargs={"low": -3.0, "high": 3.0},
        )
    path = collect_dataset("InvertedPendulum-v5", policy, 40, dataset_id=f"ip/{kind}-v0", seed=2)
    episodes = _episodes(path)
    assert episodes[0].observations.dtype == np.float64
    _replay_in_gymnasium("InvertedPendulum-v5", episodes, seed=2)


@pytest.mark.parametrize(
    "env_id, n_log", [("CartPole-v1", math.log(2)), ("Pendulum-v1", math.log(4))]
)
def test_default_policy_is_uniform(env_id, n_log):
    path = collect_dataset(env_id, None, 80, dataset_id=f"{env_id.lower()}/random-v0", seed=0)
    np.testing.assert_allclose(_concat(_episodes(path), "action_log_prob"), -n_log, rtol=1e-6)


def test_gymenv_instance_with_one_hot_actions():
    env = GymEnv("CartPole-v1")  # TorchRL's default: one-hot actions
    recorder = Recorder(UniformRandomPolicy(env.action_spec_unbatched))
    path = collect_dataset(env, recorder, 60, dataset_id="cartpole/onehot-v0", seed=5)
    steps = torch.stack(recorder.steps[-60:])
    stored = _concat(_episodes(path), "actions")
    np.testing.assert_array_equal(stored, steps["action"].long().argmax(-1).numpy())
    assert not env.is_closed  # a user's env is left open


def _all_arrays(path: Path) -> list[np.ndarray]:
    arrays = []
    for ep in _episodes(path):
        arrays += [ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations]
        arrays += [np.asarray(ep.infos[k]) for k in sorted(ep.infos)]
    return arrays


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_seeded_runs_are_identical_and_seeds_differ(env_id):
    if env_id == "CartPole-v1":
        factory = _mixture_factory
    else:
        actor = _pendulum_actor()

        def factory(env):
            return EpsilonGreedyPolicy(actor, env.action_spec_unbatched, epsilon=0.2, sigma=0.4)

    state = torch.get_rng_state()
    runs = [
        collect_dataset(env_id, factory, 150, dataset_id=f"det/{name}-v0", seed=seed)
        for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    a, b, c = (_all_arrays(p) for p in runs)
    assert len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(a, b)
    )
    assert len(a) != len(c) or any(x.tobytes() != y.tobytes() for x, y in zip(a, c))


def test_reference_scores_and_metadata(datasets_root):
    path = collect_dataset(
        "CartPole-v1",
        None,
        50,
        dataset_id="cartpole/ref-v0",
        ref_min_score=9.0,
        ref_max_score=500.0,
        description="tiny",
        author="D3",
    )
    metadata = minari.MinariDataset(path / "data").storage.metadata
    assert metadata["ref_min_score"] == 9.0 and metadata["ref_max_score"] == 500.0
    assert metadata["collection_seed"] == 0 and metadata["collection_steps"] == 50
    assert metadata["description"] == "tiny"
    assert '"id": "CartPole-v1"' in metadata["env_spec"]
    with pytest.raises(ValueError, match="together"):
        collect_dataset("CartPole-v1", None, 10, dataset_id="cartpole/ref-v1", ref_min_score=1.0)
    assert not (datasets_root / "cartpole" / "ref-v1").exists()


def test_loads_with_load_minari():
    load_minari = pytest.importorskip("torchrl_offline.data.minari").load_minari
    path = collect_dataset("CartPole-v1", _mixture_factory, 120, dataset_id="cartpole/load-v0")
    buffer = load_minari(path)
    data = buffer.storage[:]
    episodes = _episodes(path)
    np.testing.assert_array_equal(data["observation"].numpy(), _concat(episodes, "observations"))
    np.testing.assert_array_equal(data["action"].numpy(), _concat(episodes, "actions"))
    np.testing.assert_allclose(
        data["action_log_prob"].double().numpy(), _concat(episodes, "action_log_prob"), rtol=1e-6
    )
    assert bool(data["next", "truncated"][-1]) and bool(data["next", "done"][-1])


def test_interrupted_collection_leaves_no_dataset(datasets_root):
    before = set(Path(tempfile.gettempdir()).glob("torchrl_offline_collect_*"))
    with pytest.raises(KeyboardInterrupt):
        collect_dataset(
            "CartPole-v1",
            lambda env: Recorder(UniformRandomPolicy(env.action_spec_unbatched), fail_after=150),
            300,
            dataset_id="cartpole/cut-v0",
            frames_per_batch=100,
        )
    assert not (datasets_root / "cartpole" / "cut-v0").exists()
    leftovers = list(datasets_root.rglob("*")) if datasets_root.exists() else []
    assert leftovers == []
    # none new (other processes' stale scratch folders may be cleaned meanwhile)
    assert set(Path(tempfile.gettempdir()).glob("torchrl_offline_collect_*")) <= before
    with pytest.raises(FileNotFoundError):
        minari.load_dataset("cartpole/cut-v0")


def test_errors_and_overwrite(datasets_root):
    deterministic = TensorDictModule(_cartpole_greedy, ["observation"], ["action"])
    with pytest.raises(DatasetError, match="action_log_prob") as info:
        collect_dataset("CartPole-v1", deterministic, 20, dataset_id="cartpole/det-v0")
    assert info.value.field == "action_log_prob"
    assert not (datasets_root / "cartpole" / "det-v0").exists()
    with pytest.raises(TypeError, match="gymnasium id or a TorchRL env"):
        collect_dataset(object(), None, 10, dataset_id="cartpole/bad-v0")
    with pytest.raises(ValueError, match="env_kwargs"):
        collect_dataset(GymEnv("CartPole-v1"), None, 10, dataset_id="x-v0", env_kwargs={"a": 1})
    with pytest.raises(ValueError, match="num_steps"):
        collect_dataset("CartPole-v1", None, 0, dataset_id="cartpole/none-v0")
    path = collect_dataset("CartPole-v1", None, 20, dataset_id="cartpole/twice-v0", seed=0)
    with pytest.raises(FileExistsError):
        collect_dataset("CartPole-v1", None, 30, dataset_id="cartpole/twice-v0")
    collect_dataset("CartPole-v1", None, 30, dataset_id="cartpole/twice-v0", overwrite=True)
    assert minari.MinariDataset(path / "data").total_steps == 30


class _DictObsEnv(gym.Env):
    """A tiny env with a dict observation space (nested observation keys)."""

    observation_space = gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-5.0, 5.0, (2,), np.float32),
            "vel": gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
        }
    )
    action_space = gym.spaces.Discrete(3)

    def __init__(self, **kwargs):
        self.pos = np.zeros(2, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return {"pos": self.pos.copy(), "vel": np.zeros(1, np.float32)}, {}

    def step(self, action):
        velocity = np.full(1, (int(action) - 1) * 0.5, np.float32)
        self.pos = (self.pos + velocity).astype(np.float32)
        terminated = bool(np.abs(self.pos).max() > 2.0)
        return (
            {"pos": self.pos.copy(), "vel": velocity},
            float(-np.abs(self.pos).sum()),
            terminated,
            False,
            {},
        )


def test_dict_observations_become_nested_keys():
    if "D3DictObs-v0" not in gym.registry:
        gym.register("D3DictObs-v0", entry_point=_DictObsEnv, max_episode_steps=15)
    recorder = Recorder(UniformRandomPolicy(gym.spaces.Discrete(3)))
    path = collect_dataset("D3DictObs-v0", recorder, 40, dataset_id="dict/random-v0", seed=0)
    episodes = _episodes(path)
    steps = torch.stack(recorder.steps[-40:])
    for key in ("pos", "vel"):
        stored = np.concatenate([ep.observations[key][:-1] for ep in episodes])
        np.testing.assert_array_equal(stored, steps[key].numpy())
    np.testing.assert_array_equal(_concat(episodes, "actions"), steps["action"].numpy())
    assert episodes[-1].truncations[-1]


class _EndsAtTimeLimitEnv(gym.Env):
    """Terminates on exactly its 3rd step, which is also the registered time limit."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, **kwargs):
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, self.t / 10, np.float32), 1.0, self.t >= 3, False, {}


def test_termination_on_the_time_limit_step_is_stored_terminated():
    """Regression: TimeLimit also reports truncated there, and the collection raised
    'terminated and truncated both set' instead of writing the dataset."""
    if "R1EndsAtLimit-v0" not in gym.registry:
        gym.register("R1EndsAtLimit-v0", entry_point=_EndsAtTimeLimitEnv, max_episode_steps=3)
    path = collect_dataset("R1EndsAtLimit-v0", None, 8, dataset_id="limit/random-v0", seed=0)
    episodes = _episodes(path)
    assert [len(ep) for ep in episodes] == [3, 3, 2]
    for ep in episodes[:2]:
        assert ep.terminations.tolist() == [False, False, True]
        assert not ep.truncations.any()
    assert episodes[2].truncations.tolist() == [False, True]  # cut by the budget


class _ShiftedDiscreteEnv(_EndsAtTimeLimitEnv):
    action_space = gym.spaces.Discrete(3, start=1)


def test_discrete_actions_not_starting_at_zero_are_refused(datasets_root):
    """Regression: GymEnv ignores Discrete.start, so the env received action 0, outside its space."""
    if "R1Shifted-v0" not in gym.registry:
        gym.register("R1Shifted-v0", entry_point=_ShiftedDiscreteEnv)
    with pytest.raises(ValueError, match="does not start at 0"):
        collect_dataset("R1Shifted-v0", None, 5, dataset_id="shifted/random-v0")
    assert not (datasets_root / "shifted").exists()
