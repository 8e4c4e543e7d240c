"""Built-in hyperparameter-optimisation problems (no network needed).

Each :class:`Problem` has train/validation/test splits, initial parameters,
``train_step`` and ``val_loss`` (functions of the constrained hyperparameter
dict), a test metric, a search space, and an exact hypergradient where one
exists::

  >>> from hippojax import problems
  >>> problems.names()
  ['ridge-diabetes', 'logreg-breast-cancer', 'mlp-digits', 'hyper-cleaning-digits', 'mlp-mnist1d']
  >>> problems.get("ridge-diabetes").num_hparams
  10
"""

from hippojax._src.problems import DESCRIPTIONS
from hippojax._src.problems import get
from hippojax._src.problems import hyper_cleaning_digits
from hippojax._src.problems import logreg_breast_cancer
from hippojax._src.problems import logreg_digits
from hippojax._src.problems import mlp_digits
from hippojax._src.problems import mlp_mnist1d
from hippojax._src.problems import names
from hippojax._src.problems import Problem
from hippojax._src.problems import ridge_diabetes

__all__ = (
    "DESCRIPTIONS",
    "Problem",
    "get",
    "hyper_cleaning_digits",
    "logreg_breast_cancer",
    "logreg_digits",
    "mlp_digits",
    "mlp_mnist1d",
    "names",
    "ridge_diabetes",
)
