"""Built-in hyperparameter-optimisation problems (no network needed).

Each :class:`Problem` has train/validation/test splits, initial parameters,
``train_step`` and ``val_loss`` (functions of the constrained hyperparameter
dict), a test metric, a search space, and an exact hypergradient where one
exists::

  >>> from hippojax import problems
  >>> problems.names()
  ['ridge-diabetes', 'logreg-breast-cancer', 'mlp-digits', 'hyper-cleaning-digits', 'mlp-mnist1d', 'mlp-mnist1d-10k', 'hyper-cleaning-mnist1d', 'logreg-ijcnn1-like']
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
from hippojax._src.stochastic.problems import hyper_cleaning_mnist1d
from hippojax._src.stochastic.problems import logreg_ijcnn1_like
from hippojax._src.stochastic.problems import mlp_mnist1d_10k
from hippojax._src.stochastic.quadratic import stochastic_quadratic
from hippojax._src.stochastic.quadratic import StochasticQuadratic

__all__ = (
    "DESCRIPTIONS",
    "Problem",
    "get",
    "StochasticQuadratic",
    "hyper_cleaning_digits",
    "hyper_cleaning_mnist1d",
    "logreg_breast_cancer",
    "logreg_digits",
    "logreg_ijcnn1_like",
    "mlp_digits",
    "mlp_mnist1d",
    "mlp_mnist1d_10k",
    "names",
    "ridge_diabetes",
    "stochastic_quadratic",
)
