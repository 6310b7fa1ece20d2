"""Offline training from a Hydra config that composes TorchRL's configs with ours.

``conf/hydra_train.yaml`` takes the networks, models and optimizer from TorchRL's config
groups (``network: mlp``, ``model: tanh_normal`` / ``value``, ``optimizer: adam``) and
the loss, dataset and trainer from torchrl_offline's (``loss: offline_iql``,
``dataset: collect``, ``trainer: offline``). The script collects (or reuses) the
dataset, trains, and evaluates the policy in the environment.

Run::

    python examples/hydra_train.py
    python examples/hydra_train.py loss.expectile=0.9 trainer.total_steps=20000
    python examples/hydra_train.py loss=offline_td3_bc +loss.bounds=[-2,2] \
        model@models.policy=tanh_module ...   # any composition Hydra accepts
"""

from __future__ import annotations

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchrl.envs import GymEnv

from torchrl_offline.configs import register_configs
from torchrl_offline.data import dataset_stats
from torchrl_offline.trainers.hooks import evaluate_policy

register_configs()  # TorchRL's groups and ours, before Hydra composes the config


@hydra.main(config_path="conf", config_name="hydra_train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    torch.manual_seed(cfg.seed)  # the networks are built while instantiating the trainer
    trainer = instantiate(cfg.trainer)
    trainer.train()
    loss = trainer.loss_module
    print(f"trained {type(loss).__name__} for {trainer.step} gradient steps")
    if not cfg.eval_env:
        return float("nan")
    env = GymEnv(cfg.eval_env)
    try:
        result = evaluate_policy(
            env, loss.actor_network, num_episodes=cfg.eval_episodes, seed=cfg.seed
        )
    finally:
        env.close()
    returns = dataset_stats(trainer.replay_buffer).returns
    print(f"behaviour return (dataset episodes): {returns['mean']:.1f}")
    print(f"policy return: {result.mean:.1f} +/- {result.std:.1f} ({cfg.eval_episodes} episodes)")
    return result.mean


if __name__ == "__main__":
    main()
