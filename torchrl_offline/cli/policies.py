"""Behaviour policies named on the command line: ``[WEIGHT*]KIND[:key=value,...]``.

Kinds:

- ``random``: uniformly random actions.
- ``scripted``: the env's scripted controller (see :data:`SCRIPTED_CONTROLLERS`) made
  stochastic: ``sigma=S`` adds truncated Gaussian noise (continuous actions), ``epsilon=E``
  acts at random with probability ``E`` (discrete actions; continuous ones also need
  ``sigma``).
- ``checkpoint``: the policy of a training checkpoint, ``path=FILE``; a stochastic actor is
  used as is, and ``sigma`` / ``epsilon`` run its deterministic action with noise instead.

Several ``--policy`` options make a :class:`~torchrl_offline.data.MixturePolicy`, with the
proportions given by their ``WEIGHT*`` prefixes (equal when none is given).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchrl_offline.cli.common import UsageError, parse_scalar

__all__ = [
    "POLICY_KINDS",
    "SCRIPTED_CONTROLLERS",
    "PolicySpec",
    "build_behavior_policy",
    "parse_policy_spec",
    "scripted_controller",
]

#: Policy kinds and the options each accepts.
POLICY_KINDS: dict[str, tuple[str, ...]] = {
    "random": (),
    "scripted": ("sigma", "epsilon"),
    "checkpoint": ("path", "sigma", "epsilon"),
}


def _pendulum() -> Any:
    from torchrl_offline.data.scripted import pendulum_swing_up

    return pendulum_swing_up()


def _cartpole() -> Any:
    from torchrl_offline.data.scripted import cartpole_controller

    return cartpole_controller()


#: Gymnasium env names (the id without its version) with a scripted controller.
SCRIPTED_CONTROLLERS: dict[str, Callable[[], Any]] = {
    "Pendulum": _pendulum,
    "CartPole": _cartpole,
}


@dataclass(frozen=True)
class PolicySpec:
    """One parsed ``--policy`` value.

    Attributes:
        kind: one of :data:`POLICY_KINDS`.
        weight: its mixture proportion, ``None`` when not given.
        options: its ``key=value`` options.
        text: the original text (for messages).
    """

    kind: str
    weight: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""


def parse_policy_spec(text: str) -> PolicySpec:
    """Parse ``[WEIGHT*]KIND[:key=value,...]``.

    Raises:
        CLIError: a malformed weight, an unknown kind or an option the kind does not take.

    Examples:
        >>> from torchrl_offline.cli.policies import parse_policy_spec
        >>> spec = parse_policy_spec("0.3*scripted:sigma=0.2")
        >>> spec.kind, spec.weight, spec.options
        ('scripted', 0.3, {'sigma': 0.2})
    """
    body = text.strip()
    weight = None
    if "*" in body:
        head, body = body.split("*", 1)
        try:
            weight = float(head)
        except ValueError:
            raise UsageError(
                f"--policy {text!r}: the mixture weight before '*' must be a number"
            ) from None
        if not weight >= 0:
            raise UsageError(f"--policy {text!r}: the mixture weight must be non-negative")
    kind, _, rest = body.partition(":")
    kind = kind.strip()
    if kind not in POLICY_KINDS:
        raise UsageError(
            f"--policy {text!r}: unknown policy kind {kind!r}; valid kinds: "
            f"{', '.join(POLICY_KINDS)}"
        )
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--policy {text!r}: option {item!r} is not key=value")
        if key not in POLICY_KINDS[kind]:
            allowed = ", ".join(POLICY_KINDS[kind]) or "none"
            raise UsageError(
                f"--policy {text!r}: {kind!r} takes no option {key!r} (options: {allowed})"
            )
        options[key] = value if key == "path" else parse_scalar(value)
        if key in ("sigma", "epsilon") and not isinstance(options[key], (int, float)):
            raise UsageError(f"--policy {text!r}: {key} must be a number, got {value!r}")
    if kind == "checkpoint" and "path" not in options:
        raise UsageError(f"--policy {text!r}: checkpoint needs path=FILE")
    return PolicySpec(kind, weight, options, text)


def _env_name(env_id: str) -> str:
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1])


def scripted_controller(env_id: str) -> Any:
    """The scripted (deterministic) controller of a gymnasium env id.

    Raises:
        CLIError: no controller for that env; the message lists the envs that have one.
    """
    name = _env_name(env_id)
    if name not in SCRIPTED_CONTROLLERS:
        raise UsageError(
            f"no scripted controller for {env_id!r}; envs with one: "
            f"{', '.join(SCRIPTED_CONTROLLERS)}"
        )
    return SCRIPTED_CONTROLLERS[name]()


def _noisy(actor: Any, action_spec: Any, spec: PolicySpec, discrete: bool) -> Any:
    """Wrap a deterministic actor so that each action has a known probability."""
    from torchrl_offline.data import EpsilonGreedyPolicy, GaussianNoisePolicy

    sigma, epsilon = spec.options.get("sigma"), spec.options.get("epsilon")
    try:
        if epsilon is not None:
            return EpsilonGreedyPolicy(actor, action_spec, epsilon=epsilon, sigma=sigma)
        if sigma is not None:
            return GaussianNoisePolicy(actor, action_spec, sigma=sigma)
    except ValueError as err:
        raise UsageError(f"--policy {spec.text!r}: {err}") from None
    need = "epsilon=E" if discrete else "sigma=S (or epsilon=E with sigma=S)"
    raise UsageError(
        f"--policy {spec.text!r}: a deterministic controller has no action probabilities; "
        f"add {need}"
    )


def _build_one(spec: PolicySpec, env: Any, env_id: str) -> Any:
    from torchrl_offline.data import UniformRandomPolicy, as_behavior_policy

    action_spec = env.action_spec_unbatched
    discrete = not action_spec.dtype.is_floating_point
    if spec.kind == "random":
        return UniformRandomPolicy(action_spec)
    if spec.kind == "scripted":
        return _noisy(scripted_controller(env_id), action_spec, spec, discrete)
    from torchrl_offline.cli.checkpoints import load_policy

    actor = load_policy(spec.options["path"], env, env_id)
    if "sigma" in spec.options or "epsilon" in spec.options:
        return _noisy(actor, action_spec, spec, discrete)
    try:
        return as_behavior_policy(actor)
    except TypeError:
        raise UsageError(
            f"--policy {spec.text!r}: the checkpoint's policy is deterministic; add "
            f"{'epsilon=E' if discrete else 'sigma=S'} to record action probabilities"
        ) from None


def build_behavior_policy(
    specs: Sequence[PolicySpec], env: Any, *, env_id: str, per: str = "episode"
) -> Any:
    """The behaviour policy described by one or several parsed ``--policy`` values.

    Args:
        specs: the parsed specs; several make a mixture.
        env: the TorchRL env the policy acts in.
        env_id: its gymnasium id (to find a scripted controller).
        per: a mixture draws its component per ``"episode"`` or per ``"step"``.

    Raises:
        CLIError: any invalid spec, or weights given for some components but not others.
    """
    from torchrl_offline.data import MixturePolicy

    if not specs:
        raise UsageError("no --policy given")
    policies = [_build_one(spec, env, env_id) for spec in specs]
    weights = [spec.weight for spec in specs]
    if len(policies) == 1:
        return policies[0]
    if any(w is None for w in weights) and not all(w is None for w in weights):
        raise UsageError(
            "--policy: give a WEIGHT* prefix to every mixture component or to none "
            f"(got {', '.join(spec.text for spec in specs)})"
        )
    if all(w is None for w in weights):
        weights = [1.0] * len(policies)
    if sum(weights) <= 0:
        raise UsageError("--policy: the mixture weights sum to zero")
    return MixturePolicy(policies, weights, per=per)
