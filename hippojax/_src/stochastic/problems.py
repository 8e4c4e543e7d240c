"""Minibatch problems, big enough for the noise of minibatches to matter.

All data is generated locally from installed packages, no network:

* ``mlp-mnist1d-10k``: a tanh MLP on 10,000 MNIST-1D training examples
  (``mnist1d`` generates as many as asked for; 15,000 here, its 80/20 split
  giving 12,000 training and 3,000 test examples, of which 10,000 train and
  2,000 validate);
* ``hyper-cleaning-mnist1d``: one weight per training example on 5,000
  MNIST-1D examples, half of whose labels were replaced by another class;
  a linear softmax model, as in benchmark_bilevel's MNIST data cleaning;
* ``logreg-ijcnn1-like``: logistic regression with one L2 strength per
  feature on 25,000 examples. It stands in for benchmark_bilevel's ijcnn1
  (22 features, about 10% positives, 49,990 training examples), which needs
  a download: scikit-learn's ``make_classification`` draws 50,000 examples
  with 22 features (8 informative, 6 linear combinations of them, 8 noise),
  90/10 class weights and 3% flipped labels, ``random_state=0``, split
  25,000 / 12,500 / 12,500.
"""

# The problems share the data helpers of hippojax._src.problems.
# pylint: disable=protected-access

import functools
import os
import pathlib
import random
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from hippojax._src import problems as base
from hippojax._src.space import SearchSpace, suggest_float
from hippojax._src.steps import gradient_step

MNIST1D_SAMPLES = 15_000


def _cache_dir() -> pathlib.Path:
  default = pathlib.Path(os.environ.get("XDG_CACHE_HOME",
                                        pathlib.Path.home() / ".cache"))
  return pathlib.Path(os.environ.get("HIPPOJAX_CACHE_DIR",
                                     default / "hippojax"))


@functools.cache
def mnist1d_arrays(num_samples: int = MNIST1D_SAMPLES):
  """MNIST-1D with ``num_samples`` examples, generated locally.

  The same generator as ``get_dataset(args, download=False,
  regenerate=True)`` (default arguments, seed 42) but without writing a
  pickle into the working directory; NumPy's and Python's global
  generators, which it reseeds, are restored. Generating 15,000 examples
  takes 20-60 s of CPU, so the arrays are kept in ``$HIPPOJAX_CACHE_DIR``
  (default ``~/.cache/hippojax``) and regenerated when that is missing or
  unwritable.
  """
  from mnist1d import data as mnist1d_data
  args = mnist1d_data.get_dataset_args()
  args.num_samples = int(num_samples)
  path = _cache_dir() / f"mnist1d-{args.num_samples}-seed{args.seed}.npz"
  keys = ("x", "y", "x_test", "y_test")
  try:
    with np.load(path) as f:
      return tuple(f[k] for k in keys)
  except (OSError, KeyError, ValueError):
    pass
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    data = mnist1d_data.make_dataset(args)
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  arrays = tuple(np.asarray(data[k]) for k in keys)
  try:  # atomic: a concurrent reader never sees a partial file
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz",
                                     delete=False) as tmp:
      np.savez(tmp, **dict(zip(keys, arrays)))
    os.replace(tmp.name, path)
  except OSError:
    pass  # a read-only home: regenerate next time
  return arrays


@functools.cache
def _mlp_mnist1d_10k(x64: bool) -> base.Problem:
  del x64
  x, y, xe, ye = mnist1d_arrays()
  order = np.random.default_rng(base._SPLIT_SEED).permutation(len(y))
  tr, va = order[:10_000], order[10_000:12_000]
  xt, xv, xe = base._standardise(x[tr], x[va], xe)
  sizes = (xt.shape[1], 32, 32, 10)
  space = SearchSpace((suggest_float("weight_decay", 1e-6, 1e-1, log=True,
                                     shape=(len(sizes) - 1,)),))
  return base.Problem(
      name="mlp-mnist1d-10k",
      description=("tanh MLP 40-32-32-10 on 10,000 MNIST-1D examples, SGD on "
                   "minibatches of 128, per-layer weight decay (3 hparams)"),
      space=space, train_step=gradient_step(base._mlp_loss, 0.2),
      val_loss=base._mlp_ce, init_params=base._mlp_init(sizes),
      **base._labelled((xt, xv, xe), (y[tr], y[va], ye)),
      test_metric=base._mlp_accuracy, inner_steps=3000, outer_lr=0.05,
      batch_size=128, val_batch_size=128)


_CLEANING_L2 = 1e-3


def _cleaning_loss(params, hparams, batch):
  """``mean_i weight[idx_i] · CE_i + ½·10⁻³‖W‖²`` on a batch ``(x, y,
  idx)``: each example carries its position, so that a minibatch reads its
  own weights."""
  x, y, idx = batch
  logits = x @ params["w"] + params["b"]
  ce = (jax.nn.logsumexp(logits, axis=-1)
        - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])
  return (jnp.mean(hparams["weight"][idx] * ce)
          + 0.5 * _CLEANING_L2 * jnp.sum(params["w"] ** 2))


@functools.cache
def _hyper_cleaning_mnist1d(x64: bool) -> base.Problem:
  del x64
  x, y, xe, ye = mnist1d_arrays()
  order = np.random.default_rng(base._SPLIT_SEED + 2).permutation(len(y))
  tr, va = order[:5_000], order[5_000:7_000]
  xt, xv, xe = base._standardise(x[tr], x[va], xe)
  yt = y[tr].copy()
  rng = np.random.default_rng(base._SPLIT_SEED + 3)
  corrupted = rng.random(len(tr)) < 0.5
  shift = rng.integers(1, 10, size=len(tr))  # a different class, uniformly
  yt = np.where(corrupted, (yt + shift) % 10, yt)
  n, d = xt.shape
  f = base._float
  space = SearchSpace((suggest_float("weight", 0.0, 1.0, shape=(n,),
                                     init=0.5),))
  curvature = base._max_eig(xt, 0.5) + _CLEANING_L2
  return base.Problem(
      name="hyper-cleaning-mnist1d",
      description=("data hyper-cleaning on 5,000 MNIST-1D examples, one "
                   f"weight per example ({n} hparams), "
                   f"{corrupted.mean():.0%} of training labels corrupted; "
                   "linear softmax model, minibatches of 64"),
      space=space, train_step=gradient_step(_cleaning_loss, 1.0 / curvature),
      val_loss=base._softmax_ce, init_params=base._linear_init(d, 10),
      train_data=(f(xt), jnp.asarray(yt), jnp.arange(n)),
      val_data=(f(xv), jnp.asarray(y[va])), test_data=(f(xe), jnp.asarray(ye)),
      test_metric=base._softmax_accuracy, metric_name="test accuracy",
      higher_is_better=True, inner_steps=2000, outer_lr=0.3,
      extras={"corrupted": corrupted}, batch_size=64, val_batch_size=64)


@functools.cache
def ijcnn1_like():
  """The 50,000-example stand-in for ijcnn1 (see the module docstring)."""
  from sklearn.datasets import make_classification
  x, y = make_classification(
      n_samples=50_000, n_features=22, n_informative=8, n_redundant=6,
      n_clusters_per_class=2, weights=[0.9, 0.1], flip_y=0.03,
      class_sep=0.8, random_state=0)
  tr, va, te = base._split(len(y))
  xs = base._standardise(x[tr], x[va], x[te])
  return xs, [y[i].astype(float) for i in (tr, va, te)]


@functools.cache
def _logreg_ijcnn1_like(x64: bool) -> base.Problem:
  del x64
  (xt, xv, xe), (yt, yv, ye) = ijcnn1_like()
  d = xt.shape[1]
  f = base._float
  space = SearchSpace((suggest_float("l2", 1e-5, 1e1, log=True, shape=(d,)),))
  step = gradient_step(base._logreg_loss,
                       base._max_rate(base._max_eig(xt, 0.25)))

  def init(key):
    del key
    dt = jnp.zeros(()).dtype
    return {"b": jnp.zeros((), dt), "w": jnp.zeros(d, dt)}

  return base.Problem(
      name="logreg-ijcnn1-like",
      description=("logistic regression with one L2 strength per feature "
                   f"({d} hparams) on 25,000 synthetic ijcnn1-like examples "
                   "(scikit-learn make_classification), minibatches of 256"),
      space=space, train_step=step, val_loss=base._binary_ce,
      init_params=init, train_data=(f(xt), f(yt)), val_data=(f(xv), f(yv)),
      test_data=(f(xe), f(ye)), test_metric=base._binary_accuracy,
      metric_name="test accuracy", higher_is_better=True, inner_steps=2000,
      outer_lr=0.1, batch_size=256, val_batch_size=256)


def mlp_mnist1d_10k() -> base.Problem:
  """A tanh MLP on 10,000 MNIST-1D examples trained by minibatch SGD."""
  return _mlp_mnist1d_10k(base._x64())


def hyper_cleaning_mnist1d() -> base.Problem:
  """Data hyper-cleaning on MNIST-1D, half the labels corrupted, minibatch."""
  return _hyper_cleaning_mnist1d(base._x64())


def logreg_ijcnn1_like() -> base.Problem:
  """Per-feature-L2 logistic regression on a synthetic ijcnn1 stand-in."""
  return _logreg_ijcnn1_like(base._x64())
