"""Bad input fails early with a message naming the argument or pytree path;
value problems at run time are reported in ``info``, never raised.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hippojax

METHODS = ("t1t2", "ift", "hoag", "implicit_hypergrad", "reverse", "forward",
           "drmad")
UNROLLED = ("reverse", "forward", "drmad")
NUM_STEPS = 3


def _call(method, step, val_loss, hparams, params, train, val, **options):
  """Calls ``method``; unrolled methods get ``NUM_STEPS`` copies of train."""
  if method in UNROLLED:
    train = jax.tree.map(lambda x: jnp.stack([x] * NUM_STEPS), train)
  if method == "drmad":
    return hippojax.drmad(step, val_loss, hparams, params, params, train, val,
                          **options)
  fn = {"t1t2": hippojax.t1t2, "ift": hippojax.ift, "hoag": hippojax.hoag,
        "implicit_hypergrad": hippojax.implicit_hypergrad,
        "reverse": hippojax.reverse, "forward": hippojax.forward}[method]
  return fn(step, val_loss, hparams, params, train, val, **options)


def _params_name(method):
  return "params0" if method in UNROLLED else "params"


def _missing_b(params, hparams, batch):
  del hparams, batch
  return {"w": params["w"]}


def _extra_key(params, hparams, batch):
  del hparams, batch
  return dict(params, c=params["b"])


def _b_as_vector(params, hparams, batch):
  del hparams, batch
  return {"w": params["w"], "b": jnp.reshape(params["b"], (1,))}


def _w_as_float32(params, hparams, batch):
  del hparams, batch
  return {"w": params["w"].astype(jnp.float32), "b": params["b"]}


@pytest.mark.parametrize("method", METHODS)
def test_train_step_structure_mismatch(tree_ridge, method):
  """A missing or unexpected key is named with its path."""
  p = tree_ridge
  name = _params_name(method)
  with pytest.raises(ValueError, match=re.escape(f"missing {name}['b']")):
    _call(method, _missing_b, p.val_loss, p.theta, p.params, p.train, p.val)
  with pytest.raises(ValueError, match=re.escape(f"unexpected {name}['c']")):
    _call(method, _extra_key, p.val_loss, p.theta, p.params, p.train, p.val)


@pytest.mark.parametrize("method", METHODS)
def test_train_step_shape_and_dtype_mismatch(tree_ridge, method):
  """A leaf whose shape or dtype changes is named with its path."""
  p = tree_ridge
  name = _params_name(method)
  with pytest.raises(ValueError,
                     match=re.escape(f"{name}['b']") + ".*shape \\(1,\\)"):
    _call(method, _b_as_vector, p.val_loss, p.theta, p.params, p.train, p.val)
  with pytest.raises(ValueError,
                     match=re.escape(f"{name}['w']") + ".*float32"):
    _call(method, _w_as_float32, p.val_loss, p.theta, p.params, p.train,
          p.val)


def _vector_val(params, hparams, batch):
  del hparams
  return (batch["x"] @ params["w"] + params["b"] - batch["y"])**2


def _tuple_val(params, hparams, batch):
  return (_vector_val(params, hparams, batch).mean(),) * 2


@pytest.mark.parametrize("method", METHODS)
def test_non_scalar_val_loss(tree_ridge, method):
  """A vector (or a tuple) returned by val_loss is refused."""
  p = tree_ridge
  with pytest.raises(ValueError, match="val_loss must return a scalar.*50"):
    _call(method, p.step, _vector_val, p.theta, p.params, p.train, p.val)
  with pytest.raises(ValueError, match="val_loss must return a single scalar"):
    _call(method, p.step, _tuple_val, p.theta, p.params, p.train, p.val)


@pytest.mark.parametrize("method", METHODS)
def test_non_floating_hparams(tree_ridge, method):
  """Integer arrays and Python ints are refused, naming the path."""
  p = tree_ridge
  int_array = dict(p.theta, log_l2=jnp.arange(5))
  with pytest.raises(TypeError, match=re.escape("hparams['log_l2']") +
                     ".*int"):
    _call(method, p.step, p.val_loss, int_array, p.params, p.train, p.val)
  python_int = dict(p.theta, log_b=1)
  with pytest.raises(TypeError, match=re.escape("hparams['log_b']") +
                     ".*integer 1"):
    _call(method, p.step, p.val_loss, python_int, p.params, p.train, p.val)
  with pytest.raises(TypeError, match=r"hparams .*integer"):
    _call(method, p.step, p.val_loss, True, p.params, p.train, p.val)


def test_hparams_without_leaves(ridge):
  with pytest.raises(ValueError, match="hparams has no array leaves"):
    hippojax.hoag(ridge.step, ridge.val_loss, {}, ridge.params, ridge.train,
                  ridge.val)


@pytest.mark.parametrize("method, options, match", [
    ("ift", {"num_iters": -1}, "num_iters must be >= 0, got -1"),
    ("ift", {"num_iters": 2.0}, "num_iters must be an integer"),
    ("ift", {"tol": 0.0}, "tol must be a finite number > 0, got 0.0"),
    ("hoag", {"tol": -1e-3}, "tol must be a finite number > 0"),
    ("hoag", {"tol": 0}, "tol must be a finite number > 0"),
    ("hoag", {"maxiter": 0}, "maxiter must be >= 1, got 0"),
    ("implicit_hypergrad", {"solver": "lu"}, "solver='lu' is not one of"),
    ("implicit_hypergrad", {"solver": 3}, "solver must be a name"),
    ("reverse", {"remat": 0}, "remat must be >= 1, got 0"),
    ("reverse", {"remat": -2}, "remat must be >= 1"),
    ("reverse", {"remat": 1.5}, "remat must be an integer"),
    ("reverse", {"num_steps": 4}, "num_steps=4 but train_batches has "
     "leading axis 3"),
])
def test_invalid_options(ridge, method, options, match):
  """Options are checked when the function is called, naming the option."""
  error = TypeError if "integer" in match or "a name" in match else ValueError
  with pytest.raises(error, match=re.escape(match)):
    _call(method, ridge.step, ridge.val_loss, ridge.theta, ridge.params,
          ridge.train, ridge.val, **options)


@pytest.mark.parametrize("method", METHODS)
def test_non_callable_functions(ridge, method):
  with pytest.raises(TypeError, match="train_step must be callable"):
    _call(method, None, ridge.val_loss, ridge.theta, ridge.params, ridge.train,
          ridge.val)
  with pytest.raises(TypeError, match="val_loss must be callable"):
    _call(method, ridge.step, "loss", ridge.theta, ridge.params, ridge.train,
          ridge.val)


@pytest.mark.parametrize("method", UNROLLED)
def test_train_batches_leading_axes_differ(ridge, method):
  """Leaves of train_batches with different T are named with their length."""
  batches = {"x": jnp.stack([ridge.train["x"]] * 4),
             "y": jnp.stack([ridge.train["y"]] * 3)}
  args = (ridge.step, ridge.val_loss, ridge.theta, ridge.params)
  match = re.escape("train_batches['x']: 4, train_batches['y']: 3")
  with pytest.raises(ValueError, match=match):
    if method == "drmad":
      hippojax.drmad(*args, ridge.params, batches, ridge.val)
    else:
      getattr(hippojax, method)(*args, batches, ridge.val)


@pytest.mark.parametrize("method", UNROLLED)
def test_train_batches_scalar_leaf_or_no_leaves(ridge, method):
  """A scalar leaf has no step axis; no leaves at all needs num_steps."""
  fn = getattr(hippojax, method)
  args = (ridge.step, ridge.val_loss, ridge.theta, ridge.params)
  if method == "drmad":
    args += (ridge.params,)
  bad = dict(jax.tree.map(lambda x: jnp.stack([x] * 2), ridge.train),
             t=jnp.asarray(1.0))
  with pytest.raises(ValueError, match=re.escape("train_batches['t'] is a "
                                                 "scalar")):
    fn(*args, bad, ridge.val)
  with pytest.raises(ValueError, match="pass num_steps=T"):
    fn(*args, None, ridge.val)


def test_init_and_params_t_structures(tree_ridge):
  """A warm start or paramsT with the wrong structure is refused."""
  p = tree_ridge
  with pytest.raises(ValueError, match="init must have the pytree structure"):
    hippojax.hoag(p.step, p.val_loss, p.theta, p.params, p.train, p.val,
                  init=p.params["w"])
  batches = jax.tree.map(lambda x: x[None], p.train)
  with pytest.raises(ValueError, match="paramsT must have the pytree"):
    hippojax.drmad(p.step, p.val_loss, p.theta, p.params, [p.params["w"]],
                   batches, p.val)


def test_errors_are_raised_under_jit(tree_ridge):
  """Inside a user's jax.jit the same errors surface at trace time."""
  p = tree_ridge

  @jax.jit
  def run(theta, params):
    return hippojax.hoag(_b_as_vector, p.val_loss, theta, params, p.train,
                         p.val).grad

  with pytest.raises(ValueError, match=re.escape("params['b']")):
    run(p.theta, p.params)

  @jax.jit
  def run_int(params):
    return hippojax.ift(p.step, p.val_loss, {"log_l2": jnp.arange(5),
                                             "log_b": 0.0}, params, p.train,
                        p.val).grad

  with pytest.raises(TypeError, match=re.escape("hparams['log_l2']")):
    run_int(p.params)


# ----------------------------------------------------------------------------
# Run-time value problems: reported in info, never raised (also under jit).
# ----------------------------------------------------------------------------


def test_divergent_neumann_is_reported(ridge):
  """Learning rate 3/λ_max(H): |1 − ηh| = 2, the series diverges."""
  step = hippojax.gradient_step(ridge.train_loss, 3 * ridge.lr)
  args = (step, ridge.val_loss, ridge.theta, ridge.params, ridge.train,
          ridge.val)
  for run in (lambda: hippojax.ift(*args, num_iters=40),
              lambda: jax.jit(lambda: hippojax.ift(*args, num_iters=40))()):
    hg = run()
    assert not bool(hg.info.converged)
    assert float(hg.info.residual) > 1e6  # about 2⁴¹
    assert int(hg.info.num_iters) == 40
  # Run long enough the values overflow: a NaN residual, still no exception.
  hg = hippojax.ift(*args, num_iters=1200)
  assert not bool(hg.info.converged)
  assert np.isnan(float(hg.info.residual))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("where", ["train", "val"])
def test_nan_data_is_reported(ridge, method, where):
  """A NaN in the data: converged=False and a NaN residual, no exception."""
  bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), ridge.train if where ==
                     "train" else ridge.val)
  train, val = (bad, ridge.val) if where == "train" else (ridge.train, bad)
  args = (method, ridge.step, ridge.val_loss, ridge.theta, ridge.params,
          train, val)
  for hg in (jax.jit(lambda: _call(*args))(), _call(*args)):
    assert not bool(hg.info.converged)
    assert np.isnan(float(hg.info.residual))
