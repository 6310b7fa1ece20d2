"""A trained policy as a plain torch module: raw observations in, actions out.

:class:`TensorPolicy` wraps the TorchRL policy of a trained algorithm (a
:class:`~torchrl_offline.trainers.normalization.NormalizedPolicy` when observation
normalisation is on, so the normalisation is inside) into ``forward(observation) ->
action`` on tensors: a float32 batch ``[batch, obs_dim]`` to ``[batch, *action_shape]``,
greedy, with continuous actions clipped to the action spec's bounds. It is what
:meth:`~torchrl_offline.deploy.TrainedPolicy.predict` runs and what
:func:`~torchrl_offline.deploy.export_policy` writes to a file, so both give the same
actions.

Greedy means TorchRL's ``ExplorationType.DETERMINISTIC``: the mean (IQL's and AWAC's
Gaussian actors), the tanh of the mean (``TanhNormal`` actors: CQL, EDAC, SAC-N, Cal-QL),
the action itself (TD3+BC, ReBRAC, BC), the most probable or highest-valued action
(discrete algorithms). BCQ and BEAR act with the best, under the first critic, of
``num_action_samples`` candidate actions sampled from their VAE or actor; here their
standard-normal draws are replaced by fixed codes (:class:`FixedNoise`): ``n`` codes drawn
once from ``seed``, the same for every state. The action is then a deterministic function
of the observation (the same in any batch, in every call and in the exported file); each
state still chooses among ``n`` independent standard-normal candidates, as in the papers,
but a different ``seed`` gives other candidates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn
from torchrl.data import Bounded, TensorSpec
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_offline.deploy.errors import DeployError

__all__ = ["FixedNoise", "TensorPolicy"]

_OBS = "observation"
_ACTION = "action"


class FixedNoise:
    """Stands in for a module's ``noise(shape, like)`` (the standard-normal draws of BCQ's
    VAE and BEAR's actor): the same ``n`` codes for every state.

    A request ``[n, *batch, d]`` gets ``n`` codes of size ``d``, drawn once from a generator
    seeded with ``seed`` and broadcast over the batch. The codes are stored in ``owner``'s
    buffers (they travel with it to a device and into an exported graph); draw every shape
    the policy asks for (one call in eager mode) before tracing or exporting it.

    Examples:
        >>> import torch
        >>> from torchrl_offline.deploy.tensor_policy import FixedNoise
        >>> noise = FixedNoise(torch.nn.Module(), seed=0)
        >>> draws = noise((4, 2, 3), torch.zeros(()))
        >>> draws.shape, bool((draws[:, 0] == draws[:, 1]).all())
        (torch.Size([4, 2, 3]), True)
        >>> torch.equal(noise((4, 3), torch.zeros(())), draws[:, 0])
        True
    """

    def __init__(self, owner: nn.Module, *, seed: int = 0) -> None:
        self.owner = owner
        self.seed = int(seed)

    def codes(self, num: int, dim: int) -> Tensor:
        """The ``[num, dim]`` codes (drawn at the first request)."""
        name = f"noise_codes_{num}x{dim}"
        codes = getattr(self.owner, name, None)
        if codes is None:
            generator = torch.Generator().manual_seed(self.seed)
            codes = torch.randn(num, dim, generator=generator)
            self.owner.register_buffer(name, codes)
        return codes

    def __call__(self, shape: Sequence[int], like: Tensor) -> Tensor:
        shape = tuple(shape)
        if len(shape) < 2:
            raise DeployError(f"fixed noise needs a [samples, ..., dim] shape, got {shape}")
        num, dim = int(shape[0]), int(shape[-1])
        codes = self.codes(num, dim).to(dtype=like.dtype, device=like.device)
        return codes.reshape(num, *([1] * (len(shape) - 2)), dim).expand(*shape)


def _noise_sources(policy: nn.Module) -> list[nn.Module]:
    """The modules of ``policy`` that draw their random numbers with a ``noise`` method,
    the networks of a TorchRL loss included (``convert_to_functional`` keeps them as plain
    attributes, outside the loss's submodules)."""
    found: list[nn.Module] = []
    seen: set[int] = set()
    stack = [policy]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if callable(getattr(type(module), "noise", None)):
            found.append(module)
        stack.extend(module.children())
        stack.extend(v for v in vars(module).values() if isinstance(v, nn.Module))
    return found


class TensorPolicy(nn.Module):
    """A trained policy's greedy action as a torch module on tensors (see the module's
    documentation for what greedy means for each algorithm).

    Args:
        policy: the TorchRL policy (``Algorithm.policy``): reads ``"observation"``, writes
            ``"action"``; a ``NormalizedPolicy`` takes raw observations.
        observation_spec: the flat observation spec it was trained on.
        action_spec: its action spec; the actions of a ``Bounded`` one are clipped to its
            bounds.

    Keyword Args:
        seed (int): seed of the fixed candidate codes of BCQ and BEAR (unused by the
            other policies).

    Raises:
        DeployError: a policy that reads more than the flat ``"observation"``.

    Examples:
        >>> import torch
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.deploy.tensor_policy import TensorPolicy
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> algo = build_algorithm("td3_bc", Unbounded(shape=(3,)), Bounded(-2.0, 2.0, (1,)),
        ...                        hidden_sizes=(8,))
        >>> module = TensorPolicy(algo.policy, algo.observation_spec, algo.action_spec)
        >>> module(torch.zeros(5, 3)).shape
        torch.Size([5, 1])
    """

    def __init__(
        self,
        policy: nn.Module,
        observation_spec: TensorSpec,
        action_spec: TensorSpec,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        in_keys = list(getattr(policy, "in_keys", [_OBS]))
        if in_keys != [_OBS]:
            raise DeployError(
                f"the policy reads {in_keys}; only policies of one flat 'observation' entry "
                "can act on an observation tensor"
            )
        if len(observation_spec.shape) != 1:
            raise DeployError(
                f"the observation spec has shape {tuple(observation_spec.shape)}; only flat "
                "observations [obs_dim] are supported"
            )
        self.policy = policy
        self.observation_shape = tuple(int(d) for d in observation_spec.shape)
        self.action_spec = action_spec
        self.continuous = isinstance(action_spec, Bounded) and action_spec.dtype.is_floating_point
        if self.continuous:
            self.register_buffer("action_low", action_spec.space.low.detach().float().clone())
            self.register_buffer("action_high", action_spec.space.high.detach().float().clone())
        self._noise_sources = _noise_sources(policy)
        self.noise = FixedNoise(self, seed=seed)
        self.eval()
        # one call now, outside any trace: draws the fixed codes and fills the losses'
        # caches of detached parameters (a trace would otherwise store fake tensors)
        with torch.no_grad():
            self(torch.zeros(2, *self.observation_shape))

    @property
    def fixed_noise(self) -> bool:
        """Whether the policy samples candidates (BCQ, BEAR), here from fixed codes."""
        return bool(self._noise_sources)

    @classmethod
    def from_algorithm(cls, algorithm: Any, *, seed: int = 0) -> TensorPolicy:
        """The :class:`TensorPolicy` of a built or loaded
        :class:`~torchrl_offline.trainers.algorithms.Algorithm`."""
        return cls(algorithm.policy, algorithm.observation_spec, algorithm.action_spec, seed=seed)

    @contextlib.contextmanager
    def _fixed_noise(self) -> Iterator[None]:
        """Replace the sources' ``noise`` method by :attr:`noise` (an instance attribute,
        so that the modules' state dicts do not change), and restore it."""
        for source in self._noise_sources:
            source.__dict__["noise"] = self.noise
        try:
            yield
        finally:
            for source in self._noise_sources:
                source.__dict__.pop("noise", None)

    def _act(self, observation: Tensor, exploration: ExplorationType) -> Tensor:
        with set_exploration_type(exploration):
            data = TensorDict({_OBS: observation}, batch_size=observation.shape[:-1])
            action = self.policy(data).get(_ACTION)
        if self.continuous:
            action = torch.maximum(torch.minimum(action, self.action_high), self.action_low)
        return action

    def forward(self, observation: Tensor) -> Tensor:
        """The greedy actions at ``observation`` (``[batch, obs_dim]`` float32)."""
        with self._fixed_noise():
            return self._act(observation, ExplorationType.DETERMINISTIC)

    def sample(self, observation: Tensor) -> Tensor:
        """Actions sampled from the policy (``ExplorationType.RANDOM``; BCQ and BEAR draw
        fresh candidates), from torch's global generator; clipped like :meth:`forward`.
        Policies without a distribution (TD3+BC, BC, discrete CQL) return the greedy
        action."""
        return self._act(observation, ExplorationType.RANDOM)
