"""Many devices and large scale.

* Data-parallel hypergradients: sharded batches need no special code. The
  check runs in a fresh interpreter with four host (CPU) devices, which must
  be requested before jax is imported.
* A million hyperparameters: ``benchmarks/million_hparams.py --quick`` runs
  and writes its results.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import pytest

_CHILD = textwrap.dedent(r"""
  import json, os, sys
  import jax
  if os.environ.get("HIPPOJAX_TEST_X64") == "1":
    jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P
  import hippojax

  assert jax.device_count() == 4, jax.devices()
  # Auto axes: XLA propagates the batch sharding and inserts the all-reduces
  # (jax.make_mesh defaults to Explicit axes, which make user code spell out
  # the sharding of contractions over the batch axis).
  mesh = jax.make_mesh((4,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  data_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())

  rng = np.random.default_rng(0)
  n, d = 64, 6
  x = rng.normal(size=(2 * n, d)).astype(np.float32)
  y = (x @ rng.normal(size=d) + 0.3 * rng.normal(size=2 * n)).astype(
      np.float32)
  train, val = (x[:n], y[:n]), (x[n:], y[n:])

  def train_loss(w, theta, batch):
    xb, yb = batch
    return (0.5 * jnp.mean((xb @ w - yb) ** 2)
            + 0.5 * jnp.sum(jnp.exp(theta) * w ** 2))

  def val_loss(w, theta, batch):
    xb, yb = batch
    return 0.5 * jnp.mean((xb @ w - yb) ** 2)

  step = hippojax.gradient_step(train_loss, learning_rate=0.1)
  tx = optax.chain(
      hippojax.hypergradient(step, val_loss, method="hoag",
                             inner_params_like=jnp.zeros(d)),
      optax.adam(0.1))

  @jax.jit
  def outer(theta, w, state, train, val):
    w = jax.lax.fori_loop(0, 100, lambda _, w: step(w, theta, train), w)
    updates, state = tx.update(None, state, theta, inner_params=w,
                               train_batch=train, val_batch=val)
    return optax.apply_updates(theta, updates), w, state, updates

  def run(train, val, theta, w):
    state = tx.init(theta)
    for _ in range(3):
      theta, w, state, g = outer(theta, w, state, train, val)
    return theta, w, state, g

  theta0, w0 = jnp.full(d, -2.0, jnp.float32), jnp.zeros(d, jnp.float32)
  one = jax.devices()[0]
  single = run(jax.device_put(train, one), jax.device_put(val, one),
               jax.device_put(theta0, one), jax.device_put(w0, one))
  sharded_train = jax.device_put(train, data_sharding)
  sharded_val = jax.device_put(val, data_sharding)
  assert len(sharded_train[0].sharding.device_set) == 4
  multi = run(sharded_train, sharded_val, jax.device_put(theta0, replicated),
              jax.device_put(w0, replicated))

  # The pure function too, eagerly and without any jit of our own.
  w_star = np.asarray(single[1])
  hg_one = hippojax.hoag(step, val_loss, theta0, w_star, train, val)
  hg_multi = hippojax.hoag(step, val_loss, theta0,
                           jax.device_put(w_star, replicated), sharded_train,
                           sharded_val)

  diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
  scale = lambda a: float(np.max(np.abs(np.asarray(a))))
  print(json.dumps({
      "theta": diff(single[0], multi[0]), "theta_scale": scale(single[0]),
      "grad": diff(single[3], multi[3]), "grad_scale": scale(single[3]),
      "hoag": diff(hg_one.grad, hg_multi.grad),
      "hoag_scale": scale(hg_one.grad),
      "value": diff(single[2][0].value, multi[2][0].value),
      "grad_devices": len(multi[3].sharding.device_set),
      "refused": int(multi[2][0].num_refused),
  }))
""")


@pytest.mark.slow
def test_sharded_batches_give_the_single_device_hypergradient():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=4").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env["HIPPOJAX_TEST_X64"] = "1" if jax.config.jax_enable_x64 else "0"
  proc = subprocess.run([sys.executable, "-c", _CHILD], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  # Reductions are summed in a different order across devices: float32
  # round-off, nothing more.
  assert out["grad"] <= 1e-4 * max(1.0, out["grad_scale"]), out
  assert out["hoag"] <= 1e-4 * max(1.0, out["hoag_scale"]), out
  assert out["theta"] <= 1e-4 * max(1.0, out["theta_scale"]), out
  assert out["value"] <= 1e-5, out
  assert out["grad_devices"] == 4 and out["refused"] == 0, out


_BENCH = (pathlib.Path(__file__).resolve().parents[1] / "benchmarks" /
          "million_hparams.py")


@pytest.mark.slow
def test_million_hparams_benchmark_quick(tmp_path):
  spec = importlib.util.spec_from_file_location("million_hparams", _BENCH)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  result = bench.main(["--quick", "--out", str(tmp_path)])
  assert result["hyperparameters"] == result["weights"] > 20_000
  for method in ("ift", "hoag"):
    m = result["methods"][method]
    assert m["grad_finite"] and m["refused"] == 0 and m["grad_norm"] > 0
    assert m["seconds"] > 0 and m["iterations"] == 5
  assert result["peak_rss_mb"] > 0
  saved = json.loads((tmp_path / "million_hparams.json").read_text())
  assert saved["weights"] == result["weights"]
  text = (tmp_path / "million_hparams.md").read_text()
  assert "python benchmarks/million_hparams.py --quick" in text
  assert "| ift |" in text and "| hoag |" in text
