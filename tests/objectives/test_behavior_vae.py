"""BehaviorVAE: the decoder's squash (the papers' tanh, d3rlpy's clip) and its loss."""

from __future__ import annotations

import pytest
import torch
from torchrl.data import Bounded

from torchrl_offline.objectives import make_behavior_vae
from torchrl_offline.objectives.behavior_vae import vae_loss

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = Bounded(torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0]), (2,))


def test_a_clipped_decoder_samples_in_the_box_and_regresses_its_unclipped_output():
    torch.manual_seed(0)
    vae = make_behavior_vae(3, SPEC, num_cells=[16], decoder_squash="clip")
    with torch.no_grad():
        vae.decoder[-1].bias.copy_(torch.tensor([1.5, -1.5]))  # outside the box on both
    s = torch.randn(64, 3)
    action, raw = vae.sample(s, num_samples=4)
    low, high = SPEC.space.low, SPEC.space.high
    assert (raw[..., 0] > 1).any() and (raw[..., 1] < -1).any()
    torch.testing.assert_close(action, low + (high - low) / 2 * (raw.clamp(-1, 1) + 1))

    # the reconstruction compares the logged action with the output before the clip,
    # so an output beyond the box still has a gradient towards the data
    a = torch.stack([torch.zeros(64), torch.full((64,), 0.5)], -1)
    torch.manual_seed(1)
    recon, _ = vae_loss(vae, s, a)
    recon.mean().backward()
    assert vae.decoder[-1].bias.grad[0] > 0 and vae.decoder[-1].bias.grad[1] < 0
    mean, log_std = vae.encode(s, a)
    torch.manual_seed(1)
    z = mean + log_std.exp() * torch.randn_like(mean)
    out = vae.decoder(torch.cat([s, z], -1))
    expected = ((low + (high - low) / 2 * (out + 1) - a) ** 2).mean(-1)
    torch.testing.assert_close(recon, expected)


def test_the_tanh_decoder_is_the_default_and_stays_strictly_inside_the_box():
    vae = make_behavior_vae(3, SPEC, num_cells=[16])
    assert vae.decoder_squash == "tanh"
    with torch.no_grad():
        vae.decoder[-1].bias.fill_(3.0)
    action, raw = vae.sample(torch.randn(64, 3))
    low, high = SPEC.space.low, SPEC.space.high
    torch.testing.assert_close(action, low + (high - low) / 2 * (raw.tanh() + 1))
    assert (action < high).all()


def test_an_unknown_squash_is_refused():
    with pytest.raises(ValueError, match="decoder_squash must be one of .*'tanh', 'clip'.*'relu'"):
        make_behavior_vae(3, SPEC, num_cells=[8], decoder_squash="relu")
