from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from torchrl_offline.data import DatasetError
from torchrl_offline.data.validate import check_action_in_space, check_lengths, validate_transitions


def test_valid_transitions_pass(make_transitions):
    td = make_transitions([3, 2], terminated_episodes=[0])
    validate_transitions(td, action_space=gym.spaces.Box(-1, 1, (2,), np.float32))


@pytest.mark.parametrize(
    "key", ["observation", ("next", "observation"), ("next", "reward"), "action"]
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_named_with_index(make_transitions, key, bad):
    td = make_transitions([3, 3])
    td.get(key)[4].view(-1)[0] = bad
    with pytest.raises(DatasetError, match=r"index 14") as err:
        validate_transitions(td, offset=10)
    name = key if isinstance(key, str) else ".".join(key)
    assert err.value.field == name and err.value.index == 14
    assert name in str(err.value)


def test_terminated_and_truncated_both_set(make_transitions):
    td = make_transitions([3, 3], terminated_episodes=[0])
    td["next", "truncated"][2] = True
    td["next", "done"][2] = True
    with pytest.raises(DatasetError, match="both set at index 2"):
        validate_transitions(td)


def test_done_must_match(make_transitions):
    td = make_transitions([3])
    td["next", "done"][1] = True
    with pytest.raises(DatasetError, match="next.done.*index 1"):
        validate_transitions(td)


def test_reward_shape(make_transitions):
    td = make_transitions([3])
    td = td.exclude(("next", "reward")).set(("next", "reward"), torch.zeros(3, 2))
    with pytest.raises(DatasetError, match=r"\[N, 1\]"):
        validate_transitions(td)


def test_box_action_out_of_bounds(make_transitions):
    td = make_transitions([4])
    td["action"][2, 1] = 1.5
    with pytest.raises(DatasetError, match="index 2 is outside"):
        validate_transitions(td, action_space=gym.spaces.Box(-1, 1, (2,), np.float32))


def test_box_bound_rounding_tolerated():
    space = gym.spaces.Box(np.float64(-0.1), np.float64(0.1), (1,), np.float64)
    check_action_in_space(torch.tensor([[0.1]], dtype=torch.float32), space)


def test_discrete_actions():
    space = gym.spaces.Discrete(3, start=1)
    check_action_in_space(torch.tensor([1, 2, 3]), space)
    with pytest.raises(DatasetError, match="index 1"):
        check_action_in_space(torch.tensor([1, 0, 3]), space)
    check_action_in_space(torch.tensor([[0, 1, 0], [1, 0, 0]]), space)  # one-hot
    with pytest.raises(DatasetError, match="index 1"):
        check_action_in_space(torch.tensor([[0, 1, 0], [1, 1, 0]]), space)


def test_multidiscrete_and_multibinary():
    check_action_in_space(torch.tensor([[0, 2]]), gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(DatasetError, match="index 0"):
        check_action_in_space(torch.tensor([[0, 3]]), gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(DatasetError, match="index 1"):
        check_action_in_space(torch.tensor([[0, 1], [2, 0]]), gym.spaces.MultiBinary(2))


def test_check_lengths():
    assert check_lengths({"a": [1, 2], "b": [3, 4]}) == 2
    with pytest.raises(DatasetError, match="'b' has 1 rows") as err:
        check_lengths({"a": [1, 2], "b": [3]})
    assert err.value.field == "b" and err.value.index == 1


def test_half_bounded_box_still_checks_its_finite_bound():
    """Regression: the tolerance of a dimension grew with its largest |bound|, so an infinite
    lower bound made the upper bound unchecked."""
    space = gym.spaces.Box(low=np.array([-np.inf, 0.0]), high=np.array([1.0, np.inf]))
    check_action_in_space(torch.tensor([[-1e30, 1e30], [1.0, 0.0]]), space)
    with pytest.raises(DatasetError, match="index 1") as err:
        check_action_in_space(torch.tensor([[0.0, 0.0], [1.5, 0.0]]), space)
    assert err.value.index == 1
    with pytest.raises(DatasetError, match="index 0"):
        check_action_in_space(torch.tensor([[0.0, -0.5]]), space)


def test_tuple_actions_are_checked_leaf_by_leaf(make_transitions):
    """Regression: a Tuple / Dict action space was not checked at all."""
    td = make_transitions([2, 1]).exclude("action")
    td.set(("action", "0"), torch.tensor([0, 1, 1]))
    td.set(("action", "1"), torch.tensor([[0.5], [0.0], [-0.5]]))
    space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(-1.0, 1.0, (1,))))
    validate_transitions(td, action_space=space)
    td["action", "1"][2] = 3.0
    with pytest.raises(DatasetError, match="index 7") as err:
        validate_transitions(td, action_space=space, offset=5)
    assert err.value.field == "action.1"
