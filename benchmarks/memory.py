"""Peak memory of the unrolled methods against the number of inner steps T.

``reverse`` without and with rematerialisation (``remat=True``: √T
checkpoints), ``forward`` and ``drmad``, each for T = 10, 100, 1000 steps of
SGD on an MLP with about 10⁵ weights and one weight decay per layer (six
hyperparameters, so that forward mode, whose cost grows with their number,
stays cheap). Each step's minibatch (32 examples) is drawn inside the step
from a PRNG key, so the stacked batches cost 8 bytes per step and the
trajectory dominates.

Every configuration runs in a fresh subprocess, so peaks do not contaminate
each other (``--quick``, a smoke test, runs them all in one subprocess).
There it is compiled ahead of time, the heap is trimmed, the
kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), the call
runs, and the peak resident set above the pre-call level is read back
(``VmHWM`` in ``/proc/self/status``). Also reported: XLA's own buffer
assignment for the call (``compiled.memory_analysis()``: temporaries plus
outputs, exact and noise-free), and on accelerators the device's
``peak_bytes_in_use``.

    python benchmarks/memory.py [--quick] [--out DIR]
"""

import concurrent.futures
import ctypes
import json
import os
import pathlib
import re
import subprocess
import sys
import time

METHODS = ("reverse", "reverse_remat", "forward", "drmad")
FLAT_TOL = 0.10


def _status_kib(field: str) -> int:
  text = pathlib.Path("/proc/self/status").read_text()
  return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _trim_heap():
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except OSError:
    pass


def child(method: str, num_steps: int, hidden: int, batch: int) -> dict:
  """Measures one configuration in this (fresh) process."""
  import jax
  import jax.numpy as jnp
  import hippojax
  import _problems

  d, classes = 64, 10
  params0, _, _, val = _problems.mlp_problem(hidden, n=256, d=d,
                                             classes=classes)
  hparams = [jnp.full((), -4.0) for _ in jax.tree.leaves(params0)]

  def train_loss(params, log_decay, key):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (batch, d))
    y = jax.random.randint(ky, (batch,), 0, classes)
    penalty = sum(jnp.exp(h) * jnp.sum(p**2) for p, h in zip(
        jax.tree.leaves(params), log_decay))
    return _problems.xent(params, (x, y)) + 0.5 * penalty

  step = hippojax.gradient_step(train_loss, learning_rate=0.05)
  keys = jax.random.split(jax.random.PRNGKey(1), num_steps)
  val_loss = _problems.val_loss

  if method == "drmad":
    unroll = jax.jit(lambda p, h, ks: jax.lax.scan(
        lambda w, k: (step(w, h, k), None), p, ks)[0])
    params_t = jax.block_until_ready(unroll(params0, hparams, keys))
    fn = lambda h, p, ks, v: hippojax.drmad(step, val_loss, h, p, params_t,
                                            ks, v)
  elif method == "forward":
    fn = lambda h, p, ks, v: hippojax.forward(step, val_loss, h, p, ks, v)
  else:
    remat = method == "reverse_remat"
    fn = lambda h, p, ks, v: hippojax.reverse(step, val_loss, h, p, ks, v,
                                              remat=remat)
  args = (hparams, params0, keys, val)
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  xla_bytes = None
  if mem is not None:
    xla_bytes = int(mem.temp_size_in_bytes + mem.output_size_in_bytes)

  _trim_heap()
  before = _status_kib("VmRSS")
  pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  seconds = time.perf_counter() - start
  peak = _status_kib("VmHWM")
  stats = jax.devices()[0].memory_stats() or {}
  return dict(
      method=method, steps=num_steps,
      params=int(sum(p.size for p in jax.tree.leaves(params0))),
      rss_before_mib=before / 1024, rss_peak_mib=peak / 1024,
      peak_delta_mib=(peak - before) / 1024,
      xla_mib=None if xla_bytes is None else xla_bytes / 2**20,
      device_peak_mib=(stats["peak_bytes_in_use"] / 2**20
                       if "peak_bytes_in_use" in stats else None),
      seconds=seconds, finite=bool(out.info.converged))


def run_children(configs, hidden, batch) -> list[dict]:
  """Measures ``configs`` (``(method, T)`` pairs) in one fresh subprocess."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child",
         str(hidden), str(batch)] + [f"{m}:{t}" for m, t in configs]
  res = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       check=False)
  if res.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
  lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
  return [json.loads(l) for l in lines]


def growth(rows, method, key):
  """``value(T_max) / value(T_min)`` for one method."""
  pts = sorted((r["steps"], r[key]) for r in rows if r["method"] == method)
  return pts[-1][1] / pts[0][1] if pts[0][1] else float("nan")


def measure(quick: bool) -> dict:
  import _common
  load_before = _common.load()
  if quick:
    steps, hidden, batch = (10, 50), 64, 16
  else:
    steps, hidden, batch = (10, 100, 1000), 288, 32
  configs = [(m, t) for m in METHODS for t in steps]
  if quick:  # a smoke test: one subprocess for all, peaks reset between
    rows = run_children(configs, hidden, batch)
  else:  # one process per configuration, two at a time
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      rows = [r for rs in pool.map(
          lambda c: run_children([c], hidden, batch), configs) for r in rs]
  for r in rows:
    print(r)
  ratio_t = steps[-1] / steps[0]
  verdicts = []
  for m in METHODS:
    g_rss = growth(rows, m, "peak_delta_mib")
    g_xla = growth(rows, m, "xla_mib") if rows[0]["xla_mib"] else None
    if m in ("forward", "drmad"):
      ok = g_xla is not None and abs(g_xla - 1) <= FLAT_TOL
      goal = f"flat within {FLAT_TOL:.0%}"
    elif m == "reverse":
      ok = g_xla is not None and g_xla >= 0.5 * ratio_t
      goal = f"linear (×{ratio_t:g})"
    else:
      ok = g_xla is not None and g_xla < 0.5 * ratio_t
      goal = "sub-linear"
    verdicts.append(dict(method=m, rss_growth=g_rss, xla_growth=g_xla,
                         goal=goal, met=ok))
  return dict(info=_common.run_info(load_before), machine=_common.machine(),
              command=_common.command(), quick=quick, hidden=hidden,
              batch=batch, steps=list(steps), rows=rows, verdicts=verdicts)


def markdown(data: dict) -> str:
  """The results section, from the JSON data."""
  import _common
  rows, verdicts, steps = data["rows"], data["verdicts"], data["steps"]
  per_step = {}
  for m in ("reverse", "reverse_remat"):
    pts = sorted((r["steps"], r["xla_mib"]) for r in rows
                 if r["method"] == m and r["xla_mib"])
    if len(pts) > 1:
      per_step[m] = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
  n_params = rows[0]["params"]
  md = _common.header("Peak memory of the unrolled methods against T",
                      info=data["info"])
  md += [
      f"MLP with {n_params:,} weights, one weight decay per layer (6 "
      f"hyperparameters), SGD steps on {data['batch']}-example minibatches "
      "drawn from a per-step PRNG key, float32. "
      + ("All configurations in one subprocess (quick mode). "
         if data["quick"] else "One fresh process per configuration. ")
      + "`RSS peak − before`: the resident set's peak during the call above "
      "its level just before (kernel `VmHWM`, reset before the call); "
      "`XLA`: temporaries + outputs of the compiled call from XLA's buffer "
      "assignment; `device peak`: accelerator `peak_bytes_in_use` (n/a on "
      "CPU).", "",
      _common.table(
          ["method", "T", "RSS peak − before (MiB)", "XLA (MiB)",
           "device peak (MiB)", "RSS before (MiB)", "seconds"],
          [[r["method"], r["steps"], r["peak_delta_mib"], r["xla_mib"],
            "n/a" if r["device_peak_mib"] is None else r["device_peak_mib"],
            r["rss_before_mib"], r["seconds"]] for r in rows]), "",
      f"Growth from T = {steps[0]} to T = {steps[-1]} "
      f"(×{steps[-1] / steps[0]:g} steps):", "",
      _common.table(
          ["method", "RSS growth", "XLA growth", "goal", "met"],
          [[v["method"], v["rss_growth"], v["xla_growth"], v["goal"],
            "yes" if v["met"] else "no"] for v in verdicts]), "",
      "**Verdict.**", "",
      "* " + ("every goal met." if all(v["met"] for v in verdicts) else
              "missed: " + ", ".join(v["method"] for v in verdicts
                                     if not v["met"]) + "."),
  ]
  if "reverse" in per_step:
    md.append(
        f"* `reverse` stores {per_step['reverse'] * 1024:.0f} KiB per step "
        f"(≈ {per_step['reverse'] * 2**20 / (4 * n_params):.1f}× the "
        "weights: the trajectory plus each step's saved activations); "
        "`remat=True` keeps √T block boundaries and one block "
        + (f"({per_step['reverse_remat'] * 1024:.0f} KiB per step on "
           "average over this range)" if "reverse_remat" in per_step
           else "")
        + "; `forward` holds one tangent per hyperparameter and `drmad` a "
        "few copies of the weights, whatever T.")
  return "\n".join(md)


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    hidden, batch = int(sys.argv[2]), int(sys.argv[3])
    for config in sys.argv[4:]:
      method, steps = config.split(":")
      print(json.dumps(child(method, int(steps), hidden, batch)), flush=True)
    return
  import _common
  args = _common.parser(__doc__).parse_args()
  data = (_common.read("memory", args.out) if args.render
          else measure(args.quick))
  text = markdown(data)
  print(text)
  _common.write("memory", data, text, args.out)


if __name__ == "__main__":
  main()
