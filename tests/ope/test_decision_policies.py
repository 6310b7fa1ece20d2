"""Policies from probability tables and scoring models: exact probabilities, sampling that
matches them, greedy mode, TorchRL interface, and unbiased IS/WIS on a synthetic one-step log."""

from __future__ import annotations

import math
import re

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_offline.data.storage import make_replay_buffer
from torchrl_offline.ope import (
    DoublyRobust,
    EpsilonGreedyPolicy,
    EvaluationPolicy,
    ImportanceSampling,
    OPEError,
    SoftmaxPolicy,
    TablePolicy,
    TopKPolicy,
    WeightedImportanceSampling,
)

N_CONTEXTS, N_ACTIONS = 4, 5


def _scores_table() -> torch.Tensor:
    """Fixed item scores per context, with a tie for the best item in context 1 and a tie
    at the k=2 boundary in context 2."""
    return torch.tensor(
        [
            [0.5, 2.0, 1.0, -1.0, 0.0],
            [3.0, 3.0, 1.0, 0.0, 0.0],
            [2.0, 1.0, 1.0, 1.0, -3.0],
            [0.0, 0.1, 0.2, 0.3, 0.4],
        ]
    )


def _observations(ids: torch.Tensor) -> torch.Tensor:
    """Column 0: the context id; the rest: its one-hot (the scorer's features)."""
    return torch.cat([ids[:, None].float(), nn.functional.one_hot(ids, N_CONTEXTS).float()], 1)


def _scorer(obs: torch.Tensor) -> torch.Tensor:
    return obs[:, 1:] @ _scores_table()


def _policies() -> dict[str, object]:
    table = torch.softmax(torch.arange(N_CONTEXTS * N_ACTIONS).reshape(N_CONTEXTS, -1) / 7.0, -1)
    linear = nn.Linear(N_CONTEXTS, N_ACTIONS, bias=False)
    with torch.no_grad():
        linear.weight.copy_(_scores_table().T)
    return {
        "table": TablePolicy(table),
        "softmax": SoftmaxPolicy(lambda obs: linear(obs[:, 1:]), temperature=0.7),
        "epsilon_greedy": EpsilonGreedyPolicy(_scorer, epsilon=0.3),
        "top_k": TopKPolicy(_scorer, k=2),
    }


ALL_CONTEXTS = _observations(torch.arange(N_CONTEXTS))


def test_epsilon_greedy_probabilities_are_exact_and_split_ties():
    p = EpsilonGreedyPolicy(_scorer, epsilon=0.3).probs(ALL_CONTEXTS)
    assert p[0].tolist() == pytest.approx([0.06, 0.76, 0.06, 0.06, 0.06])
    assert p[1].tolist() == pytest.approx([0.41, 0.41, 0.06, 0.06, 0.06])


def test_top_k_is_uniform_over_the_top_k_and_zero_outside():
    pi = TopKPolicy(_scorer, k=2)
    p = pi.probs(ALL_CONTEXTS)
    assert p[0].tolist() == pytest.approx([0.0, 0.5, 0.5, 0.0, 0.0])
    # context 2: item 0 is above the 2nd score, items 1-3 tie at it and share one slot
    assert p[2].tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6, 0.0])
    lp = pi.log_prob(ALL_CONTEXTS, torch.tensor([3, 0, 4, 4]))
    assert lp.tolist() == [-math.inf, math.log(0.5), -math.inf, math.log(0.5)]


def test_softmax_log_prob_is_log_softmax_of_scores_over_temperature():
    pi = SoftmaxPolicy(_scorer, temperature=0.5)
    actions = torch.tensor([1, 0, 4, 2])
    expected = torch.log_softmax(_scores_table().double() / 0.5, -1)[torch.arange(4), actions]
    torch.testing.assert_close(pi.log_prob(ALL_CONTEXTS, actions), expected)


@pytest.mark.parametrize("name", ["table", "softmax", "epsilon_greedy", "top_k"])
def test_sampling_frequencies_match_the_probabilities(name):
    pi = _policies()[name]
    n = 40_000
    draws = pi.sample(ALL_CONTEXTS, num_samples=n, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (n, N_CONTEXTS)
    freq = nn.functional.one_hot(draws, N_ACTIONS).double().mean(0)
    p = pi.probs(ALL_CONTEXTS)
    # 6 binomial standard errors: a deviation that large has probability < 1e-8
    assert ((freq - p).abs() <= 6 * (p * (1 - p) / n).sqrt() + 1e-12).all()
    assert (freq[p == 0] == 0).all()


@pytest.mark.parametrize("name", ["table", "softmax", "epsilon_greedy", "top_k"])
def test_actor_writes_action_and_its_log_prob_and_greedy_mode_is_most_probable(name):
    pi = _policies()[name]
    td = TensorDict({"observation": ALL_CONTEXTS}, [N_CONTEXTS])
    out = pi(td.clone())
    torch.testing.assert_close(out["action_log_prob"], pi.log_prob(ALL_CONTEXTS, out["action"]))
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        greedy = pi(td.clone())["action"]
    p = pi.probs(ALL_CONTEXTS)
    assert torch.equal(greedy, pi.greedy_action(ALL_CONTEXTS))
    assert torch.equal(p[torch.arange(N_CONTEXTS), greedy], p.max(-1).values)
    # EvaluationPolicy takes it unchanged, with the same exact log-probabilities
    logged = td.set("action", torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(
        EvaluationPolicy(pi).log_prob(logged), pi.log_prob(ALL_CONTEXTS, logged["action"])
    )
    torch.testing.assert_close(EvaluationPolicy(pi).action_probs(logged), p)


def test_table_by_context_and_position():
    probs = torch.tensor([[[1.0, 0.0], [0.25, 0.75]], [[0.5, 0.5], [0.0, 1.0]]])
    pi = TablePolicy(probs, position_key="position")
    assert pi.in_keys == ["observation", "position"]
    obs, pos = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
    assert pi.log_prob(obs, torch.tensor([1, 1, 1]), pos).exp().tolist() == [0.0, 0.75, 1.0]
    td = TensorDict({"observation": obs[:, None].float(), "position": pos}, [3])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert pi(td)["action"].tolist() == [0, 1, 1]


def test_table_over_a_tuple_of_context_features():
    probs = torch.zeros(2, 3, 2, dtype=torch.float64)
    probs[..., 0] = 1.0
    probs[1, 2] = torch.tensor([0.4, 0.6], dtype=torch.float64)
    pi = TablePolicy(probs, context_features=(2, 0))  # probs[obs[:, 2], obs[:, 0], action]
    obs = torch.tensor([[2.0, 9.0, 1.0], [2.0, 9.0, 0.0]])
    assert pi.probs(obs).tolist() == [[0.4, 0.6], [1.0, 0.0]]


def test_bad_tables_and_inputs_are_refused_naming_the_row():
    with pytest.raises(OPEError, match=r"Row \[1\] .* summing to 0.9"):
        TablePolicy([[0.5, 0.5], [0.5, 0.4]])
    with pytest.raises(OPEError, match=r"Row \[0, 1\] .* negative"):
        TablePolicy([[[1.0, 0.0], [1.5, -0.5]]])
    pi = TablePolicy([[0.5, 0.5], [0.2, 0.8]], position_key="position")
    with pytest.raises(OPEError, match="position 3 at row 1 is outside the 2 positions"):
        pi.log_prob(torch.zeros(2), torch.tensor([0, 1]), torch.tensor([0, 3]))
    ctx = TablePolicy([[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(OPEError, match=r"observation\[:, 0\] 2 at row 2 is outside"):
        ctx.log_prob(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]))
    with pytest.raises(OPEError, match="action 5 at row 3 is outside the 5 actions"):
        TopKPolicy(_scorer, k=2).log_prob(ALL_CONTEXTS, torch.tensor([0, 0, 0, 5]))
    with pytest.raises(ValueError, match="temperature"):
        SoftmaxPolicy(_scorer, temperature=0.0)
    with pytest.raises(OPEError, match="k=6"):
        TopKPolicy(_scorer, k=6).probs(ALL_CONTEXTS)


def _bandit_log(n: int, seed: int) -> tuple[TensorDict, torch.Tensor, torch.Tensor]:
    """A one-step log: contexts, a logging softmax with known propensities, Bernoulli clicks.

    Returns the transitions (every row a whole episode: terminal, next observation =
    observation), the context distribution and the click probabilities."""
    g = torch.Generator().manual_seed(seed)
    context_probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    # the scorer's items are the better ones, so the policies differ from the logging one
    click = torch.sigmoid(2 * _scores_table() - 2 + torch.randn(N_CONTEXTS, N_ACTIONS, generator=g))
    logging = torch.softmax(torch.randn(N_CONTEXTS, N_ACTIONS, generator=g) * 0.5, -1)
    ids = torch.multinomial(context_probs, n, replacement=True, generator=g)
    actions = torch.multinomial(logging[ids], 1, generator=g).squeeze(-1)
    reward = torch.bernoulli(click[ids, actions], generator=g)[:, None]
    obs = _observations(ids)
    done = torch.ones(n, 1, dtype=torch.bool)
    td = TensorDict(
        {
            "observation": obs,
            "action": actions,
            "action_log_prob": logging[ids, actions].log(),
            "episode": torch.arange(n),
            ("next", "observation"): obs.clone(),
            ("next", "reward"): reward,
            ("next", "done"): done,
            ("next", "terminated"): done.clone(),
            ("next", "truncated"): torch.zeros_like(done),
        },
        [n],
    )
    return td, context_probs.double(), click.double()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["table", "softmax", "epsilon_greedy", "top_k"])
def test_is_and_wis_recover_the_true_value_of_each_policy(name):
    td, context_probs, click = _bandit_log(4000, seed=1)
    pi = _policies()[name]
    # the exact value: sum over contexts and items of P(context) pi(item | context) P(click)
    truth = float(context_probs @ (pi.probs(ALL_CONTEXTS) * click).sum(-1))
    weights = (pi.log_prob(td["observation"], td["action"]) - td["action_log_prob"]).exp()
    se = float((weights * td["next", "reward"].squeeze(-1)).std() / math.sqrt(len(td)))
    logging_value = float(td["next", "reward"].mean())
    if name != "table":  # the estimate must move from the logging policy's value to pi's
        assert abs(truth - logging_value) > 8 * se
    rb = make_replay_buffer(td)
    for estimator in (ImportanceSampling, WeightedImportanceSampling):
        result = estimator(pi, gamma=1.0, n_bootstrap=50).estimate(rb)
        assert abs(result.value - truth) < 4 * se, (estimator.name, result.value, truth, se)
    if name == "top_k":  # logged items outside the top 2 are -inf log-prob: weight exactly 0
        iw = ImportanceSampling(pi, gamma=1.0).importance_weights(rb)
        outside = ~torch.isfinite(pi.log_prob(td["observation"], td["action"]))
        assert outside.any() and (iw.trajectory_weights[outside] == 0).all()


def test_scorer_reads_the_position_and_the_actor_takes_any_batch_shape():
    def by_slot(obs, position):  # slot 0 prefers item 0, slot 1 item 2
        return nn.functional.one_hot(2 * position, 3).double() * 5 + obs

    pi = EpsilonGreedyPolicy(by_slot, epsilon=0.0, position_key="position")
    assert pi.in_keys == ["observation", "position"]
    obs = torch.zeros(2, 3)
    assert pi.log_prob(obs, torch.tensor([0, 2]), torch.tensor([0, 1])).tolist() == [0.0, 0.0]
    one = TensorDict({"observation": torch.zeros(3), "position": torch.tensor(1)}, [])
    out = pi(one)
    assert out["action"].shape == () and out["action"].item() == 2
    grid = TensorDict(
        {"observation": torch.zeros(2, 4, 3), "position": torch.ones(2, 4, dtype=torch.long)},
        [2, 4],
    )
    assert (pi(grid)["action"] == 2).all() and pi(grid)["action_log_prob"].shape == (2, 4)
    with pytest.raises(OPEError, match="reads positions"):
        pi.probs(obs)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_doubly_robust_with_the_true_q_is_unbiased_for_a_top_k_policy():
    td, context_probs, click = _bandit_log(4000, seed=3)
    pi = _policies()["top_k"]
    truth = float(context_probs @ (pi.probs(ALL_CONTEXTS) * click).sum(-1))

    class TrueClickModel:
        def q_values(self, batch):
            return click[batch["observation"][:, 0].long(), batch["action"]]

        def state_values(self, batch):
            return (pi.probs(batch["observation"]) * click[batch["observation"][:, 0].long()]).sum(
                -1
            )

    result = DoublyRobust(pi, TrueClickModel(), gamma=1.0, n_bootstrap=50).estimate(td)
    # within about 4 standard errors (the 95% interval spans about 4 of them)
    assert abs(result.value - truth) < 2 * (result.ci_high - result.ci_low)


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("action", 4, "logged action 4 at transition 6 is outside the policy's 4 actions"),
        ("position", 3, "position 3 at row 6 is outside the 3 positions"),
    ],
)
def test_an_importance_estimator_names_the_first_logged_row_the_policy_cannot_score(
    tmp_path, column, value, words
):
    """On a log of decisions (one row, one transition), a logged item outside the table or
    a position the table has no row for is an OPEError naming the row, never a silent 0."""
    from tests.decision_log import N_ITEMS, decision_log
    from torchrl_offline.data.logged import from_logged

    log = decision_log(20, positions=3)
    log[column][6] = value
    buffer = from_logged(log, path=tmp_path / "d", horizon=1)
    table = TablePolicy(torch.full((3, N_ITEMS), 1.0 / N_ITEMS), position_key="position")
    for estimator in (ImportanceSampling, WeightedImportanceSampling):
        with pytest.raises(OPEError, match=re.escape(words)) as err:
            estimator(table, n_bootstrap=10).estimate(buffer)
        assert err.value.index == 6
