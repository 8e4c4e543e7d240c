"""The benchmark scripts' ``--quick`` modes run and write what they promise.

Each script runs in a subprocess (its own JAX configuration, e.g. float64 for
``vs_jaxopt``) with ``--out`` pointing at a temporary directory, so
``benchmarks/results`` is never touched; the JSON it writes must hold the
keys ``make_results.py`` and the docs read, and ``make_results.py`` must
build a RESULTS.md with the section's plot from it.
"""

import json
import math
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"

ROW_KEYS = {"ms", "baseline_ms", "ratio", "ratio_q1", "ratio_q3",
            "cpu_ratio"}

# script -> (JSON file it writes, top-level keys, keys of each row: a pair
# (list key, row keys)).
EXPECTED = {
    "overhead": ("overhead", {"machine", "command", "goal", "rows", "worst"},
                 ("rows", ROW_KEYS | {"size", "params", "method", "mode",
                                      "agreement", "num_iters"})),
    "vs_jaxopt": ("vs_jaxopt", {"machine", "command", "goal",
                                "equal_iterations", "equal_accuracy",
                                "equal_accuracy_details"},
                  ("equal_accuracy", ROW_KEYS | {
                      "variant", "cg_iterations", "max_rel_error",
                      "jaxopt_max_rel_error"})),
    "roofline": ("roofline", {"machine", "command", "goal", "piece_flops",
                              "total_flops", "matmul_gflops",
                              "achieved_gflops", "fraction", "profile"},
                 None),
    "memory": ("memory", {"machine", "command", "steps", "rows", "verdicts"},
               ("rows", {"method", "steps", "params", "peak_delta_mib",
                         "xla_mib", "rss_before_mib", "seconds"})),
    "scale": ("scale", {"machine", "command", "rows", "model_sizes",
                        "worst_deviation"},
              ("rows", {"params", "hparams", "ms", "ratio", "cpu_ratio"})),
    "compile": ("compile", {"machine", "command", "goal_seconds",
                            "first_calls", "loops"},
                ("first_calls", {"method", "first_call_s", "compile_s",
                                 "trace_lower_s"})),
    "symmetric_products": ("symmetric_products_quick", {"machine", "rows"},
                           ("rows", {"params", "method", "ratio"})),
    "minibatch_bias": ("minibatch_bias_quick", {"machine", "command",
                                                "problem", "exact_norm",
                                                "rows"},
                       ("rows", {"batch", "variant", "norm_ratio", "bias",
                                 "error", "cg_iters", "converged"})),
    "stochastic": ("stochastic_quick", {"machine", "command", "mode",
                                        "problems"}, None),
    "nonconvex": ("nonconvex_quick", {"machine", "command", "rows",
                                      "n_steps"},
                  ("rows", {"problem", "default", "hoag", "tpe_equal_steps",
                            "tpe_equal_wall"})),
    "safeguards": ("safeguards_quick", {"machine", "command", "rows",
                                        "baseline"},
                   ("rows", ROW_KEYS | {"size", "call", "agreement"})),
    "optuna_params": ("optuna_params", {"machine", "command", "rows",
                                        "max_element_params"},
                      ("rows", {"elements", "storage", "trials",
                                "add_public_s", "load_public_s_per_trial",
                                "bytes_per_trial"})),
}


PLOTTED = {"overhead", "vs_jaxopt", "roofline", "memory", "scale", "compile"}


def run_quick(script: str, out: pathlib.Path) -> dict:
  name, top, rows = EXPECTED[script]
  cmd = [sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick",
         "--out", str(out)]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       check=False)
  assert res.returncode == 0, res.stderr[-4000:]
  data = json.loads((out / f"{name}.json").read_text())
  assert top <= set(data), top - set(data)
  if rows is not None:
    key, row_keys = rows
    assert data[key], f"{key} is empty"
    for row in data[key]:
      assert row_keys <= set(row), row_keys - set(row)
  assert (out / f"{name}.md").read_text().strip()
  return data


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_quick_mode(script, tmp_path):
  if script == "safeguards":
    # It times the release before the safeguards, extracted from git.
    probe = subprocess.run(["git", "-C", str(BENCHMARKS), "cat-file", "-e",
                            "25834e9^{commit}"], capture_output=True)
    if probe.returncode != 0:
      pytest.skip("safeguards.py needs the git history (revision 25834e9), "
                  "which this checkout does not have")
  data = run_quick(script, tmp_path)
  if script == "nonconvex":
    row = data["rows"][0]
    assert 0 <= row["hoag"]["converged"] <= row["hoag"]["accepted"] <= 1
    # TPE gets as many trials as the chain's training steps buy (polishing
    # half steps included).
    hoag = row["hoag"]
    per_step = (hoag["inner_steps"] - hoag["polish_steps"]) / data["n_steps"]
    assert row["tpe_equal_steps"]["trials"] == math.ceil(
        hoag["inner_steps"] / per_step)
  if script == "memory":
    methods = {r["method"] for r in data["rows"]}
    assert methods == {"reverse", "reverse_remat", "forward", "drmad"}
    # XLA's buffer assignment is exact: reverse grows with T, drmad does not.
    verdicts = {v["method"]: v for v in data["verdicts"]}
    assert verdicts["reverse"]["xla_growth"] > 2
    assert verdicts["drmad"]["xla_growth"] == pytest.approx(1.0, abs=0.1)
  if script == "compile":
    transform = [r for r in data["loops"] if r["loop"] == "transform"]
    assert transform and transform[0]["compilations"] == 1
  if script == "roofline":
    assert data["total_flops"] > 0 and data["matmul_gflops"] > 0
  if script == "stochastic":
    entry = data["problems"]["logreg-ijcnn1-like"]
    for method in ("hoag", "soba", "saba", "tpe"):
      assert entry["methods"][method]["rounds"] >= 1
      assert entry["methods"][method]["final_val_loss"] > 0
      assert "seconds_to_hoag_best" in entry["methods"][method]
    assert entry["hoag_seconds_to_best"] is not None
  # make_results.py turns the section into RESULTS.md with a linked plot.
  output = tmp_path / "RESULTS.md"
  res = subprocess.run(
      [sys.executable, str(BENCHMARKS / "make_results.py"), "--results",
       str(tmp_path), "--output", str(output)],
      capture_output=True, text=True, timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-4000:]
  if script in PLOTTED:
    assert f"![{script}]({script}.png)" in output.read_text()
    assert (tmp_path / f"{script}.png").stat().st_size > 1000
