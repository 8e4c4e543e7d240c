"""A data-sharded hypergradient across two processes (``jax.distributed``).

Two processes on 127.0.0.1, one CPU device each, joined by gloo
collectives: the batches are sharded across both, and the jitted HOAG
hypergradient must equal the one a single process computes on the whole
batch (float32: up to round-off in the order of the sums).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import json, sys
mode, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import jax
if mode == "multi":
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=2, process_id=pid,
                             initialization_timeout=60)
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import hippojax

rng = np.random.default_rng(0)
x = rng.normal(size=(512, 8)).astype(np.float32)
y = (x @ rng.normal(size=8) + 0.3 * rng.normal(size=512)).astype(np.float32)
mesh = jax.make_mesh((jax.device_count(),), ("data",),
                     axis_types=(jax.sharding.AxisType.Auto,))
data = NamedSharding(mesh, P("data"))
rep = NamedSharding(mesh, P())

def put(a, sharding):
  return jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])

train = (put(x[:256], data), put(y[:256], data))
val = (put(x[256:], data), put(y[256:], data))

def train_loss(w, theta, batch):
  xb, yb = batch
  return 0.5 * jnp.mean((xb @ w - yb) ** 2) + 0.5 * jnp.sum(jnp.exp(theta) * w**2)

def val_loss(w, theta, batch):
  xb, yb = batch
  return 0.5 * jnp.mean((xb @ w - yb) ** 2)

step = hippojax.gradient_step(train_loss, learning_rate=0.2)
theta = put(np.full(8, -2.0, np.float32), rep)
w0 = put(np.zeros(8, np.float32), rep)

@jax.jit
def hypergrad(theta, w, train, val):
  w = jax.lax.fori_loop(0, 300, lambda _, w: step(w, theta, train), w)
  return hippojax.hoag(step, val_loss, theta, w, train, val, tol=1e-6, maxiter=100)

hg = hypergrad(theta, w0, train, val)
grad = np.asarray(hg.grad.addressable_data(0))
print("RESULT " + json.dumps({"grad": grad.tolist(), "value": float(np.asarray(hg.value.addressable_data(0))),
      "devices": jax.device_count(), "processes": jax.process_count(),
      "sharding": str(train[0].sharding.spec)}), flush=True)
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(mode: str, port: int, pid: int):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT,
                                         os.environ.get("PYTHONPATH", "")]))
  env.pop("XLA_FLAGS", None)  # one device per process
  return subprocess.Popen(
      [sys.executable, "-c", CHILD, mode, str(port), str(pid)], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc) -> dict:
  try:
    out, err = proc.communicate(timeout=240)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
  lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, err[-3000:]
  return json.loads(lines[0][len("RESULT "):])


@pytest.mark.slow
def test_two_processes_give_the_single_process_hypergradient():
  port = _free_port()
  procs = [_start("multi", port, pid) for pid in (0, 1)]
  single = _result(_start("single", 0, 0))
  multi = [_result(p) for p in procs]
  for r in multi:
    assert r["processes"] == 2 and r["devices"] == 2
    assert r["sharding"] == "P('data',)"
  # Both processes hold the same replicated result...
  assert multi[0]["grad"] == multi[1]["grad"]
  assert multi[0]["value"] == multi[1]["value"]
  # ...equal to one process's on the whole batch, up to float32 round-off.
  assert single["processes"] == 1
  np.testing.assert_allclose(multi[0]["grad"], single["grad"], rtol=2e-5,
                             atol=1e-7)
  np.testing.assert_allclose(multi[0]["value"], single["value"], rtol=1e-6)
  assert np.max(np.abs(single["grad"])) > 1e-2  # not trivially zero
