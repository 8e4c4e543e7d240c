"""Built-in bilevel problems on data that ships with installed packages.

Every problem is a :class:`Problem`: train/validation/test splits, a search
space, pure ``train_step``/``val_loss`` functions of the *constrained*
hyperparameters (a dict ``{name: array}``), initial parameters, a test metric,
and the inner-training budget that one black-box trial and one outer step of a
gradient method both spend. Nothing touches the network: the scikit-learn data
sets are bundled with scikit-learn and MNIST-1D is generated locally.

Problems are built once per process and cached, so their functions keep their
identity and the compiled code is reused.
"""

import dataclasses
import functools
import math
import random
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hippojax._src.space import SearchSpace, suggest_float
from hippojax._src.steps import gradient_step

PyTree = Any

_SPLIT_SEED = 0  # the data splits are fixed; the study seed never moves them


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
  """A bilevel problem: tune ``space`` so that training minimises ``val_loss``.

  Attributes:
    name: the registry name (e.g. ``"ridge-diabetes"``).
    description: one line.
    space: the :class:`~hippojax.SearchSpace` of hyperparameters.
    train_step: ``train_step(params, hparams, batch) -> params``, one
      gradient step on ``batch`` (the whole training set, or a minibatch of
      ``batch_size`` examples), ``hparams`` the constrained dict.
    val_loss: ``val_loss(params, hparams, batch) -> scalar``.
    init_params: ``init_params(key) -> params`` (deterministic in ``key``).
    train_data: the training batch (passed to ``train_step``).
    val_data: the validation batch.
    test_data: the test batch (only read by :meth:`evaluate`).
    test_metric: ``test_metric(params, hparams, batch) -> scalar``.
    metric_name: e.g. ``"test accuracy"``.
    higher_is_better: direction of ``test_metric``.
    inner_steps: training steps of one black-box trial, and of one outer step
      of a gradient method (warm-started).
    outer_lr: default Adam step size on the unconstrained hyperparameters.
    exact_params: ``exact_params(hparams, train_data) -> params``, the exact
      inner solution where a closed form exists, else ``None``.
    extras: problem-specific data, e.g. ``extras["corrupted"]``, the mask of
      corrupted training labels of ``hyper-cleaning-digits``.
    batch_size: ``None`` (the default): every training step sees the whole
      training set. An int: training samples minibatches of that many
      examples (uniformly, with replacement) from
      ``train_data``, with a PRNG key carried through the training loop,
      derived from the seed (see :meth:`sample`).
    val_batch_size: ``None``: the validation loss is evaluated on the whole
      validation set. An int: the stochastic methods sample validation
      minibatches of that size (the retrained validation loss that ranks
      methods is still on the whole set).
  """

  name: str
  description: str
  space: SearchSpace
  train_step: Callable
  val_loss: Callable
  init_params: Callable
  train_data: PyTree
  val_data: PyTree
  test_data: PyTree
  test_metric: Callable
  metric_name: str
  higher_is_better: bool
  inner_steps: int
  outer_lr: float = 0.1
  exact_params: Callable | None = None
  extras: dict = dataclasses.field(default_factory=dict)
  batch_size: int | None = None
  val_batch_size: int | None = None

  def __post_init__(self):
    for name in ("batch_size", "val_batch_size"):
      size = getattr(self, name)
      if size is not None and (isinstance(size, bool) or
                               not isinstance(size, int) or size < 1):
        raise ValueError(f"{name} must be None or an int >= 1, got "
                         f"{size!r}.")

  @property
  def num_train(self) -> int:
    """The number of training examples."""
    return int(jax.tree.leaves(self.train_data)[0].shape[0])

  @property
  def num_val(self) -> int:
    """The number of validation examples."""
    return int(jax.tree.leaves(self.val_data)[0].shape[0])

  def sample(self, key: jax.Array, split: str = "train") -> tuple:
    """A minibatch of ``split`` (``"train"`` or ``"val"``) drawn with ``key``.

    Returns ``(indices, batch)``: ``batch_size`` (``val_batch_size``)
    examples drawn uniformly with replacement, and their rows of every leaf
    of the split's data. With a ``None`` size it returns all examples in order.
    Traceable; ``key`` is a typed PRNG key.
    """
    data, size = {"train": (self.train_data, self.batch_size),
                  "val": (self.val_data, self.val_batch_size)}[split]
    n = int(jax.tree.leaves(data)[0].shape[0])
    if size is None:
      return jnp.arange(n), data
    return sample_rows(key, data, n, size)

  @property
  def num_hparams(self) -> int:
    """The number of scalar hyperparameters."""
    return self.space.size

  def as_hparams(self, values: Any) -> dict:
    """``{name: array}`` in the default float dtype, checked against space."""
    out = {}
    for p in self.space:
      if p.name not in values:
        raise ValueError(f"hparams is missing {p.name!r}; expected keys "
                         f"{self.space.names}.")
      v = p.broadcast(values[p.name], f"hparams[{p.name!r}] has shape")
      out[p.name] = jnp.asarray(v, jnp.zeros(()).dtype)
    return out

  def train(self, hparams: Any, *, seed: int = 0,
            num_steps: int | None = None) -> PyTree:
    """Trains from ``init_params(PRNGKey(seed))`` for ``num_steps`` steps."""
    steps = self.inner_steps if num_steps is None else int(num_steps)
    return _train(self, steps, self.as_hparams(hparams),
                  jax.random.key_data(jax.random.key(seed)))

  def validate(self, hparams: Any, *, seed: int = 0,
               num_steps: int | None = None) -> float:
    """One black-box trial: train from scratch, return the validation loss."""
    steps = self.inner_steps if num_steps is None else int(num_steps)
    return float(_validate(self, steps, self.as_hparams(hparams),
                           jax.random.key_data(jax.random.key(seed))))

  def evaluate(self, hparams: Any, *, seed: int = 0,
               num_steps: int | None = None) -> dict:
    """Trains from scratch (one black-box trial) and evaluates.

    Returns:
      ``{"val_loss": float, "test_metric": float}``.
    """
    steps = self.inner_steps if num_steps is None else int(num_steps)
    val, metric = _evaluate(self, steps, self.as_hparams(hparams),
                            jax.random.key_data(jax.random.key(seed)))
    return {"val_loss": float(val), "test_metric": float(metric)}

  def exact_hypergradient(self, hparams: Any) -> dict | None:
    """``d val_loss(exact_params(λ), λ) / dλ``, or ``None`` without a closed
    form (with respect to the constrained values)."""
    if self.exact_params is None:
      return None
    return _exact_grad(self, self.as_hparams(hparams))


def sample_rows(key: jax.Array, data: PyTree, n: int, size: int) -> tuple:
  """``size`` rows of ``data`` (leading axis ``n``), uniformly with
  replacement: O(size) per draw, where distinct rows would cost O(n)."""
  idx = jax.random.randint(key, (size,), 0, n)
  return idx, jax.tree.map(lambda a: a[idx], data)


def train_steps(problem, params, hparams, num_steps, key):
  """``num_steps`` training steps from ``params`` (traceable).

  Full-batch problems step on ``train_data``; minibatch problems carry
  ``key`` through the loop and draw one minibatch per step. Returns the
  parameters and the key after the steps.
  """
  if problem.batch_size is None:
    return jax.lax.fori_loop(
        0, num_steps,
        lambda _, p: problem.train_step(p, hparams, problem.train_data),
        params), key

  def body(_, carry):
    p, k = carry
    k, sub = jax.random.split(k)
    return problem.train_step(p, hparams, problem.sample(sub)[1]), k

  return jax.lax.fori_loop(0, num_steps, body, (params, key))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train(problem, num_steps, hparams, key_data):
  key = jax.random.wrap_key_data(key_data)
  params = problem.init_params(key)
  # The minibatch stream is a separate key, so that the initial parameters
  # do not depend on whether training is stochastic.
  return train_steps(problem, params, hparams, num_steps,
                     jax.random.fold_in(key, 1))[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _validate(problem, num_steps, hparams, key_data):
  params = _train(problem, num_steps, hparams, key_data)
  return problem.val_loss(params, hparams, problem.val_data)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate(problem, num_steps, hparams, key_data):
  params = _train(problem, num_steps, hparams, key_data)
  return (problem.val_loss(params, hparams, problem.val_data),
          problem.test_metric(params, hparams, problem.test_data))


@functools.partial(jax.jit, static_argnums=0)
def _exact_grad(problem, hparams):
  def objective(h):
    return problem.val_loss(problem.exact_params(h, problem.train_data), h,
                            problem.val_data)
  return jax.grad(objective)(hparams)


# ---------------------------------------------------------------------------
# Data.


def _split(n: int, fractions=(0.5, 0.25)) -> tuple[np.ndarray, ...]:
  order = np.random.default_rng(_SPLIT_SEED).permutation(n)
  a = round(fractions[0] * n)
  b = a + round(fractions[1] * n)
  return order[:a], order[a:b], order[b:]


def _standardise(x_train, *others):
  mean = x_train.mean(0)
  std = x_train.std(0)
  std = np.where(std > 0, std, 1.0)
  return [(x - mean) / std for x in (x_train, *others)]


def _float(x):
  return jnp.asarray(x, jnp.zeros(()).dtype)


def _max_eig(x, scale=1.0) -> float:
  """``scale · λ_max(XᵀX/n)`` (with a column of ones for the intercept)."""
  x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  return scale * float(np.linalg.eigvalsh(x1.T @ x1 / len(x1)).max())


def _max_rate(curvature: float) -> Callable:
  """``learning_rate(hparams) = 1 / (curvature + max regularisation)``."""

  def rate(hparams, batch):
    del batch
    reg = [jnp.max(v) for k, v in hparams.items() if k != "learning_rate"]
    return 1.0 / (curvature + functools.reduce(jnp.maximum, reg))

  return rate


# ---------------------------------------------------------------------------
# Linear models.


def _ridge_loss(w, hparams, batch):
  x, y = batch
  return (0.5 * jnp.mean((x @ w - y) ** 2)
          + 0.5 * jnp.sum(hparams["ridge"] * w**2))


def _mse(w, hparams, batch):
  del hparams
  x, y = batch
  return 0.5 * jnp.mean((x @ w - y) ** 2)


def _test_mse(w, hparams, batch):
  return 2.0 * _mse(w, hparams, batch)


def _ridge_exact(hparams, batch):
  x, y = batch
  n, d = x.shape
  reg = jnp.broadcast_to(hparams["ridge"], (d,))
  return jnp.linalg.solve(x.T @ x / n + jnp.diag(reg), x.T @ y / n)


@functools.cache
def _diabetes():
  from sklearn.datasets import load_diabetes
  x, y = load_diabetes(return_X_y=True)
  tr, va, te = _split(len(y))
  xs = _standardise(x[tr], x[va], x[te])
  mean, std = y[tr].mean(), y[tr].std()
  ys = [(y[i] - mean) / std for i in (tr, va, te)]
  return xs, ys


@functools.cache
def _ridge_diabetes(per_feature: bool, x64: bool) -> Problem:
  del x64  # part of the cache key: arrays take the default float dtype
  (xt, xv, xe), (yt, yv, ye) = _diabetes()
  d = xt.shape[1]
  curvature = float(np.linalg.eigvalsh(xt.T @ xt / len(xt)).max())
  shape = (d,) if per_feature else ()
  space = SearchSpace((suggest_float("ridge", 1e-4, 1e1, log=True,
                                     shape=shape),))
  step = gradient_step(_ridge_loss, _max_rate(curvature))
  name = "ridge-diabetes" if per_feature else "ridge-diabetes-scalar"
  which = "one strength per feature" if per_feature else "one strength"
  return Problem(
      name=name,
      description=("ridge regression on scikit-learn's diabetes data, "
                   f"{which} ({space.size} hparams); exact closed form"),
      space=space, train_step=step, val_loss=_mse,
      init_params=lambda key: jnp.zeros(d, jnp.zeros(()).dtype),
      train_data=(_float(xt), _float(yt)), val_data=(_float(xv), _float(yv)),
      test_data=(_float(xe), _float(ye)), test_metric=_test_mse,
      metric_name="test MSE (standardised target)", higher_is_better=False,
      inner_steps=2000, outer_lr=0.2, exact_params=_ridge_exact)


def _logistic(w, x):
  return x @ w["w"] + w["b"]


def _binary_ce(params, hparams, batch):
  del hparams
  x, y = batch
  z = _logistic(params, x)
  return jnp.mean(jax.nn.softplus(z) - y * z)


def _logreg_loss(params, hparams, batch):
  return (_binary_ce(params, hparams, batch)
          + 0.5 * jnp.sum(hparams["l2"] * params["w"] ** 2))


def _binary_accuracy(params, hparams, batch):
  del hparams
  x, y = batch
  return jnp.mean((_logistic(params, x) > 0) == (y > 0.5))


@functools.cache
def _logreg_breast_cancer(x64: bool) -> Problem:
  del x64
  from sklearn.datasets import load_breast_cancer
  x, y = load_breast_cancer(return_X_y=True)
  tr, va, te = _split(len(y))
  xt, xv, xe = _standardise(x[tr], x[va], x[te])
  d = xt.shape[1]
  space = SearchSpace((suggest_float("l2", 1e-2, 1e1, log=True, shape=(d,)),))
  step = gradient_step(_logreg_loss, _max_rate(_max_eig(xt, 0.25)))

  def init(key):
    del key
    dt = jnp.zeros(()).dtype
    return {"b": jnp.zeros((), dt), "w": jnp.zeros(d, dt)}

  return Problem(
      name="logreg-breast-cancer",
      description=("logistic regression on scikit-learn's breast cancer data, "
                   f"one L2 strength per feature ({d} hparams)"),
      space=space, train_step=step, val_loss=_binary_ce, init_params=init,
      train_data=(_float(xt), _float(y[tr])),
      val_data=(_float(xv), _float(y[va])),
      test_data=(_float(xe), _float(y[te])), test_metric=_binary_accuracy,
      metric_name="test accuracy", higher_is_better=True, inner_steps=3000,
      outer_lr=0.2)


def _softmax_ce(params, hparams, batch):
  del hparams
  x, y = batch
  logits = x @ params["w"] + params["b"]
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1)
                  - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])


def _softmax_accuracy(params, hparams, batch):
  del hparams
  x, y = batch
  return jnp.mean(jnp.argmax(x @ params["w"] + params["b"], -1) == y)


def _softmax_l2_loss(params, hparams, batch):
  return (_softmax_ce(params, hparams, batch)
          + 0.5 * jnp.sum(hparams["l2"] * params["w"] ** 2))


@functools.cache
def _digits(noise: float = 0.0):
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  tr, va, te = _split(len(y), (1000 / len(y), 400 / len(y)))
  xs = _standardise(x[tr], x[va], x[te])
  ys = [y[i] for i in (tr, va, te)]
  corrupted = np.zeros(len(tr), bool)
  if noise:
    rng = np.random.default_rng(_SPLIT_SEED + 1)
    corrupted = rng.random(len(tr)) < noise
    shift = rng.integers(1, 10, size=len(tr))  # a different class, uniformly
    ys[0] = np.where(corrupted, (ys[0] + shift) % 10, ys[0])
  return xs, ys, corrupted


def _labelled(xs, ys) -> dict:
  """Train/validation/test batches ``(features, integer labels)`` and the
  accuracy metric's name and direction, shared by the classifiers."""
  batches = [(_float(x), jnp.asarray(y)) for x, y in zip(xs, ys)]
  return {"train_data": batches[0], "val_data": batches[1],
          "test_data": batches[2], "metric_name": "test accuracy",
          "higher_is_better": True}


def _linear_init(d, k):

  def init(key):
    del key
    dt = jnp.zeros(()).dtype
    return {"b": jnp.zeros(k, dt), "w": jnp.zeros((d, k), dt)}

  return init


@functools.cache
def _logreg_digits(x64: bool) -> Problem:
  del x64
  (xt, xv, xe), (yt, yv, ye), _ = _digits()
  d = xt.shape[1]
  space = SearchSpace((suggest_float("l2", 1e-3, 1e1, log=True,
                                     shape=(d, 10)),))
  step = gradient_step(_softmax_l2_loss, _max_rate(_max_eig(xt, 0.5)))
  return Problem(
      name="logreg-digits",
      description=("softmax regression on scikit-learn's digits, one L2 "
                   f"strength per weight ({d * 10} hparams)"),
      space=space, train_step=step, val_loss=_softmax_ce,
      init_params=_linear_init(d, 10),
      **_labelled((xt, xv, xe), (yt, yv, ye)), test_metric=_softmax_accuracy,
      inner_steps=300, outer_lr=0.2)


def _weighted_ce(params, hparams, batch):
  x, y = batch
  logits = x @ params["w"] + params["b"]
  ce = (jax.nn.logsumexp(logits, axis=-1)
        - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])
  return (jnp.mean(hparams["weight"] * ce)
          + 0.5 * _CLEANING_L2 * jnp.sum(params["w"] ** 2))


_CLEANING_L2 = 1e-3


@functools.cache
def _hyper_cleaning_digits(x64: bool) -> Problem:
  del x64
  (xt, xv, xe), (yt, yv, ye), corrupted = _digits(noise=0.4)
  n, d = xt.shape
  space = SearchSpace((suggest_float("weight", 0.0, 1.0, shape=(n,),
                                     init=0.5),))
  curvature = _max_eig(xt, 0.5) + _CLEANING_L2
  step = gradient_step(_weighted_ce, 1.0 / curvature)
  return Problem(
      name="hyper-cleaning-digits",
      description=("data hyper-cleaning on scikit-learn's digits: one weight "
                   f"per training example ({n} hparams), "
                   f"{corrupted.mean():.0%} of training labels corrupted"),
      space=space, train_step=step, val_loss=_softmax_ce,
      init_params=_linear_init(d, 10),
      **_labelled((xt, xv, xe), (yt, yv, ye)), test_metric=_softmax_accuracy,
      inner_steps=300, outer_lr=0.3, extras={"corrupted": corrupted})


# ---------------------------------------------------------------------------
# Multi-layer perceptrons (tanh, softmax cross-entropy).


def _mlp_init(sizes):

  def init(key):
    dt = jnp.zeros(()).dtype
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for k, m, n in zip(keys, sizes[:-1], sizes[1:]):
      layers.append({"b": jnp.zeros(n, dt),
                     "w": jax.random.normal(k, (m, n), dt) / math.sqrt(m)})
    return layers

  return init


def _mlp_logits(layers, x):
  for layer in layers[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ layers[-1]["w"] + layers[-1]["b"]


def _mlp_ce(layers, hparams, batch):
  del hparams
  x, y = batch
  logits = _mlp_logits(layers, x)
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1)
                  - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])


def _mlp_loss(layers, hparams, batch):
  decay = hparams["weight_decay"]
  penalty = sum(decay[i] * jnp.sum(layer["w"] ** 2)
                for i, layer in enumerate(layers))
  return _mlp_ce(layers, hparams, batch) + 0.5 * penalty


def _mlp_accuracy(layers, hparams, batch):
  del hparams
  x, y = batch
  return jnp.mean(jnp.argmax(_mlp_logits(layers, x), -1) == y)


def _learning_rate(hparams, batch):
  del batch
  return hparams["learning_rate"]


@functools.cache
def _mlp_digits(x64: bool) -> Problem:
  del x64
  (xt, xv, xe), (yt, yv, ye), _ = _digits()
  sizes = (xt.shape[1], 32, 10)
  space = SearchSpace((
      suggest_float("weight_decay", 1e-6, 1e-1, log=True,
                    shape=(len(sizes) - 1,)),
      suggest_float("learning_rate", 1e-2, 1.0, log=True, init=0.3),
  ))
  return Problem(
      name="mlp-digits",
      description=("tanh MLP 64-32-10 on scikit-learn's digits, per-layer "
                   "weight decay and a log learning rate (3 hparams)"),
      space=space, train_step=gradient_step(_mlp_loss, _learning_rate),
      val_loss=_mlp_ce, init_params=_mlp_init(sizes),
      **_labelled((xt, xv, xe), (yt, yv, ye)), test_metric=_mlp_accuracy,
      inner_steps=300, outer_lr=0.1)


@functools.cache
def _mnist1d_arrays():
  """MNIST-1D generated locally (never downloaded), 4000 train / 1000 test."""
  from mnist1d import data as mnist1d_data
  args = mnist1d_data.get_dataset_args()
  # make_dataset is what get_dataset(download=False, regenerate=True) runs,
  # minus writing a pickle into the working directory. It reseeds NumPy's and
  # Python's global generators, so their states are restored afterwards.
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    data = mnist1d_data.make_dataset(args)
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  return data["x"], data["y"], data["x_test"], data["y_test"]


@functools.cache
def _mlp_mnist1d(x64: bool) -> Problem:
  del x64
  x, y, xe, ye = _mnist1d_arrays()
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(y))
  tr, va = order[:3000], order[3000:]
  xt, xv, xe = _standardise(x[tr], x[va], xe)
  sizes = (xt.shape[1], 32, 32, 10)
  space = SearchSpace((suggest_float("weight_decay", 1e-6, 1e-1, log=True,
                                     shape=(len(sizes) - 1,)),))
  return Problem(
      name="mlp-mnist1d",
      description=("tanh MLP 40-32-32-10 on MNIST-1D (generated locally), "
                   "per-layer weight decay (3 hparams)"),
      space=space, train_step=gradient_step(_mlp_loss, 0.5),
      val_loss=_mlp_ce, init_params=_mlp_init(sizes),
      **_labelled((xt, xv, xe), (y[tr], y[va], ye)),
      test_metric=_mlp_accuracy, inner_steps=500, outer_lr=0.1)


# ---------------------------------------------------------------------------
# Registry.


def _x64() -> bool:
  return bool(jax.config.jax_enable_x64)


def ridge_diabetes(per_feature: bool = True) -> Problem:
  """Ridge regression on diabetes, per-feature (10) or one strength (1).

  The inner problem is ``½ mean((Xw − y)²) + ½ Σ_i λ_i w_i²`` on standardised
  features and target; its minimiser has the closed form
  ``(XᵀX/n + diag λ)⁻¹ Xᵀy/n`` (``exact_params``), so
  :meth:`Problem.exact_hypergradient` is exact.
  """
  return _ridge_diabetes(bool(per_feature), _x64())


def logreg_breast_cancer() -> Problem:
  """Logistic regression on breast cancer with one L2 strength per feature."""
  return _logreg_breast_cancer(_x64())


def logreg_digits() -> Problem:
  """Softmax regression on digits with one L2 strength per weight (640)."""
  return _logreg_digits(_x64())


def mlp_digits() -> Problem:
  """A tanh MLP on digits: per-layer weight decay and a log learning rate."""
  return _mlp_digits(_x64())


def hyper_cleaning_digits() -> Problem:
  """Data hyper-cleaning: one weight per training example, 40% labels wrong.

  The training loss is ``mean_i(weight_i · CE_i) + ½·10⁻³‖W‖²`` on 1000
  digits whose labels were replaced by another class with probability 0.4;
  the validation set (400 examples) is clean.
  """
  return _hyper_cleaning_digits(_x64())


def mlp_mnist1d() -> Problem:
  """A tanh MLP on MNIST-1D (generated locally), per-layer weight decay."""
  return _mlp_mnist1d(_x64())


def _minibatch(name: str) -> Callable[[], Problem]:
  """The minibatch problems live with the stochastic methods."""

  def build() -> Problem:
    from hippojax._src.stochastic import problems as minibatch
    return getattr(minibatch, name)()

  build.__name__ = name
  return build


PROBLEMS = {
    "ridge-diabetes": ridge_diabetes,
    "logreg-breast-cancer": logreg_breast_cancer,
    "mlp-digits": mlp_digits,
    "hyper-cleaning-digits": hyper_cleaning_digits,
    "mlp-mnist1d": mlp_mnist1d,
    "mlp-mnist1d-10k": _minibatch("mlp_mnist1d_10k"),
    "hyper-cleaning-mnist1d": _minibatch("hyper_cleaning_mnist1d"),
    "logreg-ijcnn1-like": _minibatch("logreg_ijcnn1_like"),
}

#: The problems trained on minibatches (``Problem.batch_size`` set).
MINIBATCH_PROBLEMS = ("mlp-mnist1d-10k", "hyper-cleaning-mnist1d",
                      "logreg-ijcnn1-like")

DESCRIPTIONS = {
    "ridge-diabetes": "per-feature ridge on diabetes (10 hparams, exact "
                      "closed form)",
    "logreg-breast-cancer": "logistic regression on breast cancer, per-feature"
                            " L2 (30 hparams)",
    "mlp-digits": "tanh MLP on digits, per-layer weight decay + log learning "
                  "rate (3 hparams)",
    "hyper-cleaning-digits": "one weight per training example on digits with "
                             "40% corrupted labels (1000 hparams)",
    "mlp-mnist1d": "tanh MLP on MNIST-1D (generated locally), per-layer weight"
                   " decay (3 hparams)",
    "mlp-mnist1d-10k": "minibatch SGD, tanh MLP on 10k MNIST-1D examples, "
                       "per-layer weight decay (3 hparams)",
    "hyper-cleaning-mnist1d": "minibatch, one weight per example on 5k "
                              "MNIST-1D, 50% corrupted labels (5000 hparams)",
    "logreg-ijcnn1-like": "minibatch, per-feature L2 logistic regression on "
                          "25k synthetic ijcnn1-like examples (22 hparams)",
}


# Variants used by the benchmarks; found by get(), not listed by names().
EXTRA_PROBLEMS = {
    "ridge-diabetes-scalar": functools.partial(ridge_diabetes,
                                               per_feature=False),
    "logreg-digits": logreg_digits,
}

EXTRA_DESCRIPTIONS = {
    "ridge-diabetes-scalar": "ridge on diabetes with one ridge strength (1 "
                             "hparam, exact closed form)",
    "logreg-digits": "softmax regression on digits, one L2 strength per "
                     "weight (640 hparams)",
}


def names() -> list[str]:
  """The names of the built-in problems."""
  return list(PROBLEMS)


def get(name: str | Problem) -> Problem:
  """Returns the built-in problem called ``name`` (built once, cached).

  Args:
    name: one of :func:`names`, or a :class:`Problem` (returned as is).

  Raises:
    ValueError: for an unknown name, listing the choices.
  """
  if isinstance(name, Problem):
    return name
  if name in EXTRA_PROBLEMS:
    return EXTRA_PROBLEMS[name]()
  if name not in PROBLEMS:
    raise ValueError(f"unknown problem {name!r}; choose one of "
                     f"{', '.join(PROBLEMS)}.")
  return PROBLEMS[name]()
