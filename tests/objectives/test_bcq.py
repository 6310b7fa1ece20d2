"""BCQLoss: the paper's equations, gradient routing, keys, reduction, learning, training runs."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives import SoftUpdate

from tests.objectives.test_td3_bc import HIGH, LOW, _flat, _mlp, make_batch, make_critic
from tests.trainers.conftest import make_dataset
from torchrl_offline.objectives import BCQLoss, BehaviorVAE, OfflineLossError, make_behavior_vae
from torchrl_offline.objectives.bcq import make_perturbation_actor
from torchrl_offline.trainers.algorithms import (
    HyperparameterError,
    build_algorithm,
    specs_from_dataset,
)
from torchrl_offline.trainers.normalization import NormalizedPolicy
from torchrl_offline.trainers.offline import load_algorithm, train

OBS, ACT, LATENT, N = 3, 2, 4, 16
SPEC = Bounded(LOW, HIGH, (ACT,))


pytestmark = pytest.mark.usefixtures("one_thread")


def make_loss(obs_key="observation", action_key="action", spec=SPEC, **kwargs):
    torch.manual_seed(0)
    return build_loss(
        BCQLoss,
        make_perturbation_actor(
            OBS, spec.shape[-1], num_cells=[16, 16], in_keys=(obs_key, action_key)
        ),
        obs_key,
        action_key,
        spec=spec,
        **kwargs,
    )


def build_loss(cls, actor, obs_key, action_key, spec=SPEC, decoder_squash="tanh", **kwargs):
    """``cls(actor, critic, vae)`` with 2x16 networks, gamma 0.9, and target networks
    unlike the online ones (so that a test sees which are used)."""
    vae = make_behavior_vae(
        OBS, spec, num_cells=[16, 16], in_key=obs_key, decoder_squash=decoder_squash
    )
    vae.out_keys = [action_key]
    critic = make_critic(act=spec.shape[-1], obs_key=obs_key, action_key=action_key)
    loss = cls(actor, critic, vae, action_spec=spec, **kwargs)
    loss.make_value_estimator(gamma=0.9)
    with torch.no_grad():
        for params in (loss.target_actor_network_params, loss.target_qvalue_network_params):
            for p in params.values(True, True):
                p.add_(0.05 * torch.randn_like(p))
    return loss


def renamed_batch(batch):
    """``batch`` with every key renamed (``obs``, ``act``, ``rew``, ``stop``, ``term``)."""
    return TensorDict(
        {
            "obs": batch["observation"],
            "act": batch["action"],
            "next": {
                "obs": batch["next", "observation"],
                "rew": batch["next", "reward"],
                "stop": batch["next", "done"],
                "term": batch["next", "terminated"],
            },
        },
        batch.batch_size,
    )


def record_noise(vae: BehaviorVAE, seed=7):
    """Replaces the VAE's standard-normal draws by a seeded generator's, kept in order."""
    g = torch.Generator().manual_seed(seed)
    draws = []

    def noise(shape, like):
        draws.append(torch.randn(tuple(shape), generator=g))
        return draws[-1].clone()

    vae.noise = noise
    return draws


# ----------------------------------------------------------------------------- reference
def decoder_reference(vae, s, z, squash, *, sampling=True):
    """The decoded action in the box: ``tanh`` of the decoder's output (both papers'
    code), or with ``"clip"`` (d3rlpy's) the output itself, clipped when sampling."""
    out = _mlp(torch.cat([s, z], -1), vae, ("decoder",))
    unit = torch.tanh(out) if squash == "tanh" else out
    if squash == "clip" and sampling:
        unit = out.clamp(-1, 1)
    return LOW + (HIGH - LOW) / 2 * (unit + 1)


def vae_reference(vae, s, a, eps, beta=0.5, squash="tanh"):
    """The behaviour VAE's loss (both papers' code): reconstruction MSE + beta KL, with
    ``eps`` the reparameterisation noise."""
    h = _mlp(torch.cat([s, a], -1), vae, ("encoder",))
    mean, log_std = h[:, :LATENT], h[:, LATENT:].clamp(-4, 15)
    std = log_std.exp()
    z = mean + std * eps
    recon = decoder_reference(vae, s, z, squash, sampling=False)
    kl = -0.5 * (1 + torch.log(std.pow(2)) - mean.pow(2) - std.pow(2)).mean()
    return ((recon - a) ** 2).mean() + beta * kl


def reference(loss, batch, draws, gamma=0.9, lmbda=0.75, phi=0.05, n=10, beta=0.5, squash="tanh"):
    """BCQ (Fujimoto et al. 2019, Algorithm 1), written from the paper's equations.

    ``draws`` are the VAE's standard-normal draws in the loss's order: the encoder's
    reparameterisation noise, the latents of the ``n`` decoded actions at ``s'`` and the
    latents of the actor's decoded action at ``s``.
    """
    vae = _flat(loss.behavior_network_params)
    actor, actor_t = _flat(loss.actor_network_params), _flat(loss.target_actor_network_params)
    critics, critics_t = _flat(loss.qvalue_network_params), _flat(loss.target_qvalue_network_params)
    s, a = batch["observation"], batch["action"]
    s2, r = batch["next", "observation"], batch["next", "reward"].squeeze(-1)
    not_done = 1.0 - batch["next", "terminated"].float().squeeze(-1)
    half = (HIGH - LOW) / 2

    def decode(s, z):
        return decoder_reference(vae, s, z, squash)

    def perturb(params, s, a):
        xi = phi * half * torch.tanh(_mlp(torch.cat([s, a], -1), params, ("module",)))
        return torch.max(torch.min(a + xi, HIGH), LOW)

    def q(params, j, s, a):
        p = {k: v[j] for k, v in params.items()}
        return _mlp(torch.cat([s, a], -1), p, ("module",)).squeeze(-1)

    vae_loss = vae_reference(vae, s, a, draws[0], beta, squash)
    # critics: soft clipped double Q maximised over n perturbed VAE samples at s'
    s2_n = s2.expand(n, *s2.shape)
    a2 = perturb(actor_t, s2_n, decode(s2_n, draws[1].clamp(-0.5, 0.5)))
    q1_t, q2_t = q(critics_t, 0, s2_n, a2), q(critics_t, 1, s2_n, a2)
    soft = lmbda * torch.min(q1_t, q2_t) + (1 - lmbda) * torch.max(q1_t, q2_t)
    y = r + gamma * not_done * soft.max(0).values
    q1, q2 = q(critics, 0, s, a), q(critics, 1, s, a)
    critic_loss = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    # actor: -Q1 at the perturbed decoded action
    a_pi = perturb(actor, s, decode(s, draws[2].clamp(-0.5, 0.5)))
    actor_loss = -q(critics, 0, s, a_pi).mean()
    return {
        "loss_behavior": vae_loss,
        "loss_qvalue": critic_loss,
        "loss_actor": actor_loss,
        "target_value": y,
        "pred_value": torch.stack([q1, q2]),
        "td_error": torch.max((q1 - y) ** 2, (q2 - y) ** 2),
    }


@pytest.mark.parametrize("squash", ["tanh", "clip"])
def test_matches_the_papers_equations(squash):
    """Both decoders: the papers' ``tanh`` and d3rlpy's clipped linear output (whose
    final bias of 1 here puts about a quarter of the decoded actions outside the box
    before the clip)."""
    loss = make_loss(decoder_squash=squash)
    if squash == "clip":
        with torch.no_grad():
            loss.behavior_network_params["decoder", "4", "bias"].fill_(1.0)
    batch = make_batch()
    draws = record_noise(loss.behavior_network)
    out = loss(batch)
    assert [tuple(d.shape) for d in draws] == [(N, LATENT), (10, N, LATENT), (N, LATENT)]
    ref = reference(loss, batch, draws, squash=squash)
    for key in ("loss_behavior", "loss_qvalue", "loss_actor", "target_value", "pred_value"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
    torch.testing.assert_close(batch["td_error"], ref["td_error"], rtol=1e-5, atol=1e-5)


def test_perturbation_stays_within_phi_of_the_decoded_action_and_in_the_box():
    loss = make_loss(perturbation_scale=0.05)
    batch = make_batch(n=64)
    decoded = LOW + (HIGH - LOW) * torch.rand(64, ACT)
    with torch.no_grad():
        for p in loss.actor_network_params.values(True, True):
            p.mul_(50.0)  # saturate the tanh
        out = loss._perturb(batch, decoded, target=False, nxt=False)
    half = (HIGH - LOW) / 2
    assert ((out - decoded).abs() <= 0.05 * half + 1e-6).all()
    assert ((out >= LOW) & (out <= HIGH)).all()
    assert ((out - decoded).abs() > 0.04 * half).any()  # it does perturb


def test_the_policy_takes_the_best_sampled_action_under_the_first_critic():
    loss = make_loss()
    state = TensorDict({"observation": torch.randn(OBS)}, [])
    draws = record_noise(loss.behavior_network)
    action = loss.make_policy()(state.clone())["action"]
    candidates = loss._perturb(
        state,
        loss.behavior_network.decode(state["observation"], draws[0].clamp(-0.5, 0.5))[0],
        target=False,
        nxt=False,
    )
    assert draws[0].shape == (10, LATENT)  # num_action_samples decoded actions
    q1 = loss._q1(state, candidates)
    torch.testing.assert_close(action, candidates[q1.argmax()])
    batch_actions = loss.make_policy(num_samples=3)(make_batch().select("observation"))
    assert batch_actions["action"].shape == (N, ACT)


# ----------------------------------------------------------------------------- gradients
def _grads(params):
    return [p.grad for p in params.values(True, True) if isinstance(p, nn.Parameter)]


@pytest.mark.parametrize(
    "term, trained",
    [
        ("behavior_loss", "behavior_network_params"),
        ("qvalue_loss", "qvalue_network_params"),
        ("actor_loss", "actor_network_params"),
    ],
)
def test_each_term_trains_only_its_network(term, trained):
    loss = make_loss()
    value, _ = getattr(loss, term)(make_batch())
    value.backward()
    for name in ("behavior_network_params", "qvalue_network_params", "actor_network_params"):
        grads = _grads(getattr(loss, name))
        if name == trained:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), name
        else:
            assert all(g is None for g in grads), (term, name)
    for name in ("target_actor_network_params", "target_qvalue_network_params"):
        assert not any(p.requires_grad for p in getattr(loss, name).values(True, True))


# ----------------------------------------------------------------------------- api
def test_reduction_none_is_per_sample():
    check_per_sample(make_loss(reduction="none"), make_loss(), ("loss_actor", "loss_qvalue"))


def check_per_sample(loss, mean_loss, keys):
    """``reduction="none"`` gives one value per sample, whose mean is the ``"mean"``
    output, and sample 0's values do not depend on the other samples."""
    keys = (*keys, "loss_behavior")
    batch = make_batch()
    torch.manual_seed(1)
    out = loss(batch.clone())
    torch.manual_seed(1)
    out_mean = mean_loss(batch.clone())
    for key in keys:
        assert out[key].shape == (N,), key
        torch.testing.assert_close(out[key].mean(), out_mean[key], msg=key)
    changed = batch.clone()
    changed["observation"][1:] += 1.0
    changed["action"][1:] = LOW
    torch.manual_seed(1)
    again = loss(changed)
    for key in keys:
        torch.testing.assert_close(again[key][0], out[key][0], msg=key)
        assert not torch.allclose(again[key][1:], out[key][1:]), key
    return out


def test_set_keys_and_state_dict_round_trip():
    loss = check_set_keys(make_loss, ("loss_actor", "loss_qvalue"))
    assert set(loss.in_keys) == {
        "act",
        "obs",
        ("next", "obs"),
        ("next", "rew"),
        ("next", "stop"),
        ("next", "term"),
    }


def check_set_keys(make, keys):
    """A loss with every key renamed (networks and ``set_keys``), loaded with a default
    loss's state dict, gives the default loss's output on the renamed batch."""
    batch, renamed = make_batch(), renamed_batch(make_batch())
    loss = make(obs_key="obs", action_key="act")
    loss.set_keys(action="act", reward="rew", done="stop", terminated="term", priority="prio")
    default = make()
    default.load_state_dict(loss.state_dict())
    for a, b in zip(loss.state_dict().values(), default.state_dict().values()):
        assert torch.equal(a, b)
    torch.manual_seed(5)
    out = loss(renamed)
    torch.manual_seed(5)
    ref = default(batch)
    for key in (*keys, "loss_behavior", "target_value"):
        torch.testing.assert_close(out[key], ref[key], msg=key)
    assert "prio" in renamed.keys()
    return loss


def test_critics_in_a_python_loop_give_the_same_losses():
    batch = make_batch()
    fast = make_loss()(batch.clone())  # make_loss seeds torch: both draw the same noise
    loop = make_loss(deactivate_vmap=True)(batch.clone())
    for key in ("loss_actor", "loss_qvalue", "loss_behavior", "pred_value", "target_value"):
        torch.testing.assert_close(fast[key], loop[key], rtol=1e-5, atol=1e-6, msg=key)


def test_missing_keys_and_nan_are_named():
    loss = make_loss()
    with pytest.raises(OfflineLossError, match=r"missing the key \('next', 'reward'\)"):
        loss(make_batch().exclude(("next", "reward")))
    with pytest.raises(OfflineLossError, match="missing the key 'action'"):
        loss(make_batch().exclude("action"))
    batch = make_batch()
    batch["next", "observation"][4, 1] = float("nan")
    with pytest.raises(OfflineLossError, match=r"'next', 'observation'.*\(4,\)"):
        loss(batch)


def test_bad_networks_are_refused_with_the_argument_named():
    vae = make_behavior_vae(OBS, SPEC, num_cells=[8])
    actor, critic = make_perturbation_actor(OBS, ACT, num_cells=[8]), make_critic()
    with pytest.raises(OfflineLossError, match="behavior_network must be a .*BehaviorVAE"):
        BCQLoss(actor, critic, critic)
    with pytest.raises(OfflineLossError, match="actor_network produces 3 action dims"):
        BCQLoss(make_perturbation_actor(OBS, 3, num_cells=[8]), critic, vae)
    with pytest.raises(OfflineLossError, match="action_spec's bounds differ"):
        BCQLoss(actor, critic, vae, action_spec=Bounded(-1.0, 1.0, (ACT,)))
    wide = make_batch()
    wide["action"] = torch.zeros(N, 3)
    with pytest.raises(OfflineLossError, match="built for 2 action dims .* shape \\(16, 3\\)"):
        BCQLoss(actor, critic, vae)(wide)
    with pytest.raises(ValueError, match="lmbda must be in"):
        BCQLoss(actor, critic, vae, lmbda=1.5)


# ----------------------------------------------------------------------------- learning
def test_learns_on_pendulum(pendulum_dataset, evaluate_actor):
    """500 updates on the mixed Pendulum data (observations scaled to about [-1, 1]): the
    best of 10 perturbed VAE samples beats the random policy (5 of 5 seeds measured:
    -938, -804, -676, -1041, -910 against -1093)."""
    torch.manual_seed(0)
    data, scale = scaled(pendulum_dataset.data)
    spec = Bounded(-2.0, 2.0, (1,))
    loss = BCQLoss(
        make_perturbation_actor(3, 1, num_cells=[64, 64]),
        make_critic(act=1, hidden=64),
        make_behavior_vae(3, spec, num_cells=[64, 64]),
        num_target_samples=5,
    )
    loss.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss, tau=0.02)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(data.numel()), batch_size=64)
    rb.extend(data)
    for _ in range(500):
        out = loss(rb.sample())
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_behavior"]).backward()
        optim.step()
        optim.zero_grad()
        updater.step()
    policy = NormalizedPolicy(loss.make_policy(), torch.zeros(3), scale)
    score = evaluate_actor(policy, "Pendulum-v1", episodes=3)
    random, average = pendulum_dataset.random_return, pendulum_dataset.average_return
    assert score > random + 0.1 * (average - random), (score, random, average)


def scaled(data: TensorDict) -> tuple[TensorDict, torch.Tensor]:
    """The data with Pendulum's angular velocity (in [-8, 8]) divided by 8."""
    scale = torch.tensor([1.0, 1.0, 8.0])
    data = data.clone()
    data["observation"] = data["observation"] / scale
    data["next", "observation"] = data["next", "observation"] / scale
    return data, scale


# ----------------------------------------------------------------------------- runs
def test_build_algorithm_train_and_checkpoint(tmp_path):
    data = make_dataset()
    tiny = {"hidden_sizes": (16,), "vae_hidden_sizes": (16,)}
    algo = build_algorithm("bcq", *specs_from_dataset(data), **tiny)
    assert [g["name"] for g in algo.optimizer.param_groups] == ["actor", "qvalue", "behavior"]
    assert [g["lr"] for g in algo.optimizer.param_groups] == [1e-3, 1e-3, 1e-3]
    assert algo.loss_keys == ("loss_actor", "loss_qvalue", "loss_behavior")
    assert algo.loss.behavior_network.decoder_squash == "tanh"
    d3 = build_algorithm("bcq", *specs_from_dataset(data), preset="d3rlpy")
    assert d3.loss.num_action_samples == d3.loss.num_target_samples == 100
    assert d3.loss.behavior_network.decoder_squash == "clip"
    with pytest.raises(HyperparameterError, match="vae_decoder_squash must be one of tanh, clip"):
        build_algorithm("bcq", *specs_from_dataset(data), vae_decoder_squash="Clip")
    result = train(
        "bcq",
        data,
        total_steps=6,
        seed=0,
        out_dir=tmp_path / "run",
        batch_size=16,
        overrides=tiny,
        checkpoint_interval=3,
        eval_env="Pendulum-v1",
        eval_interval=3,
        eval_episodes=1,
        eval_max_steps=5,
        progress=False,
    )
    assert [e["step"] for e in result.evaluations] == [0, 3, 6]
    loaded, step = load_algorithm(result.checkpoint)
    assert step == 6 and loaded.name == "bcq"
    state = TensorDict({"observation": torch.randn(5, 3)}, [5])
    torch.manual_seed(3)
    expected = result.algorithm.policy(state.clone())["action"]
    torch.manual_seed(3)
    torch.testing.assert_close(loaded.policy(state.clone())["action"], expected)
    assert (expected.abs() <= 2.0).all()


def test_finetunes_online(tmp_path):
    """Offline-to-online: the best-of-n policy (plus the Gaussian exploration noise
    fine-tuning adds to policies that are not ``ProbabilisticActor``) collects in the env."""
    from torchrl_offline.trainers.finetune import finetune

    data = make_dataset()
    torch.manual_seed(0)
    algo = build_algorithm(
        "bcq", *specs_from_dataset(data), hidden_sizes=(16,), vae_hidden_sizes=(16,)
    )
    before = algo.loss.actor_network_params.clone()
    result = finetune(algo, data, "Pendulum-v1", total_steps=10, batch_size=16,
                      frames_per_batch=5, out_dir=tmp_path, progress=False)  # fmt: skip
    assert result.step == 10 and result.checkpoint.exists()
    after = algo.loss.actor_network_params
    assert any(
        not torch.equal(a, b) for a, b in zip(before.values(True, True), after.values(True, True))
    )
