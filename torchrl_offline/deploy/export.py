"""``export_policy``: a trained policy written to a file that runs without torchrl_offline.

The file maps a float32 batch of raw observations ``[batch, obs_dim]`` (any batch size)
to the greedy actions of :meth:`~torchrl_offline.deploy.TrainedPolicy.predict`, with the
observation normalisation and the action clipping inside:

* ``"onnx"``: an ONNX model (input ``observation``, output ``action``) for onnxruntime or
  any ONNX runtime, made by ``torch.onnx.export(..., dynamo=True)`` (needs the ``export``
  extra: onnx, onnxscript, onnxruntime);
* ``"torchscript"``: a TorchScript module for ``torch.jit.load`` (also from C++ with
  libtorch), made by ``torch.jit.trace``. TorchScript is deprecated since torch 2.5 (torch
  2.13 warns on every ``torch.jit`` call); prefer ``"onnx"`` or ``"pt2"``;
* ``"pt2"``: a ``torch.export`` program for ``torch.export.load(path).module()``, torch's
  successor to TorchScript.

All three come from one ``torch.export`` trace of the
:class:`~torchrl_offline.deploy.tensor_policy.TensorPolicy` with a dynamic batch
dimension. Before the file is put in place, it is loaded with its own runtime and its
actions are compared with the policy's on random batches of several sizes; a file that
does not act as the policy does is never written. The file is written to a temporary name
and renamed, and an existing file is replaced only with ``force=True``. Each file carries
a JSON description of the policy (algorithm, step, observation shape, action spec): ONNX
metadata ``torchrl_offline.policy``, extra file ``policy.json`` of the TorchScript and
``pt2`` archives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_offline.deploy.errors import ExportError
from torchrl_offline.deploy.predict import TrainedPolicy, load_policy
from torchrl_offline.leftovers import OWNER, owner_tag, remove_stale

__all__ = ["CHECK_BATCH_SIZES", "EXPORT_FORMATS", "ExportResult", "export_policy", "policy_card"]

#: The formats :func:`export_policy` writes, and the file suffix each one usually has.
EXPORT_FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
#: The batch sizes a written file is checked at against the policy.
CHECK_BATCH_SIZES = (1, 3, 8)
#: Tolerance of that check (``numpy.allclose``'s ``rtol`` and ``atol``; discrete actions
#: must be equal).
CHECK_TOLERANCE = 1e-5
#: Key of the policy description in an ONNX model's metadata, and its file name in the
#: TorchScript and ``pt2`` archives.
CARD_KEY = "torchrl_offline.policy"
CARD_FILE = "policy.json"
_TMP = re.compile(rf"\..+\.{OWNER}-[0-9a-f]{{32}}\.tmp\.(onnx|pt|pt2)")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_policy` wrote.

    Attributes:
        path: the file.
        format: ``"onnx"``, ``"torchscript"`` or ``"pt2"``.
        checked: observations the file was run on against the policy.
        max_difference: the largest absolute difference of their actions (0 for
            discrete actions, which must be equal).
    """

    path: Path
    format: str
    checked: int
    max_difference: float


def policy_card(policy: TrainedPolicy) -> dict[str, Any]:
    """The JSON-able description of ``policy`` stored in its exported files.

    Examples:
        >>> from torchrl.data import Bounded, Unbounded
        >>> from torchrl_offline.deploy import TrainedPolicy
        >>> from torchrl_offline.deploy.export import policy_card
        >>> from torchrl_offline.trainers.algorithms import build_algorithm
        >>> algo = build_algorithm("td3_bc", Unbounded(shape=(3,)), Bounded(-2.0, 2.0, (1,)),
        ...                        hidden_sizes=(8,))
        >>> card = policy_card(TrainedPolicy(algo, step=10))
        >>> card["algorithm"], card["observation_shape"], card["action"]["type"]
        ('td3_bc', [3], 'bounded')
    """
    from torchrl_offline import __version__
    from torchrl_offline.trainers.metadata import spec_to_dict

    return {
        "algorithm": policy.name,
        "step": policy.step,
        "checkpoint": None if policy.checkpoint is None else str(policy.checkpoint),
        "observation_shape": list(policy.observation_shape),
        "observation_dtype": "float32",
        "action": spec_to_dict(policy.action_spec),
        "actions": "greedy",
        "candidate_seed": policy.module.noise.seed if policy.module.fixed_noise else None,
        "normalized_observations": policy.algorithm.observation_norm is not None,
        "torchrl_offline_version": __version__,
    }


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    """No parameter of ``module`` requires a gradient inside (tracing stores them as
    constants); their flags are restored after."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences torch's deprecation warnings of ``torch.jit`` (said once in our docs) and
    the ONNX exporter's notes about torchvision operators."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch.jit's deprecation (said in our docs), torch's own pytree deprecations
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            # tracing the exported graph's input guards (a Python assert) as constants
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        registration.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _check_observations(policy: TrainedPolicy) -> list[torch.Tensor]:
    """Random raw observations, one batch per :data:`CHECK_BATCH_SIZES` entry, around the
    training data's mean and spread when the policy normalises them."""
    generator = torch.Generator().manual_seed(0)
    shape = policy.observation_shape
    norm = policy.algorithm.observation_norm
    loc, scale = (torch.zeros(shape), torch.ones(shape)) if norm is None else norm
    return [loc + scale * torch.randn(n, *shape, generator=generator) for n in CHECK_BATCH_SIZES]


def _compare(policy: TrainedPolicy, run: Callable[[np.ndarray], np.ndarray], fmt: str) -> float:
    """Runs the written file on the check batches; the largest difference from the policy.

    Raises:
        ExportError: a batch whose actions differ (shape, dtype or values).
    """
    worst = 0.0
    for obs in _check_observations(policy):
        expected = policy.module(obs).numpy()
        got = np.asarray(run(obs.numpy()))
        where = f"the {fmt} file of the {policy.name} policy, on a batch of {obs.shape[0]}"
        if got.shape != expected.shape or got.dtype != expected.dtype:
            raise ExportError(
                f"{where}, gives actions of shape {got.shape} and dtype {got.dtype}; the "
                f"policy's are {expected.shape} {expected.dtype}"
            )
        if expected.dtype.kind == "f":
            if not np.allclose(got, expected, rtol=CHECK_TOLERANCE, atol=CHECK_TOLERANCE):
                raise ExportError(
                    f"{where}, gives actions up to {np.abs(got - expected).max():.3g} away "
                    "from the policy's"
                )
            worst = max(worst, float(np.abs(got - expected).max()))
        elif not np.array_equal(got, expected):
            raise ExportError(f"{where}, gives other actions than the policy")
    return worst


def _numpy_runner(
    module: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[np.ndarray], np.ndarray]:
    """``module`` (a loaded TorchScript or ``pt2`` module) as a NumPy function."""
    return lambda x: module(torch.from_numpy(x)).numpy()


# ----------------------------------------------------------------------------- formats
def _exported_program(policy: TrainedPolicy) -> torch.export.ExportedProgram:
    example = torch.zeros(2, *policy.observation_shape)
    batch = torch.export.Dim("batch")
    try:
        program = torch.export.export(
            policy.module, (example,), dynamic_shapes=({0: batch},), strict=False
        )
    except Exception as err:
        raise ExportError(
            f"torch.export cannot trace the {policy.name} policy with a dynamic batch size "
            f"({_first_line(err)})"
        ) from err
    # the losses' cached views of stacked critic weights become constants of the graph:
    # copies of their own, so that a saved program holds each tensor whole
    for name, value in program.constants.items():
        if isinstance(value, torch.Tensor):
            program.constants[name] = value.clone()
    return program


def _write_onnx(
    policy: TrainedPolicy, program: torch.export.ExportedProgram, tmp: Path, card: str
) -> float:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as err:
        raise ExportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({err.name} is missing): "
            "pip install 'torchrl-offline[export]'"
        ) from None
    try:
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            input_names=["observation"],
            output_names=["action"],
            verbose=False,
        )
    except Exception as err:
        raise ExportError(
            f"the {policy.name} policy cannot be exported to ONNX ({_first_line(err)}); "
            "try --format pt2"
        ) from err
    onnx_program.model.metadata_props[CARD_KEY] = card
    onnx_program.save(tmp, external_data=False)
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    return _compare(policy, lambda x: session.run(None, {"observation": x})[0], "onnx")


def _write_pt2(
    policy: TrainedPolicy, program: torch.export.ExportedProgram, tmp: Path, card: str
) -> float:
    torch.export.save(program, tmp, extra_files={CARD_FILE: card})
    return _compare(policy, _numpy_runner(torch.export.load(tmp).module()), "pt2")


def _write_torchscript(
    policy: TrainedPolicy, program: torch.export.ExportedProgram, tmp: Path, card: str
) -> float:
    """Traces the exported program (plain aten operators) or else the module itself, and
    keeps the first trace that acts as the policy at every checked batch size: tracing
    records sizes as constants wherever the graph spells them out (BCQ's and BEAR's
    candidates), and cannot trace TorchRL's ``TanhNormal`` (a Python autograd function)."""
    example = torch.zeros(2, *policy.observation_shape)
    module = policy.module
    attempts: list[tuple[str, Callable[[], Any]]] = [
        ("the exported graph", lambda: torch.jit.trace(program.module(), example)),
        ("the module", lambda: torch.jit.trace(lambda x: module(x), example)),
    ]
    failures = []
    for what, trace in attempts:
        try:
            traced = trace()
            torch.jit.save(traced, str(tmp), _extra_files={CARD_FILE: card})
            return _compare(policy, _numpy_runner(torch.jit.load(str(tmp))), "torchscript")
        except Exception as err:  # tracing and TorchScript errors have no common type
            failures.append(f"tracing {what}: {_first_line(err)}")
    raise ExportError(
        f"the {policy.name} policy cannot be traced to TorchScript with a dynamic batch size "
        f"({'; '.join(failures)}); export it with --format onnx or pt2 (TorchScript is "
        "deprecated since torch 2.5)"
    )


_WRITERS = {"onnx": _write_onnx, "pt2": _write_pt2, "torchscript": _write_torchscript}


def _publish(tmp: Path, path: Path, force: bool) -> None:
    """Renames the finished ``tmp`` to ``path``; without ``force``, never over a file."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists, even one created since the check
    except FileExistsError:
        raise FileExistsError(_exists_message(path)) from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise FileExistsError(_exists_message(path)) from None
        os.replace(tmp, path)


def _exists_message(path: Path) -> str:
    return f"{str(path)!r} already exists; pass force=True (--force) to replace it"


def export_policy(
    policy: TrainedPolicy | str | os.PathLike,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    force: bool = False,
    seed: int = 0,
) -> ExportResult:
    """Writes the greedy policy to ``path`` as a file that runs without torchrl_offline.

    Args:
        policy: a :class:`~torchrl_offline.deploy.TrainedPolicy`, or a checkpoint file or
            run directory (loaded with :func:`~torchrl_offline.deploy.load_policy`).
        path: the file to write (its folder is created).

    Keyword Args:
        format (str): ``"onnx"``, ``"torchscript"`` or ``"pt2"`` (:data:`EXPORT_FORMATS`).
        force (bool): replace an existing file.
        seed (int): seed of BCQ's and BEAR's fixed candidate codes, when ``policy`` is a
            path.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ValueError: an unknown format.
        FileExistsError: ``path`` exists and ``force`` is not set.
        ExportError: the policy cannot be written in that format, or the written file does
            not act as the policy does (nothing is written then).
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(
            f"unknown export format {format!r}; valid formats: {', '.join(EXPORT_FORMATS)}"
        )
    path = Path(path).expanduser()
    if path.exists() and not force:
        raise FileExistsError(_exists_message(path))
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory; name the file to write")
    if not isinstance(policy, TrainedPolicy):
        policy = load_policy(policy, seed=seed)
    card = json.dumps(policy_card(policy))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, _TMP)
    # the temporary name ends with the format's suffix: torch.export.save requires ".pt2"
    tmp = path.with_name(
        f".{path.name}.{owner_tag()}-{uuid.uuid4().hex}.tmp{EXPORT_FORMATS[format]}"
    )
    try:
        with _frozen(policy.module), _quiet():
            program = _exported_program(policy)
            difference = _WRITERS[format](policy, program, tmp, card)
        _publish(tmp, path, force)
    finally:
        tmp.unlink(missing_ok=True)
    checked = sum(CHECK_BATCH_SIZES)
    return ExportResult(path=path, format=format, checked=checked, max_difference=difference)
