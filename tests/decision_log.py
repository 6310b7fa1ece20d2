"""A tiny synthetic log of decisions (a contextual bandit) with known propensities and a
known reward model, shared by the data and OPE tests of one-step logs."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Items (actions) and context features of :func:`decision_log`.
N_ITEMS, N_FEATURES = 4, 3


def reward_model(context: np.ndarray) -> np.ndarray:
    """The expected reward of every item in every context, ``[rows, N_ITEMS]``."""
    weights = np.linspace(-1.0, 1.0, N_FEATURES * N_ITEMS).reshape(N_FEATURES, N_ITEMS)
    return context @ weights + np.arange(N_ITEMS) * 0.25


def softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(-1, keepdims=True)
    return np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)


def logging_probs(context: np.ndarray) -> np.ndarray:
    """The logging policy of :func:`decision_log`: every item's probability, ``[rows, N_ITEMS]``."""
    return softmax(0.5 * reward_model(context))


def policy_value(probs: np.ndarray, context: np.ndarray) -> float:
    """The exact value of a policy with item probabilities ``probs`` ``[rows, N_ITEMS]`` on
    ``context``: its mean expected reward under :func:`reward_model`."""
    return float((np.asarray(probs) * reward_model(context)).sum(-1).mean())


def policy_probs(policy, context: np.ndarray) -> np.ndarray:
    """Every item's probability under a TorchRL ``policy`` (its ``get_dist``) at ``context``."""
    import torch
    from tensordict import TensorDict

    with torch.no_grad():
        td = TensorDict({"observation": torch.as_tensor(context)}, [len(context)])
        return policy.get_dist(td).probs.numpy()


def decision_log(n: int = 200, *, seed: int = 0, positions: int = 3) -> dict[str, np.ndarray]:
    """``n`` decisions of a softmax logging policy over :func:`reward_model`'s scores:
    context (``observation``), the item shown (``action``), its propensity
    (``action_prob``), the slot it was shown in (``position``) and a noisy reward."""
    rng = np.random.default_rng(seed)
    context = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    probs = logging_probs(context)
    action = np.array([rng.choice(N_ITEMS, p=p) for p in probs])
    reward = reward_model(context)[np.arange(n), action] + 0.1 * rng.normal(size=n)
    return {
        "observation": context,
        "action": action,
        "action_prob": probs[np.arange(n), action].astype(np.float32),
        "position": rng.integers(0, positions, n),
        "reward": reward.astype(np.float32),
    }


def decision_frame(log: dict[str, np.ndarray], **rename: str) -> pd.DataFrame:
    """``log`` as a DataFrame of scalar columns (``observation_0``, ..., ``action``,
    ``action_prob``, ``position``, ``reward``), renamed by ``rename``."""
    columns = {f"observation_{i}": log["observation"][:, i] for i in range(N_FEATURES)}
    columns.update({k: v for k, v in log.items() if k != "observation"})
    return pd.DataFrame(columns).rename(columns=rename)
