"""torchrl_offline."""
