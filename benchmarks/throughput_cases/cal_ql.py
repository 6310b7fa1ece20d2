"""Throughput cases for Cal-QL: ours vs our CQL on the same update (TorchRL has no Cal-QL;
d3rlpy 2.8.1's ``CalQL`` is in ``loss_throughput_d3rlpy.py``).

The cases are those of ``cql.py`` (same networks, batch, 10 sampled actions, fixed
weight, deterministic backup) with the batch's Monte Carlo returns bounding the policy's
sampled values: the ratio is what the calibration costs.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _nets
import cql as cql_case

from torchrl_offline.objectives.cal_ql import CalQLLoss
from torchrl_offline.objectives.cql import CQLLoss


def cases(
    obs_dim: int, act_dim: int, batch_size: int, hidden: int
) -> dict[str, Callable[[], None]]:
    data = _nets.random_batch(obs_dim, act_dim, batch_size)
    data["mc_return"] = torch.randn(batch_size, 1, generator=torch.Generator().manual_seed(1))
    common = dict(min_q_weight=5.0, num_random=cql_case.NUM_RANDOM, deterministic_backup=True)
    out = {}
    for name, cls, extra in (
        ("cal_ql/ours", CalQLLoss, {"with_lagrange": False}),
        ("cal_ql/cql_ours", CQLLoss, {}),
    ):
        torch.manual_seed(0)
        actor = _nets.tanh_normal_actor(obs_dim, act_dim, hidden)
        loss = cls(actor, _nets.qvalue(obs_dim, act_dim, hidden), **common, **extra)
        out[name] = cql_case._loss_update(loss, data.clone(), ours=True)
    return out
