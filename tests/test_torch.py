"""Tests of ``hippojax.torch``: PyTorch functions inside every algorithm.

The same MLP is written in torch and in JAX with the same weights; each
hypergradient method must give the same answer on both, in float64. The torch
functions here take the callback path (``path="callback"``), the fallback for
code outside the translated set; ``test_torch_translate.py`` tests the JAX
path against it.
"""

import pathlib
import re
import subprocess
import sys
import threading
import types

import pytest

torch = pytest.importorskip("torch")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

import hippojax
import hippojax.torch as hjt

jax.config.update("jax_enable_x64", True)
# The models here are tiny: one torch thread avoids oversubscribing the CPU
# that XLA's threads share.
torch.set_num_threads(1)

LR = 0.2
T = 4


def _rel(a, b):
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)])
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------
# The MLP in JAX (module level: static arguments of the jitted core).
# ----------------------------------------------------------------------------


def jax_mlp(p, x):
  h = jnp.tanh(x @ p["0.weight"].T + p["0.bias"])
  return (h @ p["2.weight"].T + p["2.bias"])[:, 0]


def jax_train_loss(p, h, batch):
  x, y = batch
  penalty = sum(jnp.exp(h[k]) * jnp.sum(p[k]**2) for k in sorted(p))
  return 0.5 * jnp.mean((jax_mlp(p, x) - y)**2) + 0.5 * penalty


def jax_val_loss(p, h, batch):
  del h
  x, y = batch
  return 0.5 * jnp.mean((jax_mlp(p, x) - y)**2)


JAX_STEP = hippojax.gradient_step(jax_train_loss, LR)


@pytest.fixture(scope="module")
def mlp():
  """A torch MLP, its JAX twin, data and a point near the fixed point."""
  gen = torch.Generator().manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Linear(4, 6, dtype=torch.float64),
                            torch.nn.Tanh(),
                            torch.nn.Linear(6, 1, dtype=torch.float64))
  with torch.no_grad():
    for p in net.parameters():
      p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
  model = hjt.functional(net)

  def torch_train_loss(p, h, batch):
    x, y = batch
    penalty = sum(h[k].exp() * (p[k]**2).sum() for k in sorted(p))
    return 0.5 * ((model(p, x)[:, 0] - y)**2).mean() + 0.5 * penalty

  def torch_val_loss(p, h, batch):
    x, y = batch
    return 0.5 * ((model(p, x)[:, 0] - y)**2).mean()

  rng = np.random.default_rng(0)
  w_true = rng.normal(size=4)

  def split(n):
    x = rng.normal(size=(n, 4))
    return jnp.asarray(x), jnp.asarray(np.sin(x @ w_true) +
                                       0.1 * rng.normal(size=n))

  train, val = split(30), split(30)
  params = hjt.params_of(net)
  hparams = {k: jnp.asarray(-2.0) for k in params}
  run = jax.jit(lambda w: jax.lax.fori_loop(
      0, 3000, lambda _, w: JAX_STEP(w, hparams, train), w))
  w_star = run(params)
  batches = jax.tree.map(lambda a: jnp.stack([a[5 * t:5 * t + 10]
                                              for t in range(T)]), train)
  return types.SimpleNamespace(
      net=net, params=params, w_star=w_star, hparams=hparams, train=train,
      val=val, batches=batches, w_t=jax.jit(JAX_STEP)(params, hparams, train),
      train_loss=torch_train_loss,
      step=hjt.gradient_step(torch_train_loss, LR, path="callback"),
      val_loss=hjt.wrap(torch_val_loss, path="callback"))


def _methods(ns, step, val):
  """Every algorithm, as ``hparams -> HyperGrad`` for one pair of functions."""
  w, tr, va, w0, bs = ns.w_star, ns.train, ns.val, ns.params, ns.batches
  w_t = ns.w_t  # any end point will do for DrMAD
  return {
      "t1t2": lambda h: hippojax.t1t2(step, val, h, w, tr, va),
      "ift": lambda h: hippojax.ift(step, val, h, w, tr, va, num_iters=20),
      "ift_vjp": lambda h: hippojax.ift(step, val, h, w, tr, va, num_iters=5,
                                        symmetric=False),
      "hoag": lambda h: hippojax.hoag(step, val, h, w, tr, va, tol=1e-12,
                                      maxiter=60),
      "hoag_vjp": lambda h: hippojax.hoag(step, val, h, w, tr, va, tol=1e-12,
                                          maxiter=60, symmetric=False),
      "implicit_gmres": lambda h: hippojax.implicit_hypergrad(
          step, val, h, w, tr, va,
          solver=hippojax.GMRES(tol=1e-10, restart=40, maxiter=1)),
      "reverse": lambda h: hippojax.reverse(step, val, h, w0, bs, va),
      "reverse_remat": lambda h: hippojax.reverse(step, val, h, w0, bs, va,
                                                  remat=True),
      "forward": lambda h: hippojax.forward(step, val, h, w0, bs, va),
      "drmad": lambda h: hippojax.drmad(step, val, h, w0, w_t, bs, va),
  }


def _check_same(got, expected, hparams):
  assert _rel(got.grad, expected.grad) <= 1e-8
  assert abs(float(got.value) - float(expected.value)) <= 1e-12
  assert jax.tree.map(lambda x: x.dtype, got.grad) == jax.tree.map(
      lambda x: x.dtype, hparams)
  assert bool(got.info.converged) == bool(expected.info.converged)


@pytest.mark.parametrize("method", [
    "t1t2", "ift", "ift_vjp", "hoag", "hoag_vjp",
    # GMRES alone compiles for ~10 s (jax.scipy's batched GMRES).
    pytest.param("implicit_gmres", marks=pytest.mark.slow),
    "reverse", "reverse_remat", "forward", "drmad"])
def test_same_hypergradients_as_jax_under_jit(mlp, method):
  expected = _methods(mlp, JAX_STEP, jax_val_loss)[method](mlp.hparams)
  run = _methods(mlp, mlp.step, mlp.val_loss)[method]
  _check_same(jax.jit(run)(mlp.hparams), expected, mlp.hparams)


def test_forward_over_reverse_products_match_jax(mlp):
  """A step that declares no symmetry gets J·v from torch.func.jvp."""
  undeclared = hjt.wrap(mlp.step.fn, name="undeclared", path="callback")
  assert not undeclared.symmetric_jacobian
  run = lambda step, val: hippojax.hoag(
      step, val, mlp.hparams, mlp.w_star, mlp.train, mlp.val, tol=1e-12,
      maxiter=60, symmetric=True)
  _check_same(run(undeclared, mlp.val_loss), run(JAX_STEP, jax_val_loss),
              mlp.hparams)


@pytest.mark.parametrize("method", ["t1t2", "hoag", "reverse", "drmad"])
def test_same_hypergradients_as_jax_without_outer_jit(mlp, method):
  expected = _methods(mlp, JAX_STEP, jax_val_loss)[method](mlp.hparams)
  got = _methods(mlp, mlp.step, mlp.val_loss)[method](mlp.hparams)
  _check_same(got, expected, mlp.hparams)


def test_eager_calls_and_derivatives_match_jax(mlp):
  """Outside jit the primitives run eagerly (DLPack both ways)."""
  args = (mlp.params, mlp.hparams, mlp.train)
  vjp = lambda f, ct, *args: jax.vjp(f, *args)[1](ct)
  jvp = lambda f, t, h: jax.jvp(lambda h: f(mlp.params, h, mlp.train), (h,),
                                (t,))[1]
  ct = jax.tree.map(jnp.ones_like, mlp.params)
  tangent = jax.tree.map(jnp.ones_like, mlp.hparams)
  assert _rel(mlp.step(*args), jax.jit(JAX_STEP)(*args)) <= 1e-12
  want = jax.jit(vjp, static_argnums=0)(JAX_STEP, ct, *args)
  got = vjp(mlp.step, ct, *args)
  assert _rel(got[:2], want[:2]) <= 1e-12
  assert _rel(got[2], want[2]) <= 1e-12  # the data, when asked for
  want = jax.jit(jvp, static_argnums=0)(JAX_STEP, tangent, mlp.hparams)
  assert _rel(jvp(mlp.step, tangent, mlp.hparams), want) <= 1e-12


def test_vmap_over_hyperparameters(mlp):
  stacked = jax.tree.map(lambda h: jnp.stack([h, h + 0.5]), mlp.hparams)
  run = lambda h: hippojax.t1t2(mlp.step, mlp.val_loss, h, mlp.w_star,
                                mlp.train, mlp.val).grad
  got = jax.vmap(run)(stacked)
  for i in range(2):
    pick = lambda tree, i=i: jax.tree.map(lambda x: x[i], tree)
    want = hippojax.t1t2(JAX_STEP, jax_val_loss, pick(stacked), mlp.w_star,
                         mlp.train, mlp.val).grad
    assert _rel(pick(got), want) <= 1e-10


def test_wrapped_functions_are_hashable_and_not_recompiled(mlp):
  fn = lambda x: x * 2
  assert hjt.wrap(fn) == hjt.wrap(fn) and hash(hjt.wrap(fn)) == hash(
      hjt.wrap(fn))
  assert hjt.wrap(fn) != hjt.wrap(lambda x: x * 2)
  assert hjt.wrap(hjt.wrap(fn)) == hjt.wrap(fn)
  calls = []

  def counting_val(p, h, batch):
    calls.append(1)
    return mlp.val_loss.fn(p, h, batch)

  val = hjt.wrap(counting_val)
  run = jax.jit(lambda h: hippojax.t1t2(mlp.step, val, h, mlp.w_star,
                                        mlp.train, mlp.val).grad)
  first = run(mlp.hparams)
  after_first = len(calls)
  second = run(jax.tree.map(lambda h: h + 0.1, mlp.hparams))
  assert run._cache_size() == 1  # pylint: disable=protected-access
  # No new trace, so no new probe: only the compiled callbacks ran again.
  assert len(calls) - after_first <= after_first - 1
  assert _rel(first, second) > 0


def test_products_at_one_point_reuse_one_torch_graph(mlp):
  """CG asks for many products Jᵀv at one point; torch runs the training
  loss's forward and gradient passes once for them, and a new point is never
  served from the old graph."""
  calls = []

  def counting_loss(p, h, batch):
    calls.append(1)
    return mlp.train_loss(p, h, batch)

  def fresh_step():
    return hjt.gradient_step(counting_loss, LR, path="callback")

  def run(step, w):
    return hippojax.hoag(step, mlp.val_loss, mlp.hparams, w, mlp.train,
                         mlp.val, tol=1e-30, maxiter=25)

  step = fresh_step()
  run(step, mlp.w_star)  # compiles (and probes on zeros)
  calls.clear()
  at_star = run(step, mlp.w_star)
  # CG runs to machine precision (its tolerance is floored at epsilon):
  # many products, which all share one graph with the residual's; the VJP in
  # hparams and the step's own call build theirs.
  assert 10 <= int(at_star.info.num_iters) <= 25
  assert len(calls) <= 4, len(calls)

  w_other = jax.tree.map(lambda w: w + 0.05, mlp.w_star)
  at_other = run(step, w_other)
  fresh_other = run(fresh_step(), w_other)
  again = run(step, mlp.w_star)
  for got, want in ((at_other, fresh_other), (again, at_star)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _rel(at_other.grad, at_star.grad) > 1e-3
  step.clear_cache()
  assert not step._pullbacks  # pylint: disable=protected-access


def test_concurrent_calls_on_one_module_are_serialised():
  """XLA may run independent callbacks at once; functional_call is not
  thread-safe (it swaps the module's parameters), so calls are serialised."""
  net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                            torch.nn.Linear(16, 1))
  originals = list(net.parameters())
  model = hjt.functional(net)
  grad = jax.grad(hjt.wrap(lambda p, x: (model(p, x)**2).mean(),
                           path="callback"))
  params, x = hjt.params_of(net), jnp.ones((16, 8), jnp.float32)
  want = grad(params, x)
  failures = []

  def work():
    for _ in range(20):
      got = grad(params, x)
      failures.extend(k for k in want if not np.allclose(got[k], want[k]))

  threads = [threading.Thread(target=work) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not failures
  assert all(a is b for a, b in zip(net.parameters(), originals))


# ----------------------------------------------------------------------------
# Tuning a torch model's weight decay through the optax transform.
# ----------------------------------------------------------------------------


def test_weight_decay_tuned_through_optax_chain_lowers_val_loss():
  rng = np.random.default_rng(2)  # an overfitting regime: 5 weights, 8 points
  d, n = 5, 8
  w_true = rng.normal(size=d)

  def split(n):
    x = rng.normal(size=(n, d))
    return jnp.asarray(x), jnp.asarray(x @ w_true + 2.0 * rng.normal(size=n))

  train, valid = split(n), split(200)
  net = torch.nn.Linear(d, 1, dtype=torch.float64)
  model = hjt.functional(net)

  def train_loss(p, h, batch):
    x, y = batch
    fit = 0.5 * ((model(p, x)[:, 0] - y)**2).mean()
    return fit + 0.5 * h["log_wd"].exp() * (p["weight"]**2).sum()

  def val_loss(p, h, batch):
    x, y = batch
    return 0.5 * ((model(p, x)[:, 0] - y)**2).mean()

  x1 = np.concatenate([np.asarray(train[0]), np.ones((n, 1))], axis=1)
  lr = 1.0 / (np.linalg.eigvalsh(x1.T @ x1 / n)[-1] + np.exp(1.0))
  step = hjt.gradient_step(train_loss, lr)
  val = hjt.wrap(val_loss)
  tx = optax.chain(hippojax.hypergradient(step, val, method="hoag",
                                          maxiter=20),
                   optax.adam(0.5))

  @jax.jit
  def outer(h, w, state):
    w = jax.lax.fori_loop(0, 100, lambda _, w: step(w, h, train), w)
    updates, state = tx.update(None, state, h, inner_params=w,
                               train_batch=train, val_batch=valid)
    h = optax.apply_updates(h, updates)
    return {"log_wd": jnp.clip(h["log_wd"], -8.0, 1.0)}, w, state

  def val_at_optimum(h):
    """Validation loss of the exactly trained model (normal equations)."""
    penalty = np.diag([np.exp(float(h["log_wd"]))] * d + [0.0])
    coef = np.linalg.solve(x1.T @ x1 / n + penalty, x1.T @ train[1] / n)
    x, y = valid
    return 0.5 * np.mean((np.asarray(x) @ coef[:-1] + coef[-1] - y)**2)

  h = {"log_wd": jnp.asarray(-6.0)}
  w = hjt.params_of(net)
  state = tx.init(h)
  before = val_at_optimum(h)
  for _ in range(10):
    h, w, state = outer(h, w, state)
  after = val_at_optimum(h)
  assert int(state[0].num_refused) == 0
  assert float(h["log_wd"]) > -4.0
  assert after < 0.8 * before
  # The torch model tracked the tuned weights: load them back.
  hjt.load_params(net, w)
  np.testing.assert_allclose(net.bias.detach().numpy(), np.asarray(w["bias"]))


# ----------------------------------------------------------------------------
# Dtypes.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtypes_are_preserved(dtype):
  loss = lambda w, lam, b: ((w - b)**2).sum() + lam.exp() * (w**2).sum()
  step = hjt.gradient_step(loss, 0.1)
  val = hjt.wrap(lambda w, lam, b: ((w - 2.0)**2).sum())
  w = jnp.ones(3, dtype)
  lam = jnp.asarray(-1.0, dtype)
  b = jnp.arange(3, dtype=dtype)
  assert step(w, lam, b).dtype == dtype
  assert jax.jit(step)(w, lam, b).dtype == dtype
  cts = jax.vjp(step, w, lam, b)[1](jnp.ones(3, dtype))
  assert [c.dtype for c in cts] == [dtype] * 3
  hg = hippojax.hoag(step, val, lam, w, b, None)
  assert hg.grad.dtype == dtype and hg.value.dtype == dtype
  params = hjt.params_of(torch.nn.Linear(2, 1, dtype={
      jnp.float32: torch.float32, jnp.float64: torch.float64}[dtype]))
  assert {v.dtype for v in params.values()} == {np.dtype(dtype)}


def test_integer_inputs_pass_through_undifferentiated():
  f = hjt.wrap(lambda w, labels: torch.nn.functional.cross_entropy(
      w, labels.long()))
  logits = jnp.zeros((4, 3))
  labels = jnp.asarray([0, 1, 2, 1])
  value, grad = jax.value_and_grad(f)(logits, labels)
  assert value.dtype == logits.dtype and grad.shape == logits.shape
  np.testing.assert_allclose(float(value), np.log(3.0), rtol=1e-6)


# ----------------------------------------------------------------------------
# Bad input and limits.
# ----------------------------------------------------------------------------


def test_non_tensor_output_is_refused():
  f = hjt.wrap(lambda x: {"a": x.sum(), "b": 1.0}, name="returns_float")
  with pytest.raises(TypeError, match=r"returns_float must return torch "
                     r"tensors.*output\['b'\] is a float"):
    f(jnp.ones(2))


def test_changed_dtype_is_refused():
  f = hjt.wrap(lambda x: x.double() * 2)
  with pytest.raises(TypeError, match="dtypes must be preserved"):
    f(jnp.ones(2, jnp.float32))
  g = hjt.wrap(lambda x: x + torch.ones(2, dtype=torch.float64))
  with pytest.raises(TypeError, match="float64.*float32"):
    jax.jit(g)(jnp.ones(2, jnp.float32))


def test_non_array_input_is_refused():
  f = hjt.wrap(lambda x, s: x)
  with pytest.raises(TypeError, match=r"args\[1\] is a str"):
    f(jnp.ones(2), "text")


def test_bad_arguments_are_refused():
  with pytest.raises(TypeError, match="fn must be a callable"):
    hjt.wrap(3)
  with pytest.raises(TypeError, match="device must be"):
    hjt.wrap(lambda x: x, device=3)
  with pytest.raises(TypeError, match="learning_rate must be"):
    hjt.gradient_step(lambda w, h, b: w.sum(), "0.1")
  with pytest.raises(TypeError, match="loss must be callable"):
    hjt.gradient_step(None, 0.1)
  with pytest.raises(TypeError, match="torch.nn.Module"):
    hjt.params_of({"w": torch.ones(2)})
  with pytest.raises(TypeError, match="torch.nn.Module"):
    hjt.functional(lambda x: x)


def test_training_mode_batch_norm_and_dropout_are_refused():
  net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
  model = hjt.functional(net)
  f = hjt.wrap(lambda p, x: model(p, x))
  params, x = hjt.params_of(net), jnp.ones((5, 3), jnp.float32)
  with pytest.raises(ValueError, match=r"BatchNorm1d at '1'.*running "
                     r"statistics.*module.eval\(\)"):
    f(params, x)
  net.eval()
  assert f(params, x).shape == (5, 4)
  drop = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5))
  g = hjt.wrap(lambda p, x: hjt.functional(drop)(p, x))
  with pytest.raises(ValueError, match="Dropout.*random mask"):
    g(hjt.params_of(drop), x)
  drop.eval()
  assert g(hjt.params_of(drop), x).shape == (5, 4)


def test_unknown_parameter_names_are_refused():
  net = torch.nn.Linear(3, 1)
  model = hjt.functional(net)
  f = hjt.wrap(lambda p, x: model(p, x))
  with pytest.raises(ValueError, match=r"not parameters.*\['wieght'\]"):
    f({"wieght": jnp.ones((1, 3), jnp.float32)}, jnp.ones((2, 3), jnp.float32))


def test_missing_double_backward_names_the_methods():
  anchors = torch.zeros(3, 2, dtype=torch.float64)
  loss = lambda w, lam, b: (torch.cdist(w[None], anchors)**2).sum() + (
      lam * (w**2).sum())
  step = hjt.gradient_step(loss, 0.1)
  val = hjt.wrap(lambda w, lam, b: ((w - 1.0)**2).sum())
  w, lam = jnp.ones(2), jnp.asarray(0.1)
  assert step(w, lam, None).shape == (2,)  # the forward pass itself works
  with pytest.raises(NotImplementedError,
                     match=r"(?s)_cdist_backward.*\(t1t2, ift, hoag, "
                     r"implicit_hypergrad, reverse, forward and drmad\).*"
                     r"double backward"):
    hippojax.reverse(step, val, lam, w, None, None, num_steps=2)
  # The step declares a symmetric Jacobian: hoag needs VJPs only.
  with pytest.raises(NotImplementedError, match="(?s)double backward"):
    hippojax.hoag(step, val, lam, w, None, None)
  with pytest.raises(NotImplementedError,
                     match=r"(?s)forward AD.*symmetric=False"):
    hippojax.forward(step, val, lam, w, None, None, num_steps=2)


def test_params_of_and_load_params_round_trip():
  net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
  params = hjt.params_of(net)
  assert sorted(params) == ["0.bias", "0.weight", "1.bias", "1.weight"]
  with torch.no_grad():
    net[0].bias.add_(1.0)  # params_of copies: later edits do not show
  assert not np.allclose(np.asarray(params["0.bias"]),
                         net[0].bias.detach().numpy())
  tuned = {k: v + 1.0 for k, v in params.items()}
  hjt.load_params(net, tuned)
  for name, p in net.named_parameters():
    np.testing.assert_allclose(p.detach().numpy(), np.asarray(tuned[name]))
  with pytest.raises(ValueError, match="not parameters of the module"):
    hjt.load_params(net, {"2.weight": tuned["1.weight"]})
  with pytest.raises(ValueError, match="shape"):
    hjt.load_params(net, {"1.weight": jnp.ones((2, 2), jnp.float32)})
  with pytest.raises(TypeError, match="dtype float64"):
    hjt.load_params(net, {"1.bias": jnp.ones((1,), jnp.float64)})
  with pytest.raises(TypeError, match="dict"):
    hjt.load_params(net, [1.0])


def test_value_dependent_output_shape_fails_clearly():
  f = hjt.wrap(lambda x: x.repeat(int(x[0]) + 1))  # shape (3,) on zeros
  with pytest.raises(Exception, match="must not depend on input values"):
    jax.block_until_ready(jax.jit(f)(jnp.ones(3)))


@pytest.mark.slow
def test_docs_example_runs_and_lowers_the_validation_loss(capsys):
  doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "pytorch.md"
  code = re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)[0]
  namespace = {}
  exec(compile(code, str(doc), "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["after"] < namespace["before"] - 0.05
  assert "validation loss" in capsys.readouterr().out


def test_import_hippojax_does_not_import_torch():
  code = ("import sys, hippojax; "
          "assert 'torch' not in sys.modules, 'torch was imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
