"""Helpers shared by the benchmark scripts: machine description and output."""

import json
import os
import pathlib
import platform
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def machine() -> str:
  """A one-line description of the machine and the JAX backend."""
  import jax
  devices = jax.devices()
  kind = devices[0].device_kind if devices else "?"
  return (f"{platform.machine()} {os.cpu_count()} cores, "
          f"{jax.default_backend()} ({kind} x{len(devices)}), "
          f"jax {jax.__version__}, python {platform.python_version()}")


def command() -> str:
  """The command line that produced this run."""
  return "python " + " ".join(
      [str(pathlib.Path(sys.argv[0]).as_posix().split("hippojax/")[-1])]
      + sys.argv[1:])


def write(name: str, data: dict, markdown: str) -> None:
  """Writes ``results/<name>.json`` and ``results/<name>.md``."""
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
  (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")


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
