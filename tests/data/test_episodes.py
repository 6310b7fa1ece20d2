"""Entries derived from the episode order: Monte Carlo returns and next actions."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from torchrl_offline.data import DatasetError, make_replay_buffer
from torchrl_offline.data.episodes import (
    MC_RETURN,
    MC_TAIL_DISCOUNT,
    MC_TAIL_OBSERVATION,
    NEXT_ACTION,
    EpisodeOrderError,
    derive_keys,
    episode_ends,
    monte_carlo_returns,
    td_lambda_returns,
    with_derived_keys,
)


def _episodes(lengths, *, obs_dim=2, seed=0, terminal_last=True):
    """Consecutive episodes whose steps follow each other (obs[t+1] == next_obs[t])."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        states = torch.randn(length + 1, obs_dim, generator=g)
        done = torch.zeros(length, 1, dtype=torch.bool)
        done[-1] = True
        rows.append(
            TensorDict(
                {
                    "observation": states[:-1],
                    "action": torch.randn(length, 1, generator=g),
                    ("next", "observation"): states[1:],
                    ("next", "reward"): torch.randn(length, 1, generator=g),
                    ("next", "done"): done,
                    ("next", "terminated"): done & terminal_last,
                    ("next", "truncated"): done & (not terminal_last),
                },
                [length],
            )
        )
    return torch.cat(rows)


def _loop_returns(reward, ends, gamma):
    out, running = [], 0.0
    for r, end in zip(reversed(reward.reshape(-1).tolist()), reversed(ends.tolist())):
        running = r + (0.0 if end else gamma * running)
        out.append(running)
    return torch.tensor(out[::-1]).reshape(reward.shape)


def test_monte_carlo_returns_match_a_plain_loop_for_short_and_long_episodes():
    data = _episodes([1, 3, 300, 2, 700, 5])  # two episodes longer than one block of 256
    ends = episode_ends(data)
    out = derive_keys(data, [MC_RETURN], gamma=0.97)
    expected = _loop_returns(data["next", "reward"], ends, 0.97)
    torch.testing.assert_close(out[MC_RETURN], expected, atol=1e-5, rtol=1e-5)
    assert out[MC_RETURN].shape == data["next", "reward"].shape


def test_next_action_is_the_following_step_of_the_same_episode():
    data = _episodes([3, 2])
    out = derive_keys(data, [NEXT_ACTION])
    a = data["action"]
    torch.testing.assert_close(out[NEXT_ACTION], torch.stack([a[1], a[2], a[2], a[4], a[4]]))


def test_an_episode_id_change_ends_an_episode_without_a_done_flag():
    data = _episodes([4])
    data["episode"] = torch.tensor([0, 0, 1, 1])
    data["observation"][2] = 5.0  # the new episode starts elsewhere
    data["next", "done"][:] = False
    data["next", "terminated"][:] = False
    ends = episode_ends(data)
    assert ends.tolist() == [False, True, False, True]


def test_the_end_of_the_data_cuts_the_last_episode():
    data = _episodes([4])[:3]  # the last step is not done: a truncated episode
    out = derive_keys(data, [MC_RETURN], gamma=1.0)
    r = data["next", "reward"].reshape(-1)
    assert out[MC_RETURN][-1].item() == pytest.approx(r[-1].item())
    assert out[MC_RETURN][0].item() == pytest.approx(r.sum().item(), abs=1e-5)


def test_shuffled_rows_are_refused_with_the_first_index():
    data = _episodes([5, 5])
    shuffled = data[torch.tensor([0, 1, 2, 4, 3, 5, 6, 7, 8, 9])]
    with pytest.raises(EpisodeOrderError, match="step 2 does not end its episode") as err:
        derive_keys(shuffled, [MC_RETURN])
    assert err.value.index == 2
    assert isinstance(err.value, DatasetError)


def test_data_without_any_episode_boundary_is_refused():
    data = _episodes([6]).exclude(("next", "observation"))
    data["next", "done"][:] = False
    with pytest.raises(EpisodeOrderError, match="no episode boundaries") as err:
        derive_keys(data, [MC_RETURN])
    assert "'mc_return' (Monte Carlo returns)" in str(err.value)


def test_a_missing_source_entry_and_an_unknown_key_are_named():
    data = _episodes([3]).exclude(("next", "reward"))
    with pytest.raises(DatasetError, match="no 'next.reward' entry|no \\('next', 'reward'\\)"):
        derive_keys(data, [MC_RETURN])
    with pytest.raises(ValueError, match="cannot derive 'advantage'"):
        derive_keys(data, ["advantage"])


def test_monte_carlo_returns_of_one_step_episodes_are_the_rewards():
    reward = torch.randn(10, 1)
    out = monte_carlo_returns(reward, torch.ones(10, dtype=torch.bool), gamma=0.9)
    torch.testing.assert_close(out, reward)


@pytest.mark.parametrize("memmap", [False, True])
def test_a_buffer_with_derived_keys_samples_them_and_shares_the_stored_entries(tmp_path, memmap):
    data = _episodes([3, 4, 5])
    if memmap:
        data = data.memmap_(tmp_path / "data")
    rb = make_replay_buffer(data, batch_size=6)
    out = with_derived_keys(rb, [MC_RETURN, NEXT_ACTION], gamma=0.9)
    assert out.sampler is rb.sampler and out.batch_size == rb.batch_size
    stored = out.storage._storage
    assert stored["observation"].data_ptr() == rb.storage._storage["observation"].data_ptr()
    batch = out.sample()
    expected = derive_keys(data, [MC_RETURN, NEXT_ACTION], gamma=0.9)
    torch.testing.assert_close(batch[MC_RETURN], expected[MC_RETURN][batch["index"]])
    torch.testing.assert_close(batch[NEXT_ACTION], expected[NEXT_ACTION][batch["index"]])
    assert with_derived_keys(rb, [], gamma=0.9) is rb


def test_tail_discount_and_observation_bootstrap_only_cut_episodes():
    data = _episodes([3, 2], terminal_last=False)  # both cut by a time limit
    data["next", "terminated"][2] = True  # the first one terminated after all
    data["next", "truncated"][2] = False
    out = derive_keys(data, [MC_TAIL_DISCOUNT, MC_TAIL_OBSERVATION], gamma=0.5)
    assert out[MC_TAIL_DISCOUNT].squeeze(-1).tolist() == [0.0, 0.0, 0.0, 0.25, 0.5]
    torch.testing.assert_close(out[MC_TAIL_OBSERVATION][3], data["next", "observation"][4])
    torch.testing.assert_close(out[MC_TAIL_OBSERVATION][0], data["next", "observation"][2])


def _loop_td_lambda(reward, ends, next_value, terminated, gamma, lmbda):
    """The TD(lambda) recurrence written out, one step at a time from the end."""
    r, v = reward.reshape(-1).tolist(), next_value.reshape(-1).tolist()
    end, term = ends.reshape(-1).tolist(), terminated.reshape(-1).tolist()
    out, following = [0.0] * len(r), 0.0
    for t in reversed(range(len(r))):
        keep = 0.0 if term[t] else 1.0
        if end[t]:
            out[t] = r[t] + gamma * keep * v[t]
        else:
            out[t] = r[t] + gamma * keep * ((1 - lmbda) * v[t] + lmbda * following)
        following = out[t]
    return torch.tensor(out).reshape(reward.shape)


@pytest.mark.parametrize("lmbda", [0.0, 0.5, 0.95, 1.0])
def test_td_lambda_returns_match_a_plain_loop(lmbda):
    """Terminated and cut episodes of lengths 1 to 700 (longer than a block of 256)."""
    g = torch.Generator().manual_seed(1)
    lengths = [1, 4, 300, 2, 700, 7, 1, 257]
    ends = torch.zeros(sum(lengths), dtype=torch.bool)
    ends[torch.tensor(lengths).cumsum(0) - 1] = True
    terminated = ends & (torch.rand(ends.shape, generator=g) > 0.5)
    terminated[-1] = False  # the last episode is cut by the end of the data
    reward = torch.randn(len(ends), 1, generator=g)
    next_value = torch.randn(len(ends), 1, generator=g) * 10
    out = td_lambda_returns(
        reward, ends, next_value, terminated=terminated, gamma=0.97, lmbda=lmbda
    )
    expected = _loop_td_lambda(reward, ends, next_value, terminated, 0.97, lmbda)
    assert out.shape == reward.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_td_lambda_at_its_ends_is_the_bootstrapped_return_and_the_one_step_target():
    data = _episodes([3, 300, 5], terminal_last=False)  # cut episodes: bootstrapped
    ends = episode_ends(data)
    reward, term = data["next", "reward"], data["next", "terminated"]
    value = torch.randn(len(ends), 1, generator=torch.Generator().manual_seed(2))
    derived = derive_keys(data, [MC_RETURN, MC_TAIL_DISCOUNT], gamma=0.9)
    tail = value[torch.tensor([2] * 3 + [302] * 300 + [307] * 5)]
    mc = derived[MC_RETURN] + derived[MC_TAIL_DISCOUNT] * tail
    one = td_lambda_returns(reward, ends, value, terminated=term, gamma=0.9, lmbda=1.0)
    torch.testing.assert_close(one, mc, atol=1e-4, rtol=1e-5)
    zero = td_lambda_returns(reward, ends, value, terminated=term, gamma=0.9, lmbda=0.0)
    torch.testing.assert_close(zero, reward + 0.9 * value, atol=1e-5, rtol=1e-5)


def test_td_lambda_refuses_a_bad_lambda_and_mismatched_lengths():
    ends = torch.tensor([False, True])
    with pytest.raises(ValueError, match="lmbda"):
        td_lambda_returns(torch.ones(2), ends, torch.ones(2), terminated=None, gamma=0.9, lmbda=2)
    with pytest.raises(ValueError, match="one entry per step"):
        td_lambda_returns(torch.ones(2), ends, torch.ones(3), terminated=None, gamma=0.9, lmbda=1)
