r"""Policy learning from logged bandit feedback: importance-weighted policy optimisation.

A log of one-step decisions (a context, the action the live system took, the probability
it took it with, the reward) estimates the value of any other policy by importance
sampling; counterfactual risk minimisation (Swaminathan & Joachims, 2015) trains a policy
by maximising that estimate. Papers:

- POEM: A. Swaminathan and T. Joachims, "Batch Learning from Logged Bandit Feedback
  through Counterfactual Risk Minimization", JMLR 16, 2015 (clipped IPS with a variance
  penalty);
- Norm-POEM: A. Swaminathan and T. Joachims, "The Self-Normalized Estimator for
  Counterfactual Learning", NeurIPS 2015 (the self-normalised estimator, which removes
  the "propensity overfitting" of IPS);
- BanditNet: T. Joachims, A. Swaminathan and M. de Rijke, "Deep Learning with Logged
  Bandit Feedback", ICLR 2018 (the self-normalised objective trained by SGD on deep
  networks, as IPS with the rewards translated by a constant).

The data are :func:`~torchrl_offline.data.from_logged` logs read with ``horizon=1``:
every step terminal, the logging policy's propensity of the logged action in
``"action_log_prob"`` (or ``"action_prob"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch import Tensor
from torchrl.data.tensor_specs import TensorSpec
from torchrl.data.utils import _find_action_space
from torchrl.objectives.common import LossModule

from torchrl_offline.objectives._checks import _key_str, check_reduction, count_update
from torchrl_offline.objectives._keys import LazyInKeys
from torchrl_offline.objectives._likelihood import LikelihoodActor
from torchrl_offline.objectives.common import OfflineLossError, check_batch
from torchrl_offline.objectives.declaration import AlgorithmDeclaration, ParamGroup

__all__ = ["BANDIT_IPS_ALGORITHM", "ESTIMATORS", "BanditIPSLoss"]

#: The policy-value estimators the loss maximises.
ESTIMATORS = ("snips", "ips")


class BanditIPSLoss(LikelihoodActor, LazyInKeys, LossModule):
    r"""Importance-weighted policy optimisation on logs of one-step decisions
    (counterfactual risk minimisation: POEM, Norm-POEM, BanditNet).

    With :math:`\pi_\theta` the policy, :math:`p_i` the logged propensity of the logged
    action :math:`a_i` in context :math:`x_i`, :math:`r_i` its reward, the importance
    weight :math:`w_i = \pi_\theta(a_i \mid x_i) / p_i`, optionally clipped
    :math:`\bar w_i = \min(w_i, M)` (POEM's clipping; a clipped weight passes no
    gradient), over a batch of :math:`n` decisions:

    .. math::

        \hat V_{\text{IPS}} = \frac{1}{n} \sum_i (r_i - \lambda)\, \bar w_i, \qquad
        \hat V_{\text{SNIPS}} = \frac{\sum_i r_i \bar w_i}{\sum_i \bar w_i},
        \qquad L_\pi = -\hat V,

    and, with ``variance_penalty`` :math:`\kappa > 0`, POEM's sample-variance penalty
    :math:`L_{\text{var}} = \kappa \sqrt{\widehat{\operatorname{Var}}(\hat V)}`: for
    IPS :math:`\widehat{\operatorname{Var}} = s^2(u) / n` with :math:`u_i = (r_i -
    \lambda) \bar w_i` (POEM), for SNIPS the delta-method estimate
    :math:`\sum_i (r_i - \hat V)^2 \bar w_i^2 / (\sum_i \bar w_i)^2` (Norm-POEM).

    Defaults: the self-normalised estimator without clipping or variance penalty, the
    objective BanditNet trains deep networks with by SGD (Joachims et al., 2018; its
    Lagrangian form is IPS with the rewards translated by :math:`\lambda`, which the
    batch's self-normalisation replaces) and Norm-POEM's estimator (Swaminathan &
    Joachims, 2015b), which both recommend over plain IPS: with IPS a policy can raise
    the estimate by putting mass on whatever was logged when all rewards are positive
    ("propensity overfitting"). ``estimator="ips"`` with ``max_weight`` :math:`M` and
    ``variance_penalty`` :math:`\kappa` is POEM, whose :math:`M` and :math:`\kappa` the
    paper chooses per dataset (by validation); ``baseline`` :math:`\lambda` is
    BanditNet's translation of the IPS objective.

    Every step of the batch must be terminal (one decision per episode) and carry the
    logging policy's propensity; the loss says so when one does not.

    Args:
        actor_network (ProbabilisticTensorDictSequential): a categorical actor
            (``Categorical`` over indices or ``OneHotCategorical``), e.g.
            ``NetworkFactory.categorical_actor()``: a softmax over actions.

    Keyword Args:
        action_space (str or TensorSpec): ``"categorical"`` or ``"one-hot"`` (or a
            matching spec), the encoding of the batch's actions. Defaults to
            ``"categorical"``.
        estimator (str, optional): ``"snips"`` or ``"ips"``. Defaults to ``"snips"``.
        max_weight (float, optional): :math:`M`, the clip of the importance weights;
            ``None`` for none. Defaults to ``None``.
        baseline (float, optional): :math:`\lambda`, subtracted from the rewards in the
            IPS objective (no effect on SNIPS, which is invariant to it). Defaults to
            ``0.0``.
        variance_penalty (float, optional): :math:`\kappa`; ``0`` writes no
            ``loss_variance``. Defaults to ``0.0``.
        reduction (str, optional): ``"mean"``, ``"sum"`` or ``"none"`` (the per-decision
            terms of :math:`L_\pi`, whose mean is :math:`L_\pi`: for SNIPS
            :math:`-r_i \bar w_i / \overline{w}`). ``loss_variance`` is a batch
            statistic, always a scalar. Defaults to ``"mean"``.
        check_inputs (bool, optional): check the batch (keys, one-step, propensities in
            ``(0, 1]``) and the losses for NaN/inf. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import ProbabilisticActor
        >>> from torchrl_offline.objectives.bandit_ips import BanditIPSLoss
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(torch.nn.Linear(3, 4), ["observation"], ["logits"]),
        ...     in_keys=["logits"], distribution_class=torch.distributions.Categorical)
        >>> loss = BanditIPSLoss(actor)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, 3), "action": torch.randint(4, (8,)),
        ...     "action_log_prob": torch.full((8,), 0.25).log(),  # a uniform logger
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "terminated"): torch.ones(8, 1, dtype=torch.bool)}, [8])
        >>> out = loss(batch)
        >>> out["loss_actor"].backward()
        >>> sorted(out.keys())
        ['effective_sample_size', 'estimated_value', 'log_prob', 'loss_actor', 'weight']
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read by the loss, configurable with ``set_keys``.

        Attributes:
            action (NestedKey): the logged action. Defaults to ``"action"``.
            action_log_prob (NestedKey): the logging policy's log-probability of the
                logged action (the key TorchRL collectors write). Defaults to
                ``"action_log_prob"``.
            action_prob (NestedKey): its probability, read when the batch has no
                ``action_log_prob``. Defaults to ``"action_prob"``.
            reward (NestedKey): the reward, under ``"next"``. Defaults to ``"reward"``.
            terminated (NestedKey): the terminal flag, under ``"next"``; every step of a
                one-step log is terminal. Defaults to ``"terminated"``.
        """

        action: NestedKey = "action"
        action_log_prob: NestedKey = "action_log_prob"
        action_prob: NestedKey = "action_prob"
        reward: NestedKey = "reward"
        terminated: NestedKey = "terminated"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    _DIAGNOSTICS = ["estimated_value", "weight", "effective_sample_size", "log_prob"]

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        *,
        action_space: str | TensorSpec = "categorical",
        estimator: str = "snips",
        max_weight: float | None = None,
        baseline: float = 0.0,
        variance_penalty: float = 0.0,
        reduction: str | None = None,
        check_inputs: bool = True,
    ) -> None:
        reduction = check_reduction(reduction)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        if max_weight is not None and not max_weight > 0:
            raise ValueError(f"max_weight must be > 0 or None, got {max_weight}")
        if not variance_penalty >= 0:
            raise ValueError(f"variance_penalty must be >= 0, got {variance_penalty}")
        super().__init__()
        self._in_keys = None
        self.action_space = _find_action_space(action_space)
        if self.action_space not in ("one_hot", "categorical"):
            raise ValueError(
                f"action_space must be 'one-hot' or 'categorical', got {self.action_space!r}"
            )
        self.estimator = estimator
        self.max_weight = None if max_weight is None else float(max_weight)
        self.baseline = float(baseline)
        self.variance_penalty = float(variance_penalty)
        self.reduction = reduction
        self.check_inputs = check_inputs
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self._num_calls = 0

    @property
    def out_keys(self) -> list[str]:
        """The entries ``forward`` writes (``loss_variance`` only with a variance penalty)."""
        terms = ["loss_actor"] + (["loss_variance"] if self.variance_penalty > 0 else [])
        return terms + self._DIAGNOSTICS

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._in_keys = None

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            self.tensor_keys.action_log_prob,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.terminated),
            *self.actor_network.in_keys,
        ]
        self._in_keys = list(dict.fromkeys(unravel_key(k) for k in keys))

    # ------------------------------------------------------------------ inputs
    def _propensity_log(self, tensordict: TensorDictBase) -> Tensor:
        """``log p_i``: the logged log-probability, else the log of the logged probability."""
        keys = self.tensor_keys
        log_p = tensordict.get(keys.action_log_prob, None)
        if log_p is None:
            p = tensordict.get(keys.action_prob, None)
            if p is None:
                raise OfflineLossError(
                    f"the batch has no propensity: neither {_key_str(keys.action_log_prob)} nor "
                    f"{_key_str(keys.action_prob)}. Importance-weighted policy learning needs "
                    "the logging policy's probability of each logged action (a column "
                    "action_prob or action_log_prob of the log read by from_logged)"
                )
            log_p = p.log()
        return log_p.reshape(tensordict.batch_size).to(torch.get_default_dtype())

    def _reward(self, tensordict: TensorDictBase) -> Tensor:
        reward = tensordict.get(("next", self.tensor_keys.reward))
        return reward.reshape(tensordict.batch_size).to(torch.get_default_dtype())

    def _check_decisions(self, tensordict: TensorDictBase, log_p: Tensor) -> None:
        """Every step terminal and every propensity in ``(0, 1]``, in one host read."""
        terminated = tensordict.get(("next", self.tensor_keys.terminated), None)
        if terminated is None:
            raise OfflineLossError(
                f"batch is missing the key {_key_str(('next', self.tensor_keys.terminated))}: "
                "the loss learns from one-step logs, whose every step is terminal"
            )
        not_terminal = ~terminated.reshape(tensordict.batch_size).bool()
        bad_p = ~((log_p > -math.inf) & (log_p <= 1e-6))
        if not bool((not_terminal | bad_p).any()):
            return
        if bool(not_terminal.any()):
            i = int(not_terminal.reshape(-1).nonzero()[0, 0])
            raise OfflineLossError(
                f"the step at batch index {i} is not terminal: importance-weighted bandit "
                "learning needs a log of one-step decisions (every step a whole episode; "
                "read the log with from_logged(..., horizon=1) or --horizon 1)"
            )
        i = int(bad_p.reshape(-1).nonzero()[0, 0])
        raise OfflineLossError(
            f"the logged propensity at batch index {i} is {log_p.reshape(-1)[i].exp().item():g}, "
            "not a probability in (0, 1]"
        )

    # ------------------------------------------------------------------ losses
    def _weights(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor, Tensor]:
        """``(w_bar, log pi(a|x), reward)`` for the batch (``w_bar`` with gradient)."""
        log_p = self._propensity_log(tensordict)
        if self.check_inputs:
            self._check_decisions(tensordict, log_p)
        log_pi = self._log_prob(tensordict, self._dist(tensordict))
        weight = (log_pi - log_p).exp()
        if self.max_weight is not None:
            weight = weight.clamp_max(self.max_weight)  # no gradient where clipped
        return weight, log_pi, self._reward(tensordict)

    def _estimate(self, weight: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]:
        """``(per-decision terms, estimate)``: the terms' mean is the estimate."""
        if self.estimator == "ips":
            terms = (reward - self.baseline) * weight
            return terms, terms.mean()
        terms = reward * weight / weight.mean()
        return terms, terms.mean()

    def _variance(self, weight: Tensor, reward: Tensor, value: Tensor) -> Tensor:
        n = weight.numel()
        if self.estimator == "ips":
            u = (reward - self.baseline) * weight
            var = u.var(unbiased=True) / n if n > 1 else u.new_zeros(())
        else:
            var = ((reward - value) ** 2 * weight**2).sum() / weight.sum() ** 2
        return var.clamp_min(0).sqrt()

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """:math:`L_\\pi = -\\hat V`, the negative estimated value of the policy.

        Returns:
            ``(loss_actor, metadata)`` with the detached ``"estimated_value"``, mean
            ``"weight"``, ``"effective_sample_size"`` (:math:`(\\sum \\bar w)^2 / \\sum
            \\bar w^2`) and mean ``"log_prob"`` of the logged actions.
        """
        loss, metadata, _ = self._actor_loss(tensordict)
        return loss, metadata

    def _actor_loss(self, tensordict: TensorDictBase):
        weight, log_pi, reward = self._weights(tensordict)
        terms, value = self._estimate(weight, reward)
        w = weight.detach()
        metadata = {
            "estimated_value": value.detach(),
            "weight": w.mean(),
            "effective_sample_size": w.sum() ** 2 / (w**2).sum().clamp_min(1e-30),
            "log_prob": log_pi.detach().mean(),
        }
        return self._reduce_loss(-terms), metadata, (weight, reward, value)

    def variance_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """POEM's penalty :math:`\\kappa \\sqrt{\\widehat{\\operatorname{Var}}(\\hat V)}` (a
        scalar; zero when ``variance_penalty`` is 0).

        Returns:
            ``(loss_variance, {})``.
        """
        weight, _, reward = self._weights(tensordict)
        _, value = self._estimate(weight, reward)
        return self.variance_penalty * self._variance(weight, reward, value), {}

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes ``loss_actor`` (and ``loss_variance`` with a variance penalty)."""
        if self.check_inputs:
            required = [
                k for k in self.in_keys if k != unravel_key(self.tensor_keys.action_log_prob)
            ]
            check_batch(tensordict, required, finite=False)
        loss_actor, metadata, (weight, reward, value) = self._actor_loss(tensordict)
        out = {"loss_actor": loss_actor, **metadata}
        if self.variance_penalty > 0:
            out["loss_variance"] = self.variance_penalty * self._variance(weight, reward, value)
        td_out = TensorDict(out)
        count_update(self, "_num_calls", td_out, batch=tensordict)
        return td_out


# ------------------------------------------------------------------------- declaration
#: Importance-weighted policy learning on a one-step log: a softmax (categorical) policy
#: over the discrete actions, self-normalised IPS (BanditNet / Norm-POEM), Adam at 3e-4.
BANDIT_IPS_ALGORITHM = AlgorithmDeclaration(
    name="bandit_ips",
    loss_class=BanditIPSLoss,
    networks=lambda nets, hp: {"actor_network": nets.categorical_actor()},
    optimizer=(ParamGroup("actor", "actor_lr", "actor_network_params"),),
    loss_terms=("loss_actor", "loss_variance"),
    action="discrete",
    defaults={"actor_lr": 3e-4},
    action_spec_argument="action_space",
    target_update=False,
)
