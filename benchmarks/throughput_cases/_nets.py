"""Network builders shared by the throughput cases (TorchRL sota-implementations style).

Each builder returns fresh TorchRL modules shaped like TorchRL's own offline example
scripts: ReLU MLPs, a ``ProbabilisticActor`` with ``TanhNormal`` over a ``Bounded``
action spec, ``ValueOperator`` critics, plus a fixed random batch with TorchRL keys. The
plain-torch cases' pieces are here too: critic ensembles with stacked weights
(``stacked_mlp``, ``stacked_apply``), ``plain_mlp`` and a tanh-Gaussian policy
(``plain_tanh_normal``).
"""

from __future__ import annotations

import itertools
import math

import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator

#: Keyword arguments of every Adam in every case: ours, TorchRL's and plain torch use the
#: same optimizer. ``loss_throughput.py --adam`` changes it (``fused`` is the default:
#: on CPU it is about 3x faster than the per-tensor loop and 2.5x faster than
#: ``foreach``, a gain every implementation gets alike).
ADAM_KWARGS: dict = {"fused": True}

#: Target updater of the ``ours`` cases: ``"fused"`` (torchrl_offline's
#: ``FusedSoftUpdate``) or ``"torchrl"`` (TorchRL's ``SoftUpdate``). TorchRL's cases
#: always use TorchRL's ``SoftUpdate``; the plain-torch cases ``torch._foreach_lerp_``.
OURS_UPDATER: str = "fused"


def adam(params, lr: float = 3e-4) -> torch.optim.Adam:
    """An Adam with the shared :data:`ADAM_KWARGS` over ``params``."""
    return torch.optim.Adam(list(params), lr=lr, **ADAM_KWARGS)


def ours_soft_update(loss_module, tau: float):
    """The target updater of an ``ours`` case, per :data:`OURS_UPDATER`."""
    if OURS_UPDATER == "fused":
        from torchrl_offline.objectives.target_update import FusedSoftUpdate

        return FusedSoftUpdate(loss_module, tau=tau)
    from torchrl.objectives import SoftUpdate

    return SoftUpdate(loss_module, tau=tau)


def action_spec(act_dim: int) -> Bounded:
    return Bounded(-torch.ones(act_dim), torch.ones(act_dim), (act_dim,))


def mlp(in_dim: int, out_dim: int, hidden: int, depth: int = 2) -> MLP:
    return MLP(
        in_features=in_dim,
        out_features=out_dim,
        num_cells=[hidden] * depth,
        activation_class=torch.nn.ReLU,
    )


def tanh_normal_actor(obs_dim: int, act_dim: int, hidden: int) -> ProbabilisticActor:
    spec = action_spec(act_dim)
    net = torch.nn.Sequential(
        mlp(obs_dim, 2 * act_dim, hidden),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=0.1),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high, "tanh_loc": False},
    )


def qvalue(obs_dim: int, act_dim: int, hidden: int) -> ValueOperator:
    return ValueOperator(mlp(obs_dim + act_dim, 1, hidden), in_keys=["observation", "action"])


def value(obs_dim: int, hidden: int) -> ValueOperator:
    return ValueOperator(mlp(obs_dim, 1, hidden), in_keys=["observation"])


def random_batch(obs_dim: int, act_dim: int, batch_size: int, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(batch_size, obs_dim, generator=g),
            "action": torch.rand(batch_size, act_dim, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(batch_size, obs_dim, generator=g),
                "reward": torch.randn(batch_size, 1, generator=g),
                "done": torch.zeros(batch_size, 1, dtype=torch.bool),
                "terminated": torch.zeros(batch_size, 1, dtype=torch.bool),
                "truncated": torch.zeros(batch_size, 1, dtype=torch.bool),
            },
        },
        batch_size=[batch_size],
    )


def loss_update(loss_module, optimizers, updater, batch):
    """One update step: forward, backward of the summed ``loss_*`` terms, step, target update."""

    def step() -> None:
        out = loss_module(batch)
        total = sum(v for k, v in out.items() if k.startswith("loss_"))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in optimizers:
            opt.step()
        if updater is not None:
            updater.step()

    return step


def stacked_mlp(n_members: int, sizes: list[int]) -> list[torch.nn.Parameter]:
    """``[w0, b0, w1, b1, ...]`` of ``n_members`` ReLU MLPs with layer ``sizes``, stacked
    (weights ``[n, in, out]``, biases ``[n, 1, out]``) and initialised as ``nn.Linear``:
    a plain-torch critic ensemble evaluated with one ``baddbmm`` per layer."""
    params = []
    for i, o in itertools.pairwise(sizes):
        w = torch.empty(n_members, i, o)
        for k in range(n_members):
            torch.nn.init.kaiming_uniform_(w[k].T, a=math.sqrt(5))
        b = torch.empty(n_members, 1, o).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i))
        params += [torch.nn.Parameter(w), torch.nn.Parameter(b)]
    return params


def stacked_apply(params, x: torch.Tensor) -> torch.Tensor:
    """The stacked MLPs of :func:`stacked_mlp` on ``x``: ``[rows, in]`` shared by the
    members, or ``[n, rows, in]`` one slice per member; returns ``[n, rows]``."""
    if x.ndim == 2:
        x = x.expand(len(params[0]), *x.shape)
    layers = len(params) // 2
    for layer in range(layers):
        x = torch.baddbmm(params[2 * layer + 1], x, params[2 * layer])
        if layer < layers - 1:
            x = torch.relu(x)
    return x.squeeze(-1)


def plain_mlp(in_dim: int, out_dim: int, hidden: int) -> torch.nn.Sequential:
    """A 2-hidden-layer ReLU MLP of ``nn.Linear`` layers (the plain-torch cases' networks)."""
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, out_dim),
    )


def plain_vae_loss(encoder, decoder, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """BCQ's and BEAR's VAE loss in plain torch (reconstruction MSE + 0.5 KL, log-std
    clamped to [-4, 15], decoder squashed by tanh into [-1, 1])."""
    mean, log_std = encoder(torch.cat([obs, act], -1)).chunk(2, -1)
    log_std = log_std.clamp(-4.0, 15.0)
    std = log_std.exp()
    recon = torch.tanh(decoder(torch.cat([obs, mean + std * torch.randn_like(std)], -1)))
    kl = (-0.5 * (1 + 2 * log_std - mean.pow(2) - std.pow(2))).mean()
    return ((recon - act) ** 2).mean() + 0.5 * kl


def ours_and_plain(
    algo: str, ours, plain, obs_dim: int, act_dim: int, batch_size: int, hidden: int
):
    """``{f"{algo}/ours": ..., f"{algo}/plain_torch": ...}``: both built from the same seed
    on copies of one random batch, ``ours`` / ``plain`` taking ``(obs_dim, act_dim,
    hidden, batch)``."""
    data = random_batch(obs_dim, act_dim, batch_size)
    torch.manual_seed(0)
    ours_case = ours(obs_dim, act_dim, hidden, data.clone())
    torch.manual_seed(0)
    return {
        f"{algo}/ours": ours_case,
        f"{algo}/plain_torch": plain(obs_dim, act_dim, hidden, data.clone()),
    }


def delayed_update(loss_module, optim, updater, batch, *, delay: int = 2, target_every_step=False):
    """One update as ``OfflineTrainer(policy_update_delay=delay)`` does it (TD3's schedule):
    the critic term alone (``qvalue_loss``) on most calls, ``forward`` (every term) on
    every ``delay``-th call, one backward of the summed losses, one optimizer; the targets
    move on the full updates (on every update with ``target_every_step``)."""
    counter = [0]

    def step() -> None:
        counter[0] += 1
        full = counter[0] % delay == 0
        if full:
            out = loss_module(batch)
            (out["loss_actor"] + out["loss_qvalue"]).backward()
        else:
            loss_module.qvalue_loss(batch)[0].backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        if target_every_step or full:
            updater.step()

    return step


def plain_tanh_normal(actor: torch.nn.Module, obs: torch.Tensor, shape=()):
    """A reparameterised draw of ``tanh(N(mu, softplus(s) + 1e-4))`` (``shape`` extra
    leading sample dims), ``(mu, s) = actor(obs)``, and its log-density."""
    mu, log_std = actor(obs).chunk(2, -1)
    std = torch.nn.functional.softplus(log_std) + 1e-4
    u = mu + std * torch.randn(*shape, *mu.shape)
    logp = (-0.5 * ((u - mu) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    logp = logp - (2 * (math.log(2) - u - torch.nn.functional.softplus(-2 * u))).sum(-1)
    return torch.tanh(u), logp
