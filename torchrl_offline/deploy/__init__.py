"""Deployment: a trained policy's actions from arrays, and its export to a file that needs
neither torchrl nor torchrl_offline to run.

* :func:`load_policy`, :class:`TrainedPolicy`: ``load_policy(run).predict(observation)``;
* :func:`export_policy`: TorchScript, ONNX or ``torch.export`` files mapping a batch of raw
  observations to the same actions;
* :class:`~torchrl_offline.deploy.tensor_policy.TensorPolicy`: the torch module both use.
"""

from torchrl_offline.deploy.errors import DeployError, ExportError, ObservationError
from torchrl_offline.deploy.export import EXPORT_FORMATS, export_policy
from torchrl_offline.deploy.predict import TrainedPolicy, load_policy
from torchrl_offline.deploy.tensor_policy import TensorPolicy

__all__ = [
    "EXPORT_FORMATS",
    "DeployError",
    "ExportError",
    "ObservationError",
    "TensorPolicy",
    "TrainedPolicy",
    "export_policy",
    "load_policy",
]
