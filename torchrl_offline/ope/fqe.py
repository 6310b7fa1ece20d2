r"""Fitted Q Evaluation (Le, Voloshin and Yue, ICML 2019): the direct method of OPE.

:class:`FQE` is the estimator: it fits :class:`~torchrl_offline.ope.fqe_loss.FQELoss` (the
TD regression of :math:`Q^\pi` on the evaluation policy's Bellman target) on a replay
buffer with a small seeded loop, and returns an
:class:`~torchrl_offline.ope.result.OPEResult` whose value is the mean of
:math:`V^\pi(s_0) = \mathbb{E}_{a \sim \pi} Q(s_0, a)` over the initial states of the
logged episodes. Its confidence interval comes from a bootstrap over refits: the critic
is refitted on resamples of the logged episodes (all refits in one batched ensemble), so
the interval carries the fit's sensitivity to the data, not only the spread of the
initial states. A fitted :class:`FQE` is also the Q model that
:class:`~torchrl_offline.ope.doubly_robust.DoublyRobust` takes (``q_values`` and
``state_values``).

:class:`FQELoss` is re-exported here, so ``from torchrl_offline.ope.fqe import FQELoss``
keeps working.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import Tensor
from torchrl.data import ReplayBuffer
from torchrl.data.tensor_specs import TensorSpec
from torchrl.objectives.utils import HardUpdate, SoftUpdate

from torchrl_offline.data.stats import stored_transitions
from torchrl_offline.objectives.common import check_batch, find_action_spec
from torchrl_offline.ope.episodes import to_episodes
from torchrl_offline.ope.fqe_loss import FQELoss, _discrete_space
from torchrl_offline.ope.policy import check_policy_mode, discrete_action_start
from torchrl_offline.ope.result import OPEError, OPEResult
from torchrl_offline.ope.uncertainty import bootstrap_interval, student_t_ppf

__all__ = ["FQE", "FQELoss"]

#: Intervals :class:`FQE` offers: over refits on resampled episodes, or over the initial
#: states of one fit (which ignores the critic's error).
FQE_INTERVALS = ("refit", "initial_states")


def _is_index(action: Tensor) -> bool:
    """Whether discrete actions are indices (``[N]`` or ``[N, 1]`` integers), not one-hot."""
    if action.dtype.is_floating_point or action.dtype == torch.bool:
        return False
    return action.ndim == 1 or action.shape[-1] == 1


def _fresh_copy(critic: TensorDictModule) -> TensorDictModule:
    """A copy of ``critic`` with its layers re-initialised (``reset_parameters``; a layer
    without one keeps its weights), drawing from torch's global generator."""
    fresh = copy.deepcopy(critic)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh


def _episode_resamples(
    episode: Tensor, n_resamples: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Bootstrap resamples of the episodes, as counts.

    Args:
        episode: ``[N]`` the episode id of every transition.

    Returns:
        ``(ids, counts, weights)``: the ``[U]`` sorted episode ids, ``[n_resamples, U]``
        how often each episode is drawn in each resample (``U`` draws with replacement),
        and ``[n_resamples, N]`` float32 the count of each transition's episode.
    """
    ids, inverse = torch.unique(episode.reshape(-1), return_inverse=True)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(ids.numel(), (n_resamples, ids.numel()), generator=generator)
    counts = torch.zeros(n_resamples, ids.numel()).scatter_add_(1, draws, torch.ones(draws.shape))
    return ids, counts, counts[:, inverse]


def _default_critic(
    observation_dim: int, action_dim: int, n_actions: int | None, num_cells: Sequence[int]
) -> TensorDictModule:
    from torchrl.modules import MLP

    if n_actions is not None:
        return TensorDictModule(
            MLP(
                in_features=observation_dim,
                out_features=n_actions,
                num_cells=list(num_cells),
                activation_class=torch.nn.ReLU,
            ),
            in_keys=["observation"],
            out_keys=["state_action_value"],
        )
    return TensorDictModule(
        MLP(
            in_features=observation_dim + action_dim,
            out_features=1,
            num_cells=list(num_cells),
            activation_class=torch.nn.ReLU,
        ),
        in_keys=["observation", "action"],
        out_keys=["state_action_value"],
    )


class FQE:
    r"""Fitted Q Evaluation estimator: fits :class:`FQELoss` on logged data, then averages
    ``V^pi(s_0)`` over the episodes' initial states.

    :meth:`estimate` fits a critic (``num_steps`` Adam updates on minibatches of the
    stored transitions, shuffled epochs without replacement, or the whole dataset at every
    update when it holds at most ``batch_size`` transitions; target network refreshed every
    ``target_update_interval`` updates or Polyak-averaged with ``tau``) and returns an
    :class:`~torchrl_offline.ope.result.OPEResult` whose value is the mean of
    ``V(s_0) = E_{a ~ pi} Q(s_0, a)`` over episodes. Runs are reproducible: the default
    critic's initialisation, the minibatches and the policy's draws come from ``seed``; a
    critic you pass is copied, and every fit starts from its weights.

    The confidence interval (``interval="refit"``, the default) is a bootstrap over
    refits: ``n_refits`` more critics, each freshly initialised and fitted on its own
    resample of the logged episodes (drawn with replacement; a transition's loss is
    weighted by how often its episode was drawn), are trained alongside the main one as
    one batched ensemble (same minibatches, same draws of the policy), and each gives an
    estimate on its resample's initial states. The interval is ``value +- t * sd`` of
    those estimates (``ci_method="t"``, Student t with ``n_refits - 1`` degrees of
    freedom, stable for a few refits) or their percentiles (``"percentile"``, which
    needs more refits). It carries the fit's sensitivity to the data and to the critic's
    initialisation, not a bias shared by all refits (e.g. from actions the data never
    take). ``interval="initial_states"`` is the cheaper interval of one fit, a bootstrap
    over episodes of ``V(s_0^e)`` that ignores the critic's error: it is far too narrow
    (see ``docs/ope.md``) and is named so.

    A fitted :class:`FQE` is a Q model for doubly robust estimators:
    :meth:`q_values` gives ``Q(s, a)`` at logged actions and :meth:`state_values` gives
    ``V^pi(s)``.

    Args:
        policy (TensorDictModuleBase): the evaluation policy (see :class:`FQELoss`).
        qvalue_network (TensorDictModule, optional): the critic to fit. Defaults to an MLP
            (``num_cells`` hidden units, ReLU) reading ``observation`` (and ``action`` for
            continuous actions), built from the data's shapes at the first fit.

    Keyword Args:
        gamma (float): discount. Defaults to ``0.99``.
        action_space (str or TensorSpec, optional): as in :class:`FQELoss`; by default
            the policy's spec, else the data's action dtype (integers: categorical).
        n_actions (int, optional): number of discrete actions for the default critic
            (default: the policy's spec, else ``max(action) + 1`` in the data).
        epsilon (float, optional): as in :class:`FQELoss`.
        kernel_bandwidth (float, optional): as in :class:`FQELoss`.
        num_steps (int): gradient updates per fit. Defaults to ``5000``.
        batch_size (int): transitions per update. Defaults to ``256``.
        lr (float): Adam learning rate. Defaults to ``1e-3``.
        weight_decay (float): Adam weight decay. Defaults to ``0``.
        target_update_interval (int): the target is refreshed after every
            ``target_update_interval + 1`` updates (TorchRL's ``HardUpdate``). Each refresh is
            one Bellman backup, and the value needs about ``1 / (1 - gamma)`` of them to
            propagate (the result warns otherwise). Defaults to ``20``.
        tau (float, optional): if given, Polyak-average the target instead (``SoftUpdate``).
        num_action_samples (int): draws of a stochastic continuous policy per state.
            Defaults to ``4``.
        loss_function (str): ``"l2"`` (default), ``"smooth_l1"`` or ``"l1"``.
        num_cells (sequence of int): hidden sizes of the default critic. Defaults to
            ``(256, 256)``.
        warm_start (bool): keep the critic between calls of :meth:`fit` (useful when the
            policy changes slowly, e.g. in a training hook). Defaults to ``False``
            (every fit starts from the same seeded initialisation).
        n_bootstrap (int): resamples of the initial states (``interval="initial_states"``).
            Defaults to ``1000``.
        confidence (float): interval level. Defaults to ``0.95``.
        ci_method (str, optional): ``"t"`` (default) or ``"percentile"`` for the refit
            interval; ``"percentile"`` (default) or ``"bca"`` for the initial-state one.
        seed (int): seed of the fit and of the bootstrap. Defaults to ``0``.
        policy_mode (str, optional): which policy to evaluate: ``"greedy"`` (the actor's
            deterministic action, smoothed by ``epsilon`` / ``kernel_bandwidth`` when
            given), ``"stochastic"`` (sampling its distribution) or ``None`` (as given: the
            distribution of a policy that has one). The result's ``policy_mode`` says which.
        interval (str): ``"refit"`` (default) or ``"initial_states"`` (see above).
        n_refits (int): bootstrap refits for ``interval="refit"``. Defaults to ``10``: the
            fit costs up to ``1 + n_refits`` times one critic's (the policy's draws are
            shared), and the t interval is stable from about 10 refits.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_offline.ope.fqe import FQE
        >>> # one-step episodes from s0 with reward 1 + action: the value of a = 0.5 is 1.5
        >>> n = 64
        >>> data = TensorDict({
        ...     "observation": torch.ones(n, 2), "action": torch.rand(n, 1),
        ...     "episode": torch.arange(n),
        ...     ("next", "observation"): torch.zeros(n, 2),
        ...     ("next", "done"): torch.ones(n, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.ones(n, 1, dtype=torch.bool),
        ...     ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
        ... }, [n])
        >>> data["next", "reward"] = 1.0 + data["action"]
        >>> class Half(torch.nn.Module):
        ...     def forward(self, obs):
        ...         return torch.full((*obs.shape[:-1], 1), 0.5)
        >>> policy = TensorDictModule(Half(), ["observation"], ["action"])
        >>> fqe = FQE(policy, gamma=0.9, num_steps=300, batch_size=32, lr=1e-2,
        ...           num_cells=(32,), n_refits=5)
        >>> result = fqe.estimate(data)
        >>> abs(result.value - 1.5) < 0.05, result.ci_low < result.value < result.ci_high
        (True, True)
        >>> result.policy_mode
        'greedy'
    """

    def __init__(
        self,
        policy: TensorDictModuleBase,
        qvalue_network: TensorDictModule | None = None,
        *,
        gamma: float = 0.99,
        action_space: str | TensorSpec | None = None,
        n_actions: int | None = None,
        epsilon: float | None = None,
        kernel_bandwidth: float | None = None,
        num_steps: int = 5000,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        target_update_interval: int = 20,
        tau: float | None = None,
        num_action_samples: int = 4,
        loss_function: str = "l2",
        num_cells: Sequence[int] = (256, 256),
        warm_start: bool = False,
        n_bootstrap: int = 1000,
        confidence: float = 0.95,
        ci_method: str | None = None,
        seed: int = 0,
        policy_mode: Literal["greedy", "stochastic"] | None = None,
        interval: Literal["refit", "initial_states"] = "refit",
        n_refits: int = 10,
    ) -> None:
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if num_steps < 1 or batch_size < 1:
            raise ValueError(
                f"num_steps and batch_size must be positive, got {num_steps}, {batch_size}"
            )
        if target_update_interval < 1:
            raise ValueError(f"target_update_interval must be >= 1, got {target_update_interval}")
        if tau is not None and not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if interval not in FQE_INTERVALS:
            raise ValueError(f"interval must be one of {FQE_INTERVALS}, got {interval!r}")
        methods = ("t", "percentile") if interval == "refit" else ("percentile", "bca")
        ci_method = methods[0] if ci_method is None else ci_method
        if ci_method not in methods:
            raise ValueError(
                f"ci_method must be one of {methods} for interval={interval!r}, got {ci_method!r}"
            )
        if interval == "refit" and n_refits < 2:
            raise ValueError(
                f"n_refits must be >= 2 for the refit interval, got {n_refits} (or choose "
                "interval='initial_states', which ignores the critic's error)"
            )
        check_policy_mode(policy_mode, kernel_bandwidth=kernel_bandwidth, epsilon=epsilon)
        self.policy = policy
        self.gamma = float(gamma)
        self.action_space = action_space
        self.n_actions = n_actions
        self.epsilon = epsilon
        self.kernel_bandwidth = kernel_bandwidth
        self.num_steps = int(num_steps)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.target_update_interval = int(target_update_interval)
        self.tau = tau
        self.num_action_samples = int(num_action_samples)
        self.loss_function = loss_function
        self.num_cells = tuple(num_cells)
        self.warm_start = bool(warm_start)
        self.n_bootstrap = int(n_bootstrap)
        self.confidence = float(confidence)
        self.ci_method = ci_method
        self.seed = int(seed)
        self.policy_mode_requested = policy_mode
        self.interval = interval
        self.n_refits = int(n_refits) if interval == "refit" else 0
        self._critic_template = qvalue_network
        self.loss_module: FQELoss | None = None
        #: Target refreshes of the fits so far (``num_steps * tau`` for Polyak averaging).
        self.bellman_backups = 0.0
        self._bootstrapped = 1.0
        self._max_abs_reward = math.nan
        #: TD losses of the last fit, one per update.
        self.loss_history: list[float] = []
        self._action_start = 0
        #: The refits' resamples of the last fit: how often each episode (ids in
        #: ``resampled_episodes``, sorted) is drawn in each, ``[n_refits, n_episodes]``.
        self.resample_counts: Tensor | None = None
        self.resampled_episodes: Tensor | None = None
        #: ``[n_refits]`` float64 estimates of the refits in the last :meth:`evaluate`.
        self.refit_values: Tensor | None = None

    @property
    def policy_mode(self) -> str:
        """``"greedy"`` or ``"stochastic"``: the policy this FQE evaluates."""
        if self.loss_module is not None:
            return self.loss_module.policy_mode
        from torchrl_offline.ope.fqe_loss import _PolicyQuery

        return _PolicyQuery(
            self.policy,
            epsilon=self.epsilon,
            kernel_bandwidth=self.kernel_bandwidth,
            action_key="action",
            mode=self.policy_mode_requested,
        ).mode

    # ------------------------------------------------------------------ fitting
    def _resolve_space(self, td: TensorDictBase) -> str | TensorSpec:
        if self.action_space is not None:
            return self.action_space
        if _discrete_space(None, self.policy) is not None:
            return find_action_spec(self.policy)
        action = td.get("action")
        if action.dtype.is_floating_point:
            return "continuous"
        return "categorical"

    def _build_loss(self, td: TensorDictBase) -> FQELoss:
        space = self._resolve_space(td)
        discrete = _discrete_space(space, self.policy) is not None
        critic = self._critic_template
        if critic is None:
            obs = td.get("observation")
            action = td.get("action")
            n_actions = None
            if discrete:
                n_actions = self.n_actions
                spec = find_action_spec(self.policy)
                if n_actions is None and spec is not None and hasattr(spec, "space"):
                    n_actions = int(getattr(spec.space, "n", 0)) or None
                if n_actions is None:
                    if _is_index(action):
                        n_actions = int(action.max()) - self._action_start + 1
                    else:  # one-hot (float, bool or integer)
                        n_actions = int(action.shape[-1])
            critic = _default_critic(
                int(obs.shape[-1]),
                1 if action.ndim == 1 else int(action.shape[-1]),
                n_actions,
                self.num_cells,
            )
        else:
            critic = copy.deepcopy(critic)
        critics = [critic] + [_fresh_copy(critic) for _ in range(self.n_refits)]
        loss = FQELoss(
            critics,
            self.policy,
            action_space=space,
            epsilon=self.epsilon,
            kernel_bandwidth=self.kernel_bandwidth,
            num_action_samples=self.num_action_samples,
            loss_function=self.loss_function,
            policy_mode=self.policy_mode_requested,
            num_qvalue_nets=len(critics),
            reduction="none" if self.n_refits else "mean",
        )
        loss.make_value_estimator(gamma=self.gamma)
        return loss

    def fit(self, data: ReplayBuffer | TensorDictBase) -> FQE:
        """Fits the critic on the stored transitions of ``data``; returns ``self``.

        Args:
            data: a replay buffer of the data layer or a TensorDict of transitions.
        """
        td = stored_transitions(data)
        if td.shape[0] == 0:
            raise ValueError("FQE got an empty dataset")
        weights = None
        if self.n_refits:
            if "episode" not in td.keys():
                raise OPEError(
                    "FQE's refit interval resamples episodes, but the data have no 'episode' "
                    "key; add one, or pass interval='initial_states'",
                    field="episode",
                )
            ids, counts, resampled = _episode_resamples(td.get("episode"), self.n_refits, self.seed)
            self.resampled_episodes, self.resample_counts = ids, counts
            # member 0 is the fit on the data as logged; member b the fit on resample b
            weights = torch.cat([torch.ones(1, td.shape[0]), resampled])
        self._action_start = discrete_action_start(data)
        terminated = td.get(("next", "terminated"), None)
        self._bootstrapped = 1.0 if terminated is None else 1.0 - float(terminated.float().mean())
        self._max_abs_reward = float(td.get(("next", "reward")).abs().max())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self.loss_module is None or not self.warm_start:
                self.loss_module = self._build_loss(td)
                self.bellman_backups = 0.0
            loss = self.loss_module
            td = td.select(*loss.in_keys, strict=False)
            check_batch(td[:1], loss.in_keys)
            params = list(loss.qvalue_network_params.values(True, True))
            optim = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
            if self.tau is not None:
                updater = SoftUpdate(loss, tau=self.tau)
            else:
                updater = HardUpdate(
                    loss, value_network_update_interval=self.target_update_interval
                )
            history = []
            for index, batch in self._batches(td):
                out = loss(self._shift_actions(batch))
                value = out["loss_qvalue"]
                if weights is not None:  # [E, batch]: each member's loss on its resample
                    w = weights[:, index]
                    value = (value * w).sum(-1) / w.sum(-1).clamp_min(1e-12)
                    history.append(value[0].detach())
                    value = value.sum()
                else:
                    history.append(value.detach())
                optim.zero_grad(set_to_none=True)
                value.backward()
                optim.step()
                updater.step()
            self.loss_history = torch.stack(history).tolist()
        if self.tau is not None:
            self.bellman_backups += self.num_steps * self.tau
        else:
            self.bellman_backups += self.num_steps // (self.target_update_interval + 1)
        return self

    def _batches(self, td: TensorDictBase) -> Iterator[tuple[Tensor, TensorDictBase]]:
        """``num_steps`` minibatches with their indices: shuffled epochs without replacement
        (seeded), or the whole dataset at every step when it is no larger than
        ``batch_size``."""
        n = td.shape[0]
        if n <= self.batch_size:
            full = td.to_tensordict() if td.is_memmap() else td
            everything = torch.arange(n)
            for _ in range(self.num_steps):
                yield everything, full
            return
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n, generator=generator)
        cursor = 0
        for _ in range(self.num_steps):
            if cursor + self.batch_size > n:
                order, cursor = torch.randperm(n, generator=generator), 0
            index = order[cursor : cursor + self.batch_size]
            yield index, td[index]
            cursor += self.batch_size

    # ------------------------------------------------------------------ Q-model protocol
    def _require_fit(self) -> FQELoss:
        if self.loss_module is None:
            raise RuntimeError("FQE is not fitted: call fit(data) or estimate(data) first")
        return self.loss_module

    def q_values(self, tensordict: TensorDictBase) -> Tensor:
        """``Q(s, a)`` at the logged actions, shaped like ``tensordict``'s batch.

        Args:
            tensordict: states (``observation``) and actions (``action``), any batch shape.
        """
        loss = self._require_fit()
        with torch.no_grad():
            return loss.state_action_value(self._shift_actions(tensordict), member=0)

    def _shift_actions(self, td: TensorDictBase) -> TensorDictBase:
        """Discrete action values of a ``Discrete(n, start)`` space (as stored by
        ``load_minari``) as the indices ``0 .. n - 1`` that policies and critics use."""
        action = td.get("action", None)
        if not self._action_start or action is None or not _is_index(action):
            return td
        return td.clone(False).set("action", action - self._action_start)

    def state_values(self, tensordict: TensorDictBase) -> Tensor:
        """``V^pi(s) = E_{a ~ pi(.|s)} Q(s, a)`` at the states, shaped like the batch.

        The expectation is exact for discrete actions and an average over
        ``num_action_samples`` seeded draws of a stochastic continuous policy. These are
        the main critic's values (not the refits').
        """
        return self._state_values(tensordict, member=0)

    def _state_values(self, tensordict: TensorDictBase, member: int | None) -> Tensor:
        loss = self._require_fit()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return loss.state_value(tensordict, member=member)

    def _refit_estimates(self, episodes, all_values: Tensor) -> Tensor:
        """``[n_refits]`` estimates of the refits: each member's mean of ``V(s_0)`` over its
        resample of the episodes (float64; NaN where a resample has none of them)."""
        counts = self.resample_counts
        ids = self.resampled_episodes
        where = torch.searchsorted(ids, episodes.episode_ids.reshape(-1))
        where = where.clamp(max=ids.numel() - 1)
        if bool((ids[where] == episodes.episode_ids.reshape(-1)).all()):
            c = counts[:, where].to(torch.float64)  # the resamples of the fit
        else:  # other data than the fit's: each refit's mean over these initial states
            c = torch.ones(self.n_refits, where.numel(), dtype=torch.float64)
        total = c.sum(-1)
        estimates = (c * all_values[1:].to(torch.float64)).sum(-1) / total.clamp_min(1e-12)
        return torch.where(total > 0, estimates, math.nan)

    def _interval(self, value: float, values: Tensor, refits: Tensor | None):
        """``(low, high)`` of the chosen interval."""
        if refits is None:
            low, high = bootstrap_interval(
                values,
                n_bootstrap=self.n_bootstrap,
                confidence=self.confidence,
                method=self.ci_method,
                seed=self.seed,
            )
            return float(low), float(high)
        refits = refits[~refits.isnan()]
        if refits.numel() < 2:
            return value, value
        if self.ci_method == "percentile":
            alpha = 1 - self.confidence
            levels = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
            low, high = torch.quantile(refits, levels).tolist()
            return low, high
        half = student_t_ppf(0.5 + self.confidence / 2, refits.numel() - 1) * float(refits.std())
        return value - half, value + half

    # ------------------------------------------------------------------ estimate
    def evaluate(self, data: ReplayBuffer | TensorDictBase) -> OPEResult:
        """The OPE result of the current critic on ``data``'s initial states (no fitting)."""
        loss = self._require_fit()
        episodes = to_episodes(data)
        starts = episodes.initial_states()
        refits = None
        if self.n_refits:
            all_values = self._state_values(starts, member=None).reshape(1 + self.n_refits, -1)
            values = all_values[0].to(torch.float64)
            refits = self._refit_estimates(episodes, all_values)
            self.refit_values = refits
        else:
            values = self.state_values(starts).reshape(-1).to(torch.float64)
        value = float(values.mean())
        low, high = self._interval(value, values, refits)
        tail = self.loss_history[-max(1, len(self.loss_history) // 10) :]
        final_loss = sum(tail) / len(tail) if tail else math.nan
        gamma = round(float(loss.value_estimator.gamma), 6)  # the estimator stores float32
        # the effective horizon, and a bound no policy's value can exceed (larger: divergence);
        # when every transition is terminal nothing is bootstrapped: a reward regression
        bootstrapped = self._bootstrapped > 0
        horizon = 1.0 / (1.0 - gamma) if gamma < 1 else float(episodes.lengths.max())
        horizon = horizon if bootstrapped else 1.0
        bound = self._max_abs_reward * horizon
        transitions = stored_transitions(data)
        q_data = self.q_values(transitions[: min(4096, transitions.shape[0])].to_tensordict())
        max_abs_q = max(float(q_data.abs().max()), float(values.abs().max()))
        result = OPEResult(
            value=value,
            ci_low=float(low),
            ci_high=float(high),
            diagnostics={
                "ess": float(values.numel()),
                "n_episodes": int(values.numel()),
                "td_loss": final_loss,
                "num_steps": len(self.loss_history),
                "gamma": gamma,
                "bellman_backups": self.bellman_backups,
                "max_abs_q": max_abs_q,
                "initial_value_std": float(values.std()) if values.numel() > 1 else 0.0,
                "interval": self.interval,
            },
            estimator="FQE",
            per_episode=values,
            confidence=self.confidence,
            policy_mode=loss.policy_mode,
            policy=loss.evaluation_policy.describe(),
        )
        if refits is not None:
            defined = refits[~refits.isnan()]
            result.diagnostics["n_refits"] = self.n_refits
            result.diagnostics["refit_std"] = float(defined.std()) if defined.numel() > 1 else 0.0
            how = "t interval" if self.ci_method == "t" else "percentiles"
            result.notes.append(
                f"interval: {how} of {self.n_refits} refits on resampled episodes; it covers "
                "the fit's variance, not a bias common to all refits"
            )
        else:
            result.notes.append(
                "interval: bootstrap over the initial states of one fit; it ignores the "
                "critic's error and is too narrow"
            )
        if not bootstrapped:
            result.notes.append(
                "every transition is terminal: nothing is bootstrapped, the fit is a "
                "regression of the reward on (state, action) (horizon 1)"
            )
        elif not max_abs_q <= 1.05 * bound + 1e-6:
            result.warn(
                f"the critic reaches |Q| = {max_abs_q:.4g}, beyond max|r| x horizon = "
                f"{bound:.4g}, which no policy can exceed: the fit diverged (lower lr, "
                "raise target_update_interval, or check the data's coverage of the policy)"
            )
        if bootstrapped and self.bellman_backups < horizon:
            result.warn(
                f"only {self.bellman_backups:.0f} target refreshes for an effective horizon of "
                f"{horizon:.0f} steps (gamma {gamma}): the value may not have propagated; "
                "increase num_steps or lower target_update_interval"
            )
        return result

    def estimate(self, data: ReplayBuffer | TensorDictBase) -> OPEResult:
        """Fits the critic on ``data`` and returns the estimated value of the policy.

        Args:
            data: a replay buffer of the data layer or a TensorDict of transitions in
                dataset order with an ``episode`` key; every episode must start at an
                initial state.

        Returns:
            An :class:`~torchrl_offline.ope.result.OPEResult` (estimator ``"FQE"``);
            ``diagnostics`` holds ``td_loss`` (mean TD loss over the last tenth of the
            updates), ``bellman_backups`` (target refreshes), ``n_episodes`` and ``ess``
            (the number of initial states: FQE has no importance weights), ``max_abs_q``,
            ``interval`` and, for the refit interval, ``n_refits`` and ``refit_std`` (the
            standard deviation of the refits' estimates); ``policy_mode`` says which
            policy was evaluated. Warnings: values beyond ``max|r|`` times the effective horizon
            ``1 / (1 - gamma)`` (or the longest episode for ``gamma = 1``), which means the
            fit diverged; fewer backups than that horizon. Neither applies when every
            transition is terminal (a log of one-step decisions): nothing is bootstrapped,
            the fit is a reward regression, and a note says so.
        """
        return self.fit(data).evaluate(data)
