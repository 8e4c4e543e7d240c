"""Tests of the JAX path of ``hippojax.torch``: torch code translated to JAX.

Each supported layer, a small CNN and an MLP: the translated function equals
torch's forward pass to float32 rounding; its gradients and Hessian-vector
products equal ``torch.func``'s (float64); and every hippojax method gives
the same hypergradient on the JAX path as on the callback path (float64).
"""

import types
import warnings

import pytest

torch = pytest.importorskip("torch")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import torch.nn.functional as F

import hippojax
import hippojax.torch as hjt

jax.config.update("jax_enable_x64", True)
torch.set_num_threads(1)
nn = torch.nn


def _rel(a, b):
  a = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(a)])
  b = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(b)])
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _randomise(module, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    for name, b in module.named_buffers():
      if b.is_floating_point():
        b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + (
            0.5 if "var" in name else -0.5))
  return module.eval()


# (module, input shape, integer input?) for every supported layer.
LAYERS = {
    "linear": (lambda: nn.Linear(5, 3), (4, 5)),
    "conv1d": (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 2, 9)),
    "conv2d": (lambda: nn.Conv2d(2, 4, 3, padding=1, dilation=1),
               (2, 2, 7, 7)),
    "conv2d_groups_dilation": (lambda: nn.Conv2d(4, 4, 3, groups=2,
                                                 dilation=2), (2, 4, 8, 8)),
    "maxpool1d": (lambda: nn.MaxPool1d(2), (2, 3, 8)),
    "maxpool2d": (lambda: nn.MaxPool2d(3, stride=2, padding=1),
                  (2, 3, 7, 7)),
    "avgpool1d": (lambda: nn.AvgPool1d(3, stride=2, padding=1), (2, 3, 9)),
    "avgpool2d": (lambda: nn.AvgPool2d(2), (2, 3, 6, 6)),
    "avgpool2d_pad": (lambda: nn.AvgPool2d(3, stride=2, padding=1,
                                           count_include_pad=False),
                      (2, 3, 7, 7)),
    "adaptive_avgpool2d": (lambda: nn.AdaptiveAvgPool2d((2, 3)),
                           (2, 3, 5, 7)),
    "adaptive_avgpool1d": (lambda: nn.AdaptiveAvgPool1d(1), (2, 3, 5)),
    "relu": (nn.ReLU, (4, 6)),
    "tanh": (nn.Tanh, (4, 6)),
    "sigmoid": (nn.Sigmoid, (4, 6)),
    "gelu": (nn.GELU, (4, 6)),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), (4, 6)),
    "elu": (nn.ELU, (4, 6)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.1), (4, 6)),
    "softplus": (nn.Softplus, (4, 6)),
    "silu": (nn.SiLU, (4, 6)),
    "hardtanh": (nn.Hardtanh, (4, 6)),
    "softmax": (lambda: nn.Softmax(dim=-1), (4, 6)),
    "log_softmax": (lambda: nn.LogSoftmax(dim=1), (4, 6)),
    "flatten": (nn.Flatten, (2, 3, 4, 5)),
    "dropout_eval": (lambda: nn.Dropout(0.5), (4, 6)),
    "batchnorm1d_eval": (lambda: nn.BatchNorm1d(6), (4, 6)),
    "batchnorm2d_eval": (lambda: nn.BatchNorm2d(3), (2, 3, 4, 4)),
    "layernorm": (lambda: nn.LayerNorm(6), (4, 6)),
    "layernorm_2d": (lambda: nn.LayerNorm((3, 4)), (2, 3, 4)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), (2, 4, 3, 3)),
    "embedding": (lambda: nn.Embedding(10, 4), (3, 5)),
    "embedding_padding": (lambda: nn.Embedding(10, 4, padding_idx=2),
                          (4, 6)),
}


def _layer(name, dtype):
  make, shape = LAYERS[name]
  module = _randomise(make().to(dtype))
  gen = torch.Generator().manual_seed(1)
  if name.startswith("embedding"):
    x = torch.randint(0, 10, shape, generator=gen, dtype=torch.int32)
  else:
    x = torch.randn(shape, generator=gen, dtype=dtype)
  return module, x


def _forward_fn(module):
  model = hjt.functional(module)
  return lambda params, x: model(params, x)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_forward_equals_torch_in_float32(name):
  module, x = _layer(name, torch.float32)
  f = hjt.wrap(_forward_fn(module), path="jax")
  params = hjt.params_of(module)
  assert f.translation(params, jnp.asarray(x.numpy())).path == "jax"
  got = jax.jit(f)(params, jnp.asarray(x.numpy()))
  want = module(x.long() if name.startswith("embedding") else x)
  want = want.detach().numpy()
  assert got.dtype == jnp.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradient_and_hvp_equal_torch_func_in_float64(name):
  """Gradient and Hessian-vector product in the parameters and the input."""
  module, x = _layer(name, torch.float64)
  model = hjt.functional(module)
  params = hjt.params_of(module)
  gen = torch.Generator().manual_seed(2)
  if name.startswith("embedding"):
    x = x.long()
  with torch.no_grad():
    ct = torch.randn(module(x).shape, generator=gen, dtype=torch.float64)

  def loss(p, x):  # a scalar that weighs every output, and is not linear
    out = model(p, x)
    return ((out * out + out) * ct).sum()

  # The differentiated arguments: the parameters, and a floating input.
  args = [{k: torch.tensor(np.asarray(v)) for k, v in params.items()}]
  if not name.startswith("embedding"):
    args.append(x)
  f = lambda *a: loss(*a, x) if len(a) == 1 else loss(*a)
  tangents = [torch.utils._pytree.tree_map(lambda t: torch.randn(
      t.shape, generator=gen, dtype=torch.float64), a) for a in args]
  to_jax = lambda tree: jax.tree.map(lambda t: jnp.asarray(t.numpy()), tree)
  jf = hjt.wrap(loss, path="jax")
  jx = jnp.asarray(x.numpy())
  jg = lambda *a: jax.grad(lambda *a: jf(*a, jx) if len(a) == 1 else jf(*a),
                           argnums=tuple(range(len(a))))(*a)
  grad = jg(*to_jax(args))
  hvp = jax.jvp(jg, tuple(to_jax(args)), tuple(to_jax(tangents)))[1]
  argnums = tuple(range(len(args)))
  want_grad = torch.func.grad(f, argnums=argnums)(*args)
  want_hvp = torch.func.jvp(
      lambda *a: torch.func.grad(f, argnums=argnums)(*a), tuple(args),
      tuple(tangents))[1]
  assert _rel(grad, to_jax(want_grad)) <= 1e-12
  assert _rel(hvp, to_jax(want_hvp)) <= 1e-12


LOSSES = {
    "cross_entropy": (lambda z, y: F.cross_entropy(z, y.long()), "class"),
    "cross_entropy_smoothing": (
        lambda z, y: F.cross_entropy(z, y.long(), label_smoothing=0.1),
        "class"),
    "nll_loss": (lambda z, y: F.nll_loss(F.log_softmax(z, -1), y.long()),
                 "class"),
    "mse_loss": (F.mse_loss, "real"),
    "l1_loss": (F.l1_loss, "real"),
    "smooth_l1_loss": (lambda z, y: F.smooth_l1_loss(z, y, beta=0.5),
                       "real"),
    "huber_loss": (lambda z, y: F.huber_loss(z, y, delta=0.7), "real"),
    "bce_with_logits": (F.binary_cross_entropy_with_logits, "prob"),
    "bce": (lambda z, y: F.binary_cross_entropy(torch.sigmoid(z), y),
            "prob"),
    "kl_div": (lambda z, y: F.kl_div(F.log_softmax(z, -1),
                                     F.softmax(y, -1), reduction="batchmean"),
               "real"),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_equal_torch(name):
  loss, kind = LOSSES[name]
  gen = torch.Generator().manual_seed(3)
  z = torch.randn(6, 4, generator=gen, dtype=torch.float64)
  y = {"class": torch.randint(0, 4, (6,), generator=gen, dtype=torch.int32),
       "real": torch.randn(6, 4, generator=gen, dtype=torch.float64),
       "prob": torch.rand(6, 4, generator=gen, dtype=torch.float64)}[kind]
  f = hjt.wrap(loss, path="jax")
  jz, jy = jnp.asarray(z.numpy()), jnp.asarray(y.numpy())
  np.testing.assert_allclose(f(jz, jy), loss(z, y).numpy(), rtol=1e-12)
  np.testing.assert_allclose(jax.grad(f)(jz, jy),
                             torch.func.grad(loss)(z, y).numpy(), rtol=1e-10,
                             atol=1e-14)


# ----------------------------------------------------------------------------
# Models and hypergradients: the JAX path against the callback path.
# ----------------------------------------------------------------------------


class SmallCNN(nn.Module):
  """Plain ``forward`` code over the layers (not a Sequential)."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(1, 3, 3, padding=1)
    self.bn = nn.BatchNorm2d(3)
    self.fc = nn.Linear(3 * 3 * 3, 2)

  def forward(self, x):
    h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
    return self.fc(torch.flatten(h, 1))


def _problem(kind):
  gen = torch.Generator().manual_seed(0)
  if kind == "mlp":
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.LayerNorm(6),
                        nn.Linear(6, 2)).double()
    x = torch.randn(24, 4, generator=gen, dtype=torch.float64)
  else:
    net = SmallCNN().double()
    x = torch.randn(24, 1, 6, 6, generator=gen, dtype=torch.float64)
  _randomise(net)
  y = torch.randint(0, 2, (24,), generator=gen, dtype=torch.int32)
  model = hjt.functional(net)

  def train_loss(p, h, batch):
    xb, yb = batch
    penalty = sum(h[k].exp() * (p[k]**2).sum() for k in sorted(h)
                  if k != "lr")
    return F.cross_entropy(model(p, xb), yb.long()) + 0.5 * penalty

  def val_loss(p, h, batch):
    xb, yb = batch
    return F.cross_entropy(model(p, xb), yb.long())

  def lr(h, batch):
    del batch
    return 0.3 * torch.sigmoid(h["lr"])

  params = hjt.params_of(net)
  names = [k for k in params if k.endswith("weight")]
  # Strong enough decay that the training Hessian is positive definite at
  # the end of training, as CG (hoag) needs.
  hparams = {k: jnp.asarray(-1.0) for k in names}
  hparams["lr"] = jnp.asarray(0.0)
  data = (jnp.asarray(x.numpy()), jnp.asarray(y.numpy()))
  train = jax.tree.map(lambda a: a[:12], data)
  val = jax.tree.map(lambda a: a[12:], data)
  sides = {}
  for path in ("jax", "callback"):
    sides[path] = (hjt.gradient_step(train_loss, lr, path=path),
                   hjt.wrap(val_loss, path=path))
  step = sides["jax"][0]
  w = jax.jit(lambda w: jax.lax.fori_loop(
      0, 300, lambda _, w: step(w, hparams, train), w))(params)
  batches = jax.tree.map(lambda a: jnp.stack([a[3 * t:3 * t + 6]
                                              for t in range(3)]), train)
  return types.SimpleNamespace(params=params, w=w, hparams=hparams,
                               train=train, val=val, batches=batches,
                               sides=sides)


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def problem(request):
  return _problem(request.param)


def _run(method, ns, step, val):
  h, w, tr, va, w0, bs = (ns.hparams, ns.w, ns.train, ns.val, ns.params,
                          ns.batches)
  return {
      "t1t2": lambda: hippojax.t1t2(step, val, h, w, tr, va),
      "ift": lambda: hippojax.ift(step, val, h, w, tr, va, num_iters=10),
      # Damped: the MLP's Hessian has near-zero (rounding-negative)
      # directions where undamped CG stops, at slightly different points.
      "hoag": lambda: hippojax.hoag(step, val, h, w, tr, va, tol=1e-12,
                                    maxiter=30, damping=1e-3),
      "implicit_hypergrad": lambda: hippojax.implicit_hypergrad(
          step, val, h, w, tr, va, solver=hippojax.Neumann(num_iters=5)),
      "reverse": lambda: hippojax.reverse(step, val, h, w0, bs, va),
      "forward": lambda: hippojax.forward(step, val, h, w0, bs, va),
      "drmad": lambda: hippojax.drmad(step, val, h, w0, w, bs, va),
  }[method]()


@pytest.mark.parametrize("method", ["t1t2", "ift", "hoag",
                                    "implicit_hypergrad", "reverse",
                                    "forward", "drmad"])
def test_same_hypergradient_as_callback_path(problem, method):
  got = _run(method, problem, *problem.sides["jax"])
  want = _run(method, problem, *problem.sides["callback"])
  assert _rel(got.grad, want.grad) <= 1e-9, (got.grad, want.grad)
  assert abs(float(got.value) - float(want.value)) <= 1e-12
  assert jax.tree.map(lambda x: x.dtype, got.grad) == jax.tree.map(
      lambda x: x.dtype, problem.hparams)


def test_paths_are_visible_and_chosen(problem):
  step, val = problem.sides["jax"]
  args = (problem.params, problem.hparams, problem.train)
  got = step.translation(*args)
  assert got.path == "jax" and got.reason == ""
  assert "aten.addmm" in got.ops
  assert problem.sides["callback"][0].translation(*args).path == "callback"
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        args)
  assert val.translation(*shapes).path == "jax"


# ----------------------------------------------------------------------------
# Fallback.
# ----------------------------------------------------------------------------


def _unsupported(x):
  return torch.fft.rfft(x).abs().sum()


def test_unsupported_op_falls_back_with_a_one_line_note():
  f = hjt.wrap(_unsupported, name="spectral")
  x = jnp.arange(8.0)
  with pytest.warns(hjt.TorchFallbackWarning) as record:
    got = f(x)
  message = str(record[0].message)
  assert "\n" not in message and "spectral" in message
  assert "fft" in message
  tr = f.translation(x)
  assert tr.path == "callback" and "fft" in tr.reason
  assert any("fft" in op for op in tr.ops)
  np.testing.assert_allclose(got, _unsupported(torch.arange(8.0,
                                                            dtype=torch.float64)))
  with pytest.raises(ValueError, match="path='jax'.*fft"):
    hjt.wrap(_unsupported, path="jax")(x)


def test_data_dependent_control_flow_falls_back():
  def branchy(x):
    return x.sum() if x.sum() > 0 else (-x).sum()

  f = hjt.wrap(branchy)
  with pytest.warns(hjt.TorchFallbackWarning, match="torch.export"):
    assert float(f(jnp.arange(3.0))) == 3.0
  assert float(f(-jnp.arange(3.0))) == 3.0  # the callback path is exact


def test_bad_path_is_refused():
  with pytest.raises(ValueError, match="path must be one of"):
    hjt.wrap(lambda x: x, path="fast")
  with pytest.raises(ValueError, match="path must be one of"):
    hjt.gradient_step(lambda w, h, b: (w**2).sum(), 0.1, path=None)


def test_no_warning_on_the_jax_path():
  f = hjt.wrap(lambda x: (x.tanh()**2).sum())
  with warnings.catch_warnings():
    warnings.simplefilter("error", hjt.TorchFallbackWarning)
    assert f.translation(jnp.ones(3)).path == "jax"
    f(jnp.ones(3))


def test_second_derivatives_on_the_jax_path():
  f = hjt.wrap(lambda x: (x**3).sum())
  x = jnp.asarray([1.0, 2.0])
  np.testing.assert_allclose(jax.hessian(f)(x), np.diag(6 * np.asarray(x)))


def test_float32_step_keeps_dtypes_and_is_not_recompiled():
  net = _randomise(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
  model = hjt.functional(net)
  step = hjt.gradient_step(
      lambda p, h, b: ((model(p, b[0])[:, 0] - b[1])**2).mean() +
      h * (p["0.weight"]**2).sum(), 0.1)
  params = hjt.params_of(net)
  batch = (jnp.ones((5, 3), jnp.float32), jnp.zeros(5, jnp.float32))
  h = jnp.asarray(0.1, jnp.float32)
  traces = []

  @jax.jit
  def run(w, h):
    traces.append(1)
    return step(w, h, batch)

  out = run(params, h)
  run(out, h + 1)
  assert len(traces) == 1
  assert jax.tree.map(lambda x: x.dtype, out) == jax.tree.map(
      lambda x: x.dtype, params)


def test_study_trains_a_torch_model_inside_jax():
  """A Problem built from torch functions: the study's inner training and
  hypergradients run as compiled JAX, with no call into torch after tracing."""
  net = _randomise(nn.Sequential(nn.Linear(4, 8), nn.Tanh(),
                                 nn.Linear(8, 2)).double())
  model = hjt.functional(net)
  calls = []

  def train_loss(p, h, batch):
    calls.append(1)
    xb, yb = batch
    return F.cross_entropy(model(p, xb), yb.long()) + 0.5 * h["decay"] * (
        p["0.weight"]**2).sum()

  def val_loss(p, h, batch):
    del h
    xb, yb = batch
    return F.cross_entropy(model(p, xb), yb.long())

  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 4))
  y = (x[:, 0] - x[:, 1] > 0).astype(np.int32)
  split = lambda a, b: (jnp.asarray(x[a:b]), jnp.asarray(y[a:b]))
  step = hjt.gradient_step(train_loss, 0.5)
  val = hjt.wrap(val_loss)
  params = hjt.params_of(net)
  problem = hippojax.problems.Problem(
      name="torch-mlp", description="a torch MLP",
      space=hippojax.SearchSpace((hippojax.suggest_float(
          "decay", 1e-4, 1.0, log=True),)),
      train_step=step, val_loss=val, init_params=lambda key: params,
      train_data=split(0, 20), val_data=split(20, 40),
      test_data=split(40, 60), test_metric=val, metric_name="test loss",
      higher_is_better=False, inner_steps=20)
  hparams = problem.as_hparams({"decay": 0.01})
  assert step.translation(params, hparams, problem.train_data).path == "jax"
  study = hippojax.create_study(method="hoag", storage=":memory:")
  study.optimize(problem, n_steps=2)
  traced = len(calls)
  study.optimize(problem, n_steps=4)
  assert len(calls) == traced  # training ran in JAX, not in torch
  assert len(study.trials) == 4
  assert all(np.isfinite(t.value) for t in study.trials)
