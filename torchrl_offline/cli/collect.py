"""``torchrl-offline collect``: make a Minari dataset from an env and a behaviour policy."""

from __future__ import annotations

import argparse
from typing import Any

from torchrl_offline.cli.common import CLIError, UsageError, progress_bar

__all__ = ["add_parser", "run"]

_EPILOG = """\
behaviour policy (--policy, repeat it for a mixture):
  random                       uniformly random actions
  scripted:sigma=S             the env's scripted controller + truncated Gaussian noise
  scripted:epsilon=E           ... acting at random with probability E (discrete actions)
  checkpoint:path=FILE         the policy of a training checkpoint (stochastic actors as is)
  checkpoint:path=FILE,sigma=S its deterministic action + noise
  W*SPEC                       mixture proportion W of a component (quote it in a shell)

example:
  torchrl-offline collect Pendulum-v1 --dataset-id pendulum/mixed-v0 --steps 20000 \\
      --policy '0.3*scripted:sigma=0.2' --policy '0.3*scripted:sigma=1.0' \\
      --policy '0.4*random' --reference-episodes 5
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "collect",
        help="make a dataset by running a behaviour policy in an environment",
        description="Run a behaviour policy in a gymnasium environment and store the "
        "transitions, with each action's behaviour log-probability, as a Minari dataset.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("env", help="gymnasium environment id, e.g. Pendulum-v1")
    parser.add_argument(
        "--dataset-id", required=True, help="Minari id of the new dataset, e.g. pendulum/mixed-v0"
    )
    parser.add_argument("--steps", type=int, required=True, help="transitions to collect")
    parser.add_argument(
        "--policy",
        action="append",
        metavar="SPEC",
        help="behaviour policy (default: random); repeat for a mixture (see below)",
    )
    parser.add_argument(
        "--per",
        choices=("episode", "step"),
        default="episode",
        help="a mixture draws its acting component per episode (default) or per step",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the env and the policy")
    parser.add_argument(
        "--root", help="Minari datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )
    parser.add_argument(
        "--format", choices=("hdf5", "arrow"), default="hdf5", help="Minari storage format"
    )
    parser.add_argument("--ref-min", type=float, help="reference return of a random policy")
    parser.add_argument("--ref-max", type=float, help="reference return of an expert policy")
    parser.add_argument(
        "--reference-episodes",
        type=int,
        default=0,
        metavar="N",
        help="measure the reference returns over N episodes: uniform random actions (min) and "
        "the env's scripted controller (max); --ref-min/--ref-max override them",
    )
    parser.add_argument("--description", help="dataset description stored in its metadata")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing dataset (its data/ and manifest; other files in its folder "
        "stay; a folder that is not a dataset is never replaced)",
    )
    parser.set_defaults(run=run)
    return parser


def _reference_returns(args: argparse.Namespace, env: Any) -> tuple[float | None, float | None]:
    ref_min, ref_max = args.ref_min, args.ref_max
    if args.reference_episodes < 0:
        raise UsageError(f"--reference-episodes must be >= 0, got {args.reference_episodes}")
    if args.reference_episodes and (ref_min is None or ref_max is None):
        import sys

        from torchrl_offline.cli.policies import scripted_controller
        from torchrl_offline.data import UniformRandomPolicy
        from torchrl_offline.trainers.hooks import evaluate_policy

        n, seed = args.reference_episodes, args.seed + 10_000
        expert = scripted_controller(args.env) if ref_max is None else None
        print(f"measuring reference returns over {n} episodes", file=sys.stderr)
        if ref_min is None:
            random = UniformRandomPolicy(env.action_spec_unbatched)
            ref_min = evaluate_policy(env, random, num_episodes=n, seed=seed).mean
        if expert is not None:
            ref_max = evaluate_policy(env, expert, num_episodes=n, seed=seed).mean
    if (ref_min is None) != (ref_max is None):
        raise UsageError(
            "give both --ref-min and --ref-max, or --reference-episodes N to measure the "
            "missing one"
        )
    if ref_min is not None and ref_min == ref_max:
        raise UsageError(f"the reference returns are equal ({ref_min}); no score can be normalized")
    return ref_min, ref_max


def run(args: argparse.Namespace) -> int:
    """Collect the dataset and print where it was written."""
    from torchrl_offline.cli.envs import make_env
    from torchrl_offline.cli.policies import build_behavior_policy, parse_policy_spec
    from torchrl_offline.data import DatasetError, collect_dataset
    from torchrl_offline.data.minari_writer import (
        check_dataset_id,
        minari_root,
        new_dataset_directory,
    )

    if args.steps < 1:
        raise UsageError(f"--steps must be positive, got {args.steps}")
    try:
        check_dataset_id(args.dataset_id)
    except DatasetError as err:
        raise UsageError(f"--dataset-id: {err}") from None
    exists = CLIError(
        f"a dataset already exists at {minari_root(args.root) / args.dataset_id}; pass "
        "--overwrite to replace it"
    )
    try:  # a folder that is not a dataset: DatasetError, which says so
        new_dataset_directory(args.dataset_id, args.root, overwrite=args.overwrite)
    except FileExistsError:
        raise exists from None
    specs = [parse_policy_spec(text) for text in args.policy or ["random"]]
    env = make_env(args.env, float32=False)
    try:
        behavior = build_behavior_policy(specs, env, env_id=args.env, per=args.per)
        ref_min, ref_max = _reference_returns(args, env)
        with progress_bar(args.steps, f"collect {args.dataset_id}", enabled=args.progress) as bar:

            def advance(*_: Any) -> None:
                if bar.n < args.steps:
                    bar.update(1)

            handle = behavior.register_forward_hook(advance)
            try:
                path = collect_dataset(
                    env,
                    behavior,
                    args.steps,
                    dataset_id=args.dataset_id,
                    root=args.root,
                    seed=args.seed,
                    data_format=args.format,
                    ref_min_score=ref_min,
                    ref_max_score=ref_max,
                    description=args.description,
                    overwrite=args.overwrite,
                )
            except FileExistsError:  # written by another process meanwhile
                raise exists from None
            finally:
                handle.remove()
    finally:
        env.close()
    print(f"dataset {args.dataset_id}: {args.steps} transitions written to {path}")
    print(f"behaviour policy: {behavior.describe()}")
    if ref_min is not None:
        print(f"reference returns: min {ref_min:.4g}, max {ref_max:.4g}")
    return 0
