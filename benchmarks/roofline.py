"""Fraction of the machine's dense matmul throughput a hypergradient reaches.

On the largest MLP with per-weight decay (about 1M weights, 512 examples),
one ``hippojax.hoag`` hypergradient with ``K`` CG iterations does

* one validation gradient ``∇ L_val`` (``value_and_grad``),
* one linearisation of the training step (its primal, stored for the loop),
* ``K + 1`` linearised step products ``v ↦ J v`` (``K`` in CG, one for the
  honest residual),
* one mixed product ``Bᵀ q``.

FLOPs of each piece come from XLA's cost analysis of the piece compiled on
its own (``jax.jit(f).lower(...).compile().cost_analysis()``), times its
count; the product is the difference between one and two products after
one linearisation. The machine's throughput is a large ``jnp.matmul`` timed
in the same process, interleaved with the hypergradient. Where the time goes
comes from ``jax.profiler``: the trace's XLA ops are matched to the compiled
HLO and grouped by kind (matrix products, elementwise fusions, the rest) and
by phase (inside the CG loop or not).

    python benchmarks/roofline.py [--quick] [--out DIR]
"""

import collections
import gzip
import json
import pathlib
import re
import tempfile

import jax
import jax.numpy as jnp

import hippojax
import _common
import _problems
from _problems import train_loss, val_loss

GOAL = 0.60


def flops(fn, *args) -> float:
  """FLOPs of ``fn(*args)`` from XLA's cost analysis."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def piece_flops(step, params, hparams, train, val):
  """FLOPs of the pieces of one implicit hypergradient."""
  step_w = lambda w, h: step(w, h, train)

  def one(w, h, v):
    return jax.linearize(lambda w: step_w(w, h), w)[1](v)

  def two(w, h, v, u):
    jvp = jax.linearize(lambda w: step_w(w, h), w)[1]
    return jvp(v), jvp(u)

  def mixed(w, h, q):
    return jax.vjp(lambda lam: step(w, lam, train), h)[1](q)

  val_grad = flops(lambda w, h: jax.value_and_grad(val_loss, (0, 1))(w, h, val),
                   params, hparams)
  f_one = flops(one, params, hparams, params)
  f_two = flops(two, params, hparams, params, params)
  product = f_two - f_one
  return dict(val_grad=val_grad, linearize=f_one - product, product=product,
              mixed=flops(mixed, params, hparams, params),
              gradient=flops(lambda w, h: jax.grad(train_loss)(w, h, train),
                             params, hparams))


# ---------------------------------------------------------------------------
# Profile: XLA ops of the trace, grouped by kind and phase.
# ---------------------------------------------------------------------------


def hlo_ops(hlo_text: str) -> dict[str, dict]:
  """Top-level HLO instructions -> ``{"kind": …, "loop": bool}``.

  ``kind`` is ``matmul`` for dots, convolutions and fusions that contain
  one, ``elementwise`` for other fusions, ``other`` for copies, control flow
  and the rest; ``loop`` says the instruction sits in a while-loop body.
  """
  computations, current, body = {}, None, []
  for line in hlo_text.splitlines():
    head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head and not line.startswith(" "):
      current, body = head.group(2), []
      computations[current] = body
    elif current is not None and line.startswith("  "):
      body.append(line.strip())
  has_dot = {name: any(re.search(r"\b(dot|convolution)\(", l) for l in lines)
             for name, lines in computations.items()}
  loop_bodies = set()
  for lines in computations.values():
    for l in lines:
      m = re.search(r"\bwhile\(.*body=%?([\w.\-]+)", l)
      if m:
        loop_bodies.add(m.group(1))
  ops = {}
  for comp, lines in computations.items():
    if comp.startswith("fused_computation") or "fused" in comp:
      continue
    for l in lines:
      m = re.match(r"^(ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", l)
      if not m:
        m = re.match(r"^(ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(", l)
      if not m:
        continue
      name, op = m.group(2), m.group(3)
      calls = re.search(r"calls=%?([\w.\-]+)", l)
      if op in ("dot", "convolution") or (
          op in ("fusion", "custom-call") and calls and
          has_dot.get(calls.group(1), False)):
        kind = "matmul"
      elif op == "fusion":
        kind = "elementwise"
      else:
        kind = "other"
      ops[name] = dict(kind=kind, loop=comp in loop_bodies)
  return ops


def profile(fn, args, hlo_text: str, calls: int = 2) -> dict:
  """Runs ``fn(*args)`` under ``jax.profiler`` and groups op time."""
  ops = hlo_ops(hlo_text)
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      for _ in range(calls):
        jax.block_until_ready(fn(*args))
    files = sorted(pathlib.Path(logdir).rglob("perfetto_trace.json.gz"))
    if not files:
      return {}
    with gzip.open(files[-1]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  by = collections.defaultdict(float)
  matched = 0
  for e in events:
    if e.get("ph") != "X":
      continue
    op = e.get("args", {}).get("hlo_op") or e.get("name")
    if op not in ops:
      continue
    info = ops[op]
    if info["kind"] == "other" and op.startswith(("while", "conditional",
                                                   "call")):
      continue  # spans its body's ops, which are counted themselves
    matched += 1
    us = e.get("dur", 0.0) / calls
    by[(info["kind"], "loop" if info["loop"] else "outside")] += us
  total = sum(by.values())
  return dict(total_ms=total / 1e3, matched_events=matched, ms={
      f"{k}/{p}": v / 1e3 for (k, p), v in sorted(by.items())})


def measure(quick: bool) -> dict:
  """Runs the measurements; returns the JSON data."""
  load_before = _common.load()
  hidden, batch = (64, 128) if quick else (_problems.SIZES["1M"], 512)
  num_iters = 20
  repeats = 5 if quick else 9
  n_mm = 512 if quick else 2048
  params, hparams, train, val = _problems.mlp_problem(hidden, n=batch)
  n_params = _common.count_params(params)
  step = hippojax.gradient_step(train_loss,
                                learning_rate=_problems.LEARNING_RATE)

  # Damped so that CG runs all its iterations: on this tanh MLP the Hessian
  # is indefinite and undamped CG stops at the first negative curvature.
  def hoag(h, p, t, v):
    return hippojax.hoag(step, val_loss, h, p, t, v, tol=1e-20,
                         maxiter=num_iters, damping=1.0)

  jitted = jax.jit(hoag)  # the same program as the library call
  pieces = piece_flops(step, params, hparams, train, val)
  hg = hoag(hparams, params, train, val)
  # CG may stop before maxiter (at machine precision); count what it ran.
  num_iters = int(hg.info.num_iters)
  counts = dict(val_grad=1, linearize=1, product=num_iters + 1, mixed=1)
  total_flops = sum(pieces[k] * c for k, c in counts.items())

  a = jnp.ones((n_mm, n_mm), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  grad_fn = jax.jit(lambda w, h: jax.grad(train_loss)(w, h, train))
  calls = {
      "hypergradient": lambda: hoag(hparams, params, train, val).grad,
      "matmul": lambda: matmul(a, a),
      "gradient": lambda: grad_fn(params, hparams),
  }
  times = _common.interleaved(calls, repeats)
  med = {k: _common.median(v) for k, v in times["wall"].items()}
  peak = 2 * n_mm**3 / med["matmul"]
  achieved = total_flops / med["hypergradient"]
  grad_rate = pieces["gradient"] / med["gradient"]
  # Per-round fractions (each pairs a hypergradient with its round's matmul).
  def paired_fraction(kind):
    return _common.median(
        [(total_flops / t) / (2 * n_mm**3 / m) for t, m in zip(
            times[kind]["hypergradient"], times[kind]["matmul"])])

  fraction, cpu_fraction = paired_fraction("wall"), paired_fraction("cpu")

  hlo = jitted.lower(hparams, params, train, val).compile().as_text()
  prof = profile(jitted, (hparams, params, train, val), hlo)
  ms = prof.get("ms", {})
  matmul_ms = sum(v for k, v in ms.items() if k.startswith("matmul"))
  loop_ms = sum(v for k, v in ms.items() if k.endswith("/loop"))
  loop_flops = num_iters * pieces["product"]
  matmul_rate = total_flops / (matmul_ms / 1e3) if matmul_ms else float("nan")
  loop_rate = loop_flops / (loop_ms / 1e3) if loop_ms else float("nan")
  return dict(
      info=_common.run_info(load_before), machine=_common.machine(),
      command=_common.command(), goal=GOAL, quick=quick, params=n_params,
      batch=batch, num_iters=num_iters, repeats=repeats, matmul_size=n_mm,
      piece_flops=pieces, counts=counts, total_flops=total_flops,
      hypergradient_ms=med["hypergradient"] * 1e3,
      gradient_ms=med["gradient"] * 1e3, matmul_ms=med["matmul"] * 1e3,
      matmul_gflops=peak / 1e9, achieved_gflops=achieved / 1e9,
      fraction=fraction, cpu_fraction=cpu_fraction,
      gradient_fraction=grad_rate / peak, profile=prof,
      matmul_op_gflops=matmul_rate / 1e9, loop_gflops=loop_rate / 1e9)


def markdown(data: dict) -> str:
  """The results section, from the JSON data."""
  pieces, counts = data["piece_flops"], data["counts"]
  total, goal = data["total_flops"], data["goal"]
  prof = data["profile"]
  ms = prof.get("ms", {})
  total_ms = prof.get("total_ms", 0.0) or float("nan")
  matmul_ms = sum(v for k, v in ms.items() if k.startswith("matmul"))
  elementwise_ms = sum(v for k, v in ms.items() if k.startswith("elementwise"))
  n_mm = data["matmul_size"]
  rows = [[k, counts[k], pieces[k] / 1e9, counts[k] * pieces[k] / 1e9,
           counts[k] * pieces[k] / total] for k in counts]
  md = _common.header("Roofline: hypergradient FLOP rate against dense matmul",
                      info=data["info"])
  md += [
      f"`hippojax.hoag` with {data['num_iters']} CG iterations on the MLP "
      f"with per-weight decay ({data['params']:,} weights, {data['batch']} "
      "examples, float32). FLOPs from XLA's cost analysis of each piece "
      f"times its count; machine throughput from a {n_mm}×{n_mm} "
      "`jnp.matmul` timed in the same process, interleaved; medians of "
      f"{data['repeats']} rounds. Goal: ≥ {goal:.0%} of the matmul "
      "throughput.", "",
      _common.table(["piece", "count", "GFLOP each", "GFLOP total", "share"],
                    rows), "",
      _common.table(
          ["quantity", "value"],
          [["hypergradient FLOPs (G)", total / 1e9],
           ["hypergradient time (ms, median)", data["hypergradient_ms"]],
           ["achieved GFLOP/s", data["achieved_gflops"]],
           [f"{n_mm}² matmul GFLOP/s (median)", data["matmul_gflops"]],
           ["fraction of matmul throughput (median of rounds)",
            data["fraction"]],
           ["same, from process CPU time", data["cpu_fraction"]],
           ["training gradient alone, fraction of matmul throughput",
            data["gradient_fraction"]]]), "",
      "Where the time goes (`jax.profiler` trace of the same program, ms per "
      "hypergradient, XLA ops grouped by kind; `loop` = inside CG's while "
      "loop):", "",
      _common.table(["op kind / phase", "ms", "share"],
                    [[k, v, v / total_ms] for k, v in ms.items()]
                    if ms else [["(no profile)", 0.0, 0.0]]), "",
      _common.table(
          ["from the profile", "value"],
          [["matrix-product ops, share of op time", matmul_ms / total_ms],
           ["elementwise fusions, share of op time",
            elementwise_ms / total_ms],
           ["all FLOPs / matrix-product op time, GFLOP/s",
            data["matmul_op_gflops"]],
           ["CG loop: product FLOPs / loop time, GFLOP/s",
            data["loop_gflops"]],
           ["profiled op time / measured call time",
            total_ms / data["hypergradient_ms"]]]), "",
      "**Verdict.**", "",
      f"* {data['fraction']:.0%} of the matmul throughput measured beside it "
      f"(wall clock; {data['cpu_fraction']:.0%} by CPU time) — goal ≥ "
      f"{goal:.0%} " + ("met." if min(data["fraction"], data["cpu_fraction"])
                        >= goal else
                        f"missed by {goal - data['fraction']:.0%}."), "",
      f"{pieces['product'] * counts['product'] / total:.0%} of the FLOPs "
      "are the linearised step products, all of them matrix products of "
      f"the same shapes as the forward pass; {matmul_ms / total_ms:.0%} of "
      "the op time is in matrix-product ops, the rest mostly elementwise "
      "fusions (tanh derivatives, CG's vector updates, and, on CPU, the "
      "transpose of each weight-shaped tangent). The hypergradient is "
      "therefore bound by matrix-product throughput, at the rate the "
      "training gradient itself reaches; what limits it is the shapes "
      f"({data['batch']}×hidden×hidden products are smaller than the "
      f"{n_mm}² reference) and the elementwise share. On a machine shared "
      "with other jobs the reference matmul is itself slowed, so the "
      "fraction is of what this process could get, not of the chip's peak.",
  ]
  return "\n".join(md)


def main():
  args = _common.parser(__doc__).parse_args()
  data = (_common.read("roofline", args.out) if args.render
          else measure(args.quick))
  text = markdown(data)
  print(text)
  _common.write("roofline", data, text, args.out)


if __name__ == "__main__":
  main()
