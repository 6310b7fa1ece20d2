"""Learned dynamics models for model-based offline RL and model-based OPE.

* :class:`DynamicsEnsemble` (:mod:`.dynamics`): a batched ensemble of Gaussian MLPs over
  the next-observation change and the reward;
* :class:`DynamicsLoss` (:mod:`.dynamics_loss`): its training loss, a TorchRL ``LossModule``;
* :func:`fit_dynamics` (:mod:`.fit`): MBPO-style fitting with bootstraps, early stopping
  and elites;
* termination functions of the benchmark tasks (:mod:`.termination`);
* :class:`LearnedModelEnv` (:mod:`.env`): the model as a batched TorchRL environment;
* model quality (:mod:`.quality`): one-step error, calibration, open-loop error growth.

``data`` and ``objectives`` never import this package.
"""

from torchrl_offline.models.dynamics import DynamicsEnsemble, EnsembleLinear
from torchrl_offline.models.dynamics_loss import DynamicsLoss, gaussian_nll
from torchrl_offline.models.env import LearnedModelEnv
from torchrl_offline.models.errors import ModelError, ModelRangeWarning, TerminationWarning
from torchrl_offline.models.fit import FittedDynamics, check_model_data, fit_dynamics
from torchrl_offline.models.termination import TERMINATION_FUNCTIONS, termination_function

__all__ = [
    "TERMINATION_FUNCTIONS",
    "DynamicsEnsemble",
    "DynamicsLoss",
    "EnsembleLinear",
    "FittedDynamics",
    "LearnedModelEnv",
    "ModelError",
    "ModelRangeWarning",
    "TerminationWarning",
    "check_model_data",
    "fit_dynamics",
    "gaussian_nll",
    "termination_function",
]
