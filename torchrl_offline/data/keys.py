"""The tensordict keys every offline dataset of this package uses (TorchRL's own)."""

from __future__ import annotations

__all__ = [
    "ACTION",
    "ACTION_LOG_PROB",
    "ACTION_PROB",
    "BEHAVIOR_PROBS",
    "DONE",
    "EPISODE",
    "NEXT_OBSERVATION",
    "OBSERVATION",
    "POSITION",
    "REWARD",
    "TERMINATED",
    "TRAINING_KEYS",
    "TRUNCATED",
    "key_name",
]

OBSERVATION = "observation"
ACTION = "action"
EPISODE = "episode"
ACTION_LOG_PROB = "action_log_prob"
ACTION_PROB = "action_prob"
#: The slot of a decision in a recommendation list (logs of ranked decisions), an integer.
POSITION = "position"
#: The logging policy's probability of every action (a vector per decision), when logged.
BEHAVIOR_PROBS = "behavior_probs"
NEXT_OBSERVATION = ("next", "observation")
REWARD = ("next", "reward")
DONE = ("next", "done")
TERMINATED = ("next", "terminated")
TRUNCATED = ("next", "truncated")
#: The entries of a transition every training batch holds, whatever its source (the
#: dataset, online episodes, model rollouts).
TRAINING_KEYS = (OBSERVATION, ACTION, NEXT_OBSERVATION, REWARD, DONE, TERMINATED)


def key_name(key: str | tuple[str, ...]) -> str:
    """Render a (possibly nested) tensordict key for error messages: ``("next", "reward")`` -> ``next.reward``."""
    return key if isinstance(key, str) else ".".join(key)
