"""BEARLoss: the paper's equations, MMD, the Lagrange multiplier, the warm-up, gradient
routing, keys, reduction, learning, and runs through train() and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal
from torchrl.objectives import SoftUpdate

from tests.objectives.test_bcq import (
    SPEC,
    build_loss,
    check_per_sample,
    check_set_keys,
    scaled,
    vae_reference,
)
from tests.objectives.test_td3_bc import HIGH, LOW, _flat, _mlp, make_batch
from tests.trainers.conftest import StopAt, make_dataset
from torchrl_offline.cli import main
from torchrl_offline.objectives import BEARLoss, OfflineLossError
from torchrl_offline.objectives.bear import mmd
from torchrl_offline.objectives.networks import NetworkFactory
from torchrl_offline.trainers.algorithms import (
    HyperparameterError,
    build_algorithm,
    specs_from_dataset,
)
from torchrl_offline.trainers.normalization import NormalizedPolicy
from torchrl_offline.trainers.offline import train

OBS, ACT, LATENT, N = 3, 2, 4, 16
ACTOR = ("module", "0", "module", "0")  # the actor MLP's parameters


pytestmark = pytest.mark.usefixtures("one_thread")


def make_actor(obs_key="observation", spec=SPEC, hidden=16):
    """The paper's actor: a Gaussian with ``std = exp(log_std)``, squashed by tanh."""
    act = spec.shape[-1]
    net = nn.Sequential(
        MLP(
            in_features=OBS,
            out_features=2 * act,
            num_cells=[hidden, hidden],
            activation_class=nn.ReLU,
        ),
        NormalParamExtractor(scale_mapping="exp"),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=[obs_key], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
    )


def make_loss(obs_key="observation", action_key="action", **kwargs):
    torch.manual_seed(0)
    return build_loss(BEARLoss, make_actor(obs_key), obs_key, action_key, **kwargs)


def record_noise(loss: BEARLoss, seed=7):
    """Replaces the actor's and the VAE's standard-normal draws by a seeded generator's,
    recorded in order as ``(who, draw)``."""
    g = torch.Generator().manual_seed(seed)
    draws = []

    def source(who):
        def noise(shape, like):
            draws.append((who, torch.randn(tuple(shape), generator=g)))
            return draws[-1][1].clone()

        return noise

    loss.noise = source("actor")
    loss.behavior_network.noise = source("vae")
    return draws


# ----------------------------------------------------------------------------- reference
def mmd_reference(x, y, sigma, kernel):
    """The authors' ``mmd_loss_laplacian`` / ``mmd_loss_gaussian``: ``x``, ``y`` are
    ``[batch, n, d]``."""

    def k(a, b):
        diff = a.unsqueeze(2) - b.unsqueeze(1)
        dist = diff.abs().sum(-1) if kernel == "laplacian" else diff.pow(2).sum(-1)
        return torch.mean((-dist / (2.0 * sigma)).exp(), dim=(1, 2))

    return (k(x, x) + k(y, y) - 2.0 * k(x, y) + 1e-6).sqrt()


def reference(loss, batch, draws, *, warmup, gamma=0.9, lmbda=0.75, sigma=20.0, eps=0.05):
    """BEAR (Kumar et al. 2019; the authors' ``BEAR.train``, ``mode=auto``, ``version=0``),
    written from the equations with the loss's random draws: the VAE's reparameterisation
    noise, the target actor's noise at ``s'``, the actor's noise for the MMD and value
    samples, the VAE's latents for the MMD."""
    (_, vae_eps), (_, target_eps), (_, actor_eps), (_, latents) = draws
    vae = _flat(loss.behavior_network_params)
    actor, actor_t = _flat(loss.actor_network_params), _flat(loss.target_actor_network_params)
    critics, critics_t = _flat(loss.qvalue_network_params), _flat(loss.target_qvalue_network_params)
    s, a = batch["observation"], batch["action"]
    s2, r = batch["next", "observation"], batch["next", "reward"].squeeze(-1)
    not_done = 1.0 - batch["next", "terminated"].float().squeeze(-1)
    half = (HIGH - LOW) / 2
    alpha = loss.log_alpha.detach().exp()

    def squash(u):
        return LOW + half * (torch.tanh(u) + 1)

    def gaussian(params, s):
        h = _mlp(s, params, ACTOR)
        return h[..., :ACT], h[..., ACT:].exp()

    def q(params, j, s, a):
        p = {k: v[j] for k, v in params.items()}
        return _mlp(torch.cat([s.expand(*a.shape[:-1], OBS), a], -1), p, ("module",)).squeeze(-1)

    vae_loss = vae_reference(vae, s, a, vae_eps)
    # critics: soft clipped double Q maximised over target-actor samples at s'
    mu_t, std_t = gaussian(actor_t, s2)
    a2 = squash(mu_t + std_t * target_eps)
    q1_t, q2_t = q(critics_t, 0, s2, a2), q(critics_t, 1, s2, a2)
    soft = lmbda * torch.min(q1_t, q2_t) + (1 - lmbda) * torch.max(q1_t, q2_t)
    y = r + gamma * not_done * soft.max(0).values
    q1, q2 = q(critics, 0, s, a), q(critics, 1, s, a)
    critic_loss = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    # actor: MMD on the pre-tanh actions, ensemble min of the sample-mean values
    mu, std_pi = gaussian(actor, s)
    raw_pi = mu + std_pi * actor_eps.clamp(-0.5, 0.5)  # [m, B, A]
    z_beta = latents.clamp(-0.5, 0.5)
    raw_beta = _mlp(torch.cat([s.expand(*z_beta.shape[:-1], OBS), z_beta], -1), vae, ("decoder",))
    distance = mmd_reference(raw_beta.transpose(0, 1), raw_pi.transpose(0, 1), sigma, "laplacian")
    a_pi = squash(raw_pi)
    critic_qs = torch.min(q(critics, 0, s, a_pi).mean(0), q(critics, 1, s, a_pi).mean(0))
    actor_loss = (alpha * distance - (0.0 if warmup else critic_qs)).mean()
    alpha_loss = -(alpha * (distance - eps)).mean()  # what the code's -lagrange_loss steps
    return {
        "loss_behavior": vae_loss,
        "loss_qvalue": critic_loss,
        "loss_actor": actor_loss,
        "loss_alpha": alpha_loss,
        "mmd": distance.mean(),
        "target_value": y,
        "pred_value": torch.stack([q1, q2]),
    }


@pytest.mark.parametrize("warmup_steps", [0, 10])
def test_matches_the_papers_equations(warmup_steps):
    loss = make_loss(warmup_steps=warmup_steps)
    with torch.no_grad():
        loss.log_alpha.fill_(0.3)
    batch = make_batch()
    draws = record_noise(loss)
    out = loss(batch)
    assert [(who, tuple(d.shape)) for who, d in draws] == [
        ("vae", (N, LATENT)),
        ("actor", (10, N, ACT)),
        ("actor", (5, N, ACT)),
        ("vae", (5, N, LATENT)),
    ]
    ref = reference(loss, batch, draws, warmup=warmup_steps > 0)
    keys = ("loss_behavior", "loss_qvalue", "loss_actor", "loss_alpha", "mmd", "target_value")
    for key in (*keys, "pred_value"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
    assert bool(out["warmup"]) == (warmup_steps > 0)


def test_mmd_matches_the_authors_kernels():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 7, 3, generator=g), torch.randn(4, 7, 3, generator=g) + 1.0
    for kernel, sigma in (("laplacian", 20.0), ("gaussian", 10.0)):
        ref = mmd_reference(x.transpose(0, 1), y.transpose(0, 1), sigma, kernel)
        torch.testing.assert_close(mmd(x, y, kernel=kernel, sigma=sigma), ref)
    assert (mmd(x, x) < 0.01).all() and (mmd(x, y) > mmd(x, x)).all()


def test_the_warmup_counts_actor_updates_and_survives_a_state_dict():
    loss = make_loss(warmup_steps=2)
    batch = make_batch()
    flags = [bool(loss(batch.clone())["warmup"]) for _ in range(3)]
    assert flags == [True, True, False] and int(loss.num_updates) == 3
    other = make_loss(warmup_steps=2)
    other.load_state_dict(loss.state_dict())
    assert int(other.num_updates) == 3
    torch.manual_seed(2)
    a = loss(batch.clone())
    torch.manual_seed(2)
    b = other(batch.clone())
    for key in ("loss_actor", "loss_qvalue", "loss_behavior", "loss_alpha"):
        assert torch.equal(a[key], b[key]), key


def test_the_lagrange_multiplier_rises_above_the_threshold_and_is_clamped():
    for threshold, direction in ((0.0, 1.0), (10.0, -1.0)):
        loss = make_loss(mmd_threshold=threshold)
        optim = torch.optim.SGD([loss.log_alpha], lr=0.1)
        loss(make_batch())["loss_alpha"].backward()
        optim.step()
        assert float(loss.log_alpha) * direction > 0, (threshold, float(loss.log_alpha))
    loss = make_loss()
    with torch.no_grad():
        loss.log_alpha.fill_(20.0)
    out = loss(make_batch())
    assert float(loss.log_alpha) == 10.0  # clamped in place, as the authors' code does
    torch.testing.assert_close(out["alpha"], torch.tensor(10.0).exp())


# ----------------------------------------------------------------------------- gradients
def _grads(params):
    if isinstance(params, nn.Parameter):
        return [params.grad]
    return [p.grad for p in params.values(True, True) if isinstance(p, nn.Parameter)]


NETWORKS = ("behavior_network_params", "qvalue_network_params", "actor_network_params")


@pytest.mark.parametrize(
    "term, trained",
    [
        ("behavior_loss", "behavior_network_params"),
        ("qvalue_loss", "qvalue_network_params"),
        ("actor_loss", "actor_network_params"),
        ("alpha_loss", "log_alpha"),
    ],
)
def test_each_term_trains_only_its_parameters(term, trained):
    loss = make_loss(warmup_steps=0)
    batch = make_batch()
    if term == "alpha_loss":
        value, _ = loss.alpha_loss(loss.actor_loss(batch)[1], batch)
    else:
        value, _ = getattr(loss, term)(batch)
    loss.zero_grad(set_to_none=True)
    value.backward()
    for name in (*NETWORKS, "log_alpha"):
        grads = _grads(getattr(loss, name))
        if name == trained:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads), (term, name)
    for name in ("target_actor_network_params", "target_qvalue_network_params"):
        assert not any(p.requires_grad for p in getattr(loss, name).values(True, True))
    assert not any(name.startswith("target_") for name, _ in loss.named_parameters())
    SoftUpdate(loss, tau=0.5).step()  # TorchRL's updater accepts the targets after a forward


def test_the_warmup_actor_loss_has_no_critic_gradient_to_the_actor():
    """During the warm-up only the MMD term trains the actor: the same gradients as
    ``alpha * MMD`` alone."""
    loss = make_loss(warmup_steps=5)
    batch = make_batch()
    torch.manual_seed(0)
    value, metadata = loss.actor_loss(batch)
    value.backward()
    grads = [g.clone() for g in _grads(loss.actor_network_params)]
    loss.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    _, pre_tanh = loss._policy_samples(batch, 5, noise_clip=0.5)
    _, beta = loss.behavior_network.sample(loss.behavior_network.observation(batch), 5)
    (loss._alpha.detach() * mmd(beta.detach(), pre_tanh)).mean().backward()
    for a, b in zip(grads, _grads(loss.actor_network_params)):
        torch.testing.assert_close(a, b)
    assert bool(metadata["warmup"])


# ----------------------------------------------------------------------------- api
def test_reduction_none_is_per_sample():
    loss, mean_loss = make_loss(reduction="none", warmup_steps=0), make_loss(warmup_steps=0)
    out = check_per_sample(loss, mean_loss, ("loss_actor", "loss_qvalue", "loss_alpha"))
    assert out["mmd"].shape == (N,)


def test_set_keys_and_state_dict_round_trip():
    loss = check_set_keys(make_loss, ("loss_actor", "loss_qvalue", "loss_alpha"))
    assert ("next", "rew") in loss.in_keys and "log_alpha" in loss.state_dict()


def test_missing_keys_nan_and_bad_networks_are_named():
    loss = make_loss()
    with pytest.raises(OfflineLossError, match=r"missing the key \('next', 'observation'\)"):
        loss(make_batch().exclude(("next", "observation")))
    batch = make_batch()
    batch["action"][3, 0] = float("nan")
    with pytest.raises(
        OfflineLossError, match=r"'action' holds NaN/inf \(first at batch index \(3,\)\)"
    ):
        loss(batch)
    nets = NetworkFactory(OBS, SPEC, hidden_sizes=(8,))
    with pytest.raises(
        OfflineLossError, match="needs an actor_network whose distribution is a TanhNormal"
    ):
        BEARLoss(nets.stochastic_actor("gaussian"), nets.qvalue(), nets.behavior_vae())(
            make_batch()
        )
    wrong_box = NetworkFactory(OBS, Bounded(-1.0, 1.0, (ACT,)), hidden_sizes=(8,))
    with pytest.raises(OfflineLossError, match="TanhNormal maps into"):
        BEARLoss(wrong_box.tanh_normal_actor(), nets.qvalue(), nets.behavior_vae())(make_batch())
    with pytest.raises(ValueError, match="mmd_kernel must be one of"):
        BEARLoss(nets.tanh_normal_actor(), nets.qvalue(), nets.behavior_vae(), mmd_kernel="rbf")
    # the MMD compares samples before their tanh: a clipped decoder has none
    clipped = nets.behavior_vae(decoder_squash="clip")
    with pytest.raises(OfflineLossError, match="needs decoder_squash='tanh', got 'clip'"):
        BEARLoss(nets.tanh_normal_actor(), nets.qvalue(), clipped)
    specs = specs_from_dataset(make_dataset())
    with pytest.raises(HyperparameterError, match="Unknown hyperparameter 'vae_decoder_squash'"):
        build_algorithm("bear", *specs, vae_decoder_squash="clip")
    with pytest.raises(HyperparameterError, match="^bear: mmd_kernel must be one of"):
        build_algorithm("bear", *specs, mmd_kernel="rbf")  # the loss's own check


# ----------------------------------------------------------------------------- learning
def test_learns_on_pendulum(pendulum_dataset, evaluate_actor):
    """500 updates (100 of warm-up) on the mixed Pendulum data: the best of 10 actor
    samples beats the random policy (5 of 5 seeds measured: -571, -1045, -615, -829, -365
    against -1093)."""
    torch.manual_seed(0)
    data, scale = scaled(pendulum_dataset.data)
    nets = NetworkFactory(3, Bounded(-2.0, 2.0, (1,)), hidden_sizes=(64, 64))
    loss = BEARLoss(
        nets.tanh_normal_actor(),
        nets.qvalue(),
        nets.behavior_vae(),
        warmup_steps=100,
        num_target_samples=5,
    )
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.02)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(data.numel()), batch_size=64)
    rb.extend(data)
    keys = ("loss_actor", "loss_qvalue", "loss_behavior", "loss_alpha")
    for _ in range(500):
        out = loss(rb.sample())
        sum(out[k] for k in keys).backward()
        optim.step()
        optim.zero_grad()
        updater.step()
    policy = NormalizedPolicy(loss.make_policy(), torch.zeros(3), scale)
    score = evaluate_actor(policy, "Pendulum-v1", episodes=3)
    random, average = pendulum_dataset.random_return, pendulum_dataset.average_return
    assert score > random + 0.1 * (average - random), (score, random, average)


# ----------------------------------------------------------------------------- runs
TINY = {"hidden_sizes": (16,), "vae_hidden_sizes": (16,), "warmup_steps": 3}


def _run(out_dir, **kw):
    return train(
        "bear",
        make_dataset(),
        total_steps=6,
        seed=1,
        out_dir=out_dir,
        batch_size=16,
        overrides=TINY,
        checkpoint_interval=2,
        progress=False,
        **kw,
    )


def test_build_algorithm_and_a_resumed_run_across_the_warmup(tmp_path):
    data = make_dataset()
    algo = build_algorithm("bear", *specs_from_dataset(data), **TINY)
    assert [g["name"] for g in algo.optimizer.param_groups] == [
        "actor",
        "qvalue",
        "behavior",
        "alpha",
    ]
    assert algo.loss_keys == ("loss_actor", "loss_qvalue", "loss_behavior", "loss_alpha")
    d3 = build_algorithm("bear", *specs_from_dataset(data), preset="d3rlpy", **TINY)
    assert (d3.loss.num_action_samples, d3.loss.num_mmd_samples, d3.loss.delay_actor) == (
        100,
        4,
        False,
    )
    assert [g["lr"] for g in d3.optimizer.param_groups] == [1e-4, 3e-4, 3e-4, 1e-3]
    full = _run(tmp_path / "full")
    _run(tmp_path / "part", hooks=[StopAt(3)])
    resumed = _run(tmp_path / "part", resume=True)
    assert int(resumed.algorithm.loss.num_updates) == int(full.algorithm.loss.num_updates) == 6
    a, b = full.algorithm.loss.state_dict(), resumed.algorithm.loss.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_trains_and_evaluates_from_the_command_line(tmp_path, capsys):
    root = str(tmp_path / "minari")
    collect = ["collect", "Pendulum-v1", "--dataset-id", "pendulum/bear-v0", "--steps", "200",
               "--policy", "0.5*scripted:sigma=0.3", "--policy", "0.5*random",
               "--root", root, "--no-progress"]  # fmt: skip
    assert main(collect) == 0
    run = tmp_path / "run"
    train_argv = ["train", "--algo", "bear", "--dataset", "pendulum/bear-v0", "--root", root,
                  "--out", str(run), "--steps", "4", "--batch-size", "16", "--checkpoint-every",
                  "2", "--set", "hidden_sizes=(16,16)", "--set", "vae_hidden_sizes=(16,)",
                  "--set", "warmup_steps=2", "--eval-env", "none", "--no-progress"]  # fmt: skip
    assert main(train_argv) == 0
    assert "bear: 4 gradient steps" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["hyperparameters"]["mmd_sigma"] == 20.0
    evaluate = ["evaluate", str(run), "--env", "Pendulum-v1", "--episodes", "1",
                "--max-steps", "10", "--json", "--no-progress"]  # fmt: skip
    assert main(evaluate) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["algorithm"] == "bear" and result["step"] == 4
    assert -16.3 * 10 <= result["return_mean"] <= 0.0
