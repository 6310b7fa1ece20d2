"""Finite MDPs with exactly known policy values, and data sampled from them.

Each MDP has random transition, reward and termination tables. The value of a policy
``pi`` is the solution of the Bellman equation ``(I - gamma * P_pi) V = r_pi``, where
``P_pi`` carries the continuation probability (episodes end by termination with
probability ``term[s, a]`` after each step), so an episode's expected discounted return
from ``s0 ~ d0`` is exactly ``d0 @ V``. Sampling is vectorised over all episodes at once.
Observations are one-hot states (float), so any estimator or model sees tabular features.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import ProbabilisticActor


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine
    (measured: a small behaviour-model fit 0.23 s with 1 thread, 11 s with 2 under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class FiniteMDP:
    P: torch.Tensor  # [S, A, S] next-state probabilities
    R: torch.Tensor  # [S, A] mean rewards
    term: torch.Tensor  # [S, A] termination probabilities
    d0: torch.Tensor  # [S] initial-state distribution
    reward_noise: float = 0.1

    @property
    def num_states(self) -> int:
        return self.P.shape[0]

    @property
    def num_actions(self) -> int:
        return self.P.shape[1]

    def q_values(self, pi: torch.Tensor, gamma: float) -> torch.Tensor:
        """Exact Q^pi [S, A] by solving the Bellman equation."""
        cont = self.P * (1 - self.term)[..., None]  # [S, A, S]
        p_pi = torch.einsum("sa,sat->st", pi, cont)
        r_pi = (pi * self.R).sum(-1)
        v = torch.linalg.solve(torch.eye(self.num_states, dtype=torch.float64) - gamma * p_pi, r_pi)
        return self.R + gamma * torch.einsum("sat,t->sa", cont, v)

    def value(self, pi: torch.Tensor, gamma: float) -> float:
        q = self.q_values(pi, gamma)
        return float(self.d0 @ (pi * q).sum(-1))

    def sample(
        self, mu: torch.Tensor, n_episodes: int, *, seed: int, max_steps: int = 200
    ) -> TensorDict:
        """Episodes of behaviour policy ``mu`` [S, A], in dataset order, TorchRL layout."""
        g = torch.Generator().manual_seed(seed)
        s = torch.multinomial(self.d0, n_episodes, replacement=True, generator=g)
        alive = torch.ones(n_episodes, dtype=torch.bool)
        cols: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("s", "a", "r", "s2", "term", "alive")
        }
        for _ in range(max_steps):
            a = torch.multinomial(mu[s], 1, generator=g)[:, 0]
            r = self.R[s, a] + self.reward_noise * torch.randn(
                n_episodes, generator=g, dtype=torch.float64
            )
            s2 = torch.multinomial(self.P[s, a], 1, generator=g)[:, 0]
            end = torch.rand(n_episodes, generator=g, dtype=torch.float64) < self.term[s, a]
            for k, v in zip(cols, (s, a, r, s2, end, alive.clone())):
                cols[k].append(v)
            alive = alive & ~end
            s = s2
            if not alive.any():
                break
        stacked = {k: torch.stack(v, 1) for k, v in cols.items()}  # [E, T]
        mask = stacked.pop("alive")
        flat = {k: v[mask] for k, v in stacked.items()}  # episode-major order
        n = flat["s"].shape[0]
        episode = torch.arange(n_episodes)[:, None].expand_as(mask)[mask]
        lengths = mask.sum(1)
        last = torch.zeros(n, dtype=torch.bool)
        last[lengths.cumsum(0) - 1] = True
        terminated = flat["term"] & last
        truncated = last & ~terminated
        eye = torch.eye(self.num_states)
        logp = torch.log(mu[flat["s"], flat["a"]]).float()
        td = TensorDict(
            {
                "observation": eye[flat["s"]],
                "state": flat["s"],
                "action": flat["a"],
                "episode": episode,
                "action_log_prob": logp,
                ("next", "observation"): eye[flat["s2"]],
                ("next", "reward"): flat["r"].float()[:, None],
                ("next", "terminated"): terminated[:, None],
                ("next", "truncated"): truncated[:, None],
                ("next", "done"): (terminated | truncated)[:, None],
            },
            batch_size=[n],
        )
        return td


def random_mdp(
    num_states: int = 5, num_actions: int = 3, *, seed: int = 0, term: float = 0.25
) -> FiniteMDP:
    g = torch.Generator().manual_seed(seed)
    # Normalised exponentials: uniform (Dirichlet(1)) rows, drawn from a private generator.
    P = -torch.log(
        torch.rand(num_states, num_actions, num_states, generator=g, dtype=torch.float64)
    )
    P = P / P.sum(-1, keepdim=True)
    R = torch.rand(num_states, num_actions, generator=g, dtype=torch.float64)
    t = term * (0.5 + torch.rand(num_states, num_actions, generator=g, dtype=torch.float64))
    d0 = torch.rand(num_states, generator=g, dtype=torch.float64) + 0.1
    return FiniteMDP(P=P, R=R, term=t, d0=d0 / d0.sum())


def random_policy(
    num_states: int, num_actions: int, *, seed: int, temperature: float = 1.0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_states, num_actions, generator=g, dtype=torch.float64) / temperature
    return logits.softmax(-1)


def tabular_actor(pi: torch.Tensor, *, one_hot: bool = False) -> ProbabilisticActor:
    """A TorchRL ProbabilisticActor whose action distribution at one-hot state s is pi[s]."""
    from torchrl.modules import OneHotCategorical

    lin = nn.Linear(pi.shape[0], pi.shape[1], bias=False)
    with torch.no_grad():
        lin.weight.copy_(pi.log().T.float())
    return ProbabilisticActor(
        TensorDictModule(lin, ["observation"], ["logits"]),
        in_keys=["logits"],
        distribution_class=OneHotCategorical if one_hot else torch.distributions.Categorical,
    )


class TabularQ:
    """The exact Q model of a finite MDP (implements the ``QModel`` protocol)."""

    def __init__(self, q: torch.Tensor, pi: torch.Tensor):
        self.q, self.pi = q, pi

    def q_values(self, td):
        s = td["observation"].argmax(-1)
        return self.q[s, td["action"].long()]

    def state_values(self, td):
        s = td["observation"].argmax(-1)
        return (self.pi[s] * self.q[s]).sum(-1)


@dataclass
class Problem:
    mdp: FiniteMDP
    mu: torch.Tensor
    pi: torch.Tensor
    gamma: float

    @property
    def true_value(self) -> float:
        return self.mdp.value(self.pi, self.gamma)

    @property
    def exact_q(self) -> TabularQ:
        return TabularQ(self.mdp.q_values(self.pi, self.gamma), self.pi)

    def actor(self, **kwargs) -> ProbabilisticActor:
        return tabular_actor(self.pi, **kwargs)


def weight_growth(mdp: FiniteMDP, mu: torch.Tensor, pi: torch.Tensor) -> float:
    """Spectral radius of ``sum_a pi^2 / mu * P * (1 - term)``: the importance weights have
    finite variance (so sample means of IS estimates behave) only when it is below 1."""
    m = torch.einsum("sa,sat->st", pi**2 / mu, mdp.P * (1 - mdp.term)[..., None])
    return float(torch.linalg.eigvals(m).abs().max())


def make_problem() -> Problem:
    """5 states, 3 actions, gamma 0.9; the evaluation policy differs from the behaviour
    policy (its value is 0.064 lower) while the weights keep a finite variance."""
    mdp = random_mdp(seed=0, term=0.4)
    mu = random_policy(5, 3, seed=1, temperature=2.0)
    pi = 0.5 * random_policy(5, 3, seed=9) + 0.5 * mu
    assert weight_growth(mdp, mu, pi) < 0.7
    return Problem(mdp=mdp, mu=mu, pi=pi, gamma=0.9)


@pytest.fixture(scope="session")
def problem() -> Problem:
    return make_problem()


@pytest.fixture(scope="session")
def mdp_tools() -> SimpleNamespace:
    """The helpers of this module (test modules cannot import a conftest reliably)."""
    return SimpleNamespace(
        FiniteMDP=FiniteMDP,
        Problem=Problem,
        TabularQ=TabularQ,
        make_problem=make_problem,
        random_mdp=random_mdp,
        random_policy=random_policy,
        tabular_actor=tabular_actor,
        weight_growth=weight_growth,
    )
