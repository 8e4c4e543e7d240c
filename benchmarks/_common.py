"""Helpers shared by the benchmark scripts: options, timing, machine, output.

Every script takes ``--quick`` (a small configuration, used by the tests so the
scripts cannot rot) and ``--out DIR`` (where ``<name>.json`` and ``<name>.md``
go; ``benchmarks/results`` by default). Timings are taken side by side in one
process: the functions being compared run in alternating order, round after
round, and each is summarised by the median over rounds.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def parser(doc: str) -> argparse.ArgumentParser:
  """An argument parser with the options every benchmark script shares."""
  p = argparse.ArgumentParser(
      description=doc.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="a small configuration that runs in seconds")
  p.add_argument("--out", type=pathlib.Path, default=RESULTS,
                 help="directory for <name>.json and <name>.md "
                 "(default: benchmarks/results)")
  p.add_argument("--render", action="store_true",
                 help="only rewrite <name>.md from an existing <name>.json")
  return p


def machine() -> str:
  """A one-line description of the machine and the JAX backend."""
  import jax
  devices = jax.devices()
  kind = devices[0].device_kind if devices else "?"
  return (f"{platform.machine()} {os.cpu_count()} cores, "
          f"{jax.default_backend()} ({kind} x{len(devices)}), "
          f"jax {jax.__version__}, python {platform.python_version()}")


def cpu_model() -> str:
  """The CPU model name from ``/proc/cpuinfo`` (``platform`` elsewhere)."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def load() -> str:
  """The 1-minute load average against the core count, e.g. ``3.1 / 2``."""
  try:
    return f"{os.getloadavg()[0]:.1f} / {os.cpu_count()}"
  except OSError:
    return "n/a"


def command() -> str:
  """The command line that produced this run (without ``--out``)."""
  args, skip = [], False
  for a in sys.argv[1:]:
    if skip:
      skip = False
      continue
    if a == "--out":
      skip = True
      continue
    if a.startswith("--out="):
      continue
    args.append(a)
  script = pathlib.Path(sys.argv[0]).as_posix().split("hippojax/")[-1]
  if not script.startswith("benchmarks/"):
    script = "benchmarks/" + pathlib.Path(script).name
  return "python " + " ".join([script] + args)


def run_info(load_before: str | None = None) -> dict:
  """Command, machine, CPU and load of this run, to keep in its JSON."""
  now = load()
  return dict(command=command(), machine=machine(), cpu=cpu_model(),
              load_before=load_before or now, load_after=now)


def header(title: str, load_before: str | None = None,
           info: dict | None = None) -> list[str]:
  """Markdown title plus the command, machine and load lines.

  ``info`` (from :func:`run_info`, e.g. read back from a JSON file) gives
  them; without it they describe the current process.
  """
  info = info or run_info(load_before)
  return [f"## {title}", "", f"Command: `{info['command']}`  ",
          f"Machine: {info['machine']}; {info['cpu']}  ",
          f"Load average (1 min / cores): {info['load_before']} at the "
          f"start, {info['load_after']} at the end", ""]


def read(name: str, out: pathlib.Path | str | None = None) -> dict:
  """Reads back ``<out>/<name>.json``."""
  out = pathlib.Path(out) if out is not None else RESULTS
  return json.loads((out / f"{name}.json").read_text())


def write(name: str, data: dict, markdown: str,
          out: pathlib.Path | str | None = None) -> None:
  """Writes ``<out>/<name>.json`` and ``<out>/<name>.md``."""
  out = pathlib.Path(out) if out is not None else RESULTS
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
  (out / f"{name}.md").write_text(markdown.rstrip() + "\n")


def table(header: list[str], rows: list[list]) -> str:
  """A GitHub markdown table."""
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def _block(out):
  import jax
  return jax.block_until_ready(out)


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, *,
                warmup: int = 2, min_time: float = 0.02) -> dict:
  """Times zero-argument functions side by side.

  Each function is first called ``warmup`` times (compilation and caches),
  then timed once to choose how many back-to-back calls make one sample of
  at least ``min_time`` seconds (so scheduler noise averages out on short
  calls). Then ``repeats`` rounds each take one sample of every function,
  in forward order on even rounds and reverse order on odd ones, so slow
  drifts of the machine load hit every function alike. Wall-clock time and
  the process's CPU time (all threads) are both recorded: on a machine
  shared with other jobs the CPU time is the steadier of the two.

  Args:
    calls: name -> function whose result is blocked on.
    repeats: number of rounds (samples per function).
    warmup: untimed calls per function before timing.
    min_time: the least duration of one sample, in seconds.

  Returns:
    ``{"wall": {name: [s, ...]}, "cpu": {name: [s, ...]}}``, per-call
    seconds, one entry per round.
  """
  inner = {}
  for name, fn in calls.items():
    for _ in range(warmup):
      _block(fn())
    start = time.perf_counter()
    _block(fn())
    once = time.perf_counter() - start
    inner[name] = max(1, min(50, int(min_time / max(once, 1e-9))))
  wall = {name: [] for name in calls}
  cpu = {name: [] for name in calls}
  names = list(calls)
  for r in range(repeats):
    for name in (names if r % 2 == 0 else names[::-1]):
      fn, n = calls[name], inner[name]
      start, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(n):
        out = fn()
      _block(out)
      wall[name].append((time.perf_counter() - start) / n)
      cpu[name].append((time.process_time() - start_cpu) / n)
  return {"wall": wall, "cpu": cpu}


def median(xs: list[float]) -> float:
  return statistics.median(xs)


def _paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
  pairs = sorted(x / y for x, y in zip(a, b))
  if len(pairs) < 2:
    return pairs[0], pairs[0], pairs[0]
  q = statistics.quantiles(pairs, n=4)
  return median(pairs), q[0], q[-1]


def ratio(timings: dict, a: str, b: str) -> dict:
  """Summary of ``a`` against ``b`` from :func:`interleaved` timings.

  ``ratio`` is the median over rounds of the per-round wall-clock ratio
  ``a / b`` (a pair taken in one round sees one machine load), with
  ``ratio_q1``/``ratio_q3`` bracketing the middle half of the rounds;
  ``ratio_of_medians`` is ``median(a) / median(b)``; ``cpu_ratio`` is the
  per-round median ratio of process CPU times; ``ms``, ``baseline_ms`` and
  ``cpu_ms``, ``baseline_cpu_ms`` are the medians.
  """
  wall, cpu = timings["wall"], timings["cpu"]
  r, q1, q3 = _paired(wall[a], wall[b])
  return dict(ms=median(wall[a]) * 1e3, baseline_ms=median(wall[b]) * 1e3,
              ratio=r, ratio_q1=q1, ratio_q3=q3,
              ratio_of_medians=median(wall[a]) / median(wall[b]),
              cpu_ms=median(cpu[a]) * 1e3,
              baseline_cpu_ms=median(cpu[b]) * 1e3,
              cpu_ratio=_paired(cpu[a], cpu[b])[0])


def count_params(tree) -> int:
  import jax
  return int(sum(x.size for x in jax.tree.leaves(tree)))
