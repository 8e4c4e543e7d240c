"""The HippoTrainer comparison runs, and shows what it claims to show.

Runs ``benchmarks/vs_hippotrainer.py --quick`` in a subprocess (about two
minutes) and checks its JSON: every section is there, hippojax's Neumann
hypergradient is the truncated series it defines and approaches the exact
hypergradient as terms are added, while HippoTrainer's leaves the series from
two terms on and does not approach it.
"""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("hippotrainer")
pytest.importorskip("sklearn")

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("t1t2", "neumann", "hoag", "drmad")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("vs_hippotrainer")
  subprocess.run(
      [sys.executable, "vs_hippotrainer.py", "--quick", "--out", str(out)],
      cwd=ROOT / "benchmarks", check=True, capture_output=True, timeout=600)
  assert (out / "vs_hippotrainer.md").read_text().startswith("## ")
  return json.loads((out / "vs_hippotrainer.json").read_text())


@pytest.mark.slow
def test_json_has_every_section(results):
  assert results["quick"] is True
  for key in ("config", "problems", "goals", "machine", "seconds"):
    assert key in results
  assert set(results["problems"]) == {"logreg", "mlp"}
  for name, problem in results["problems"].items():
    assert set(problem) == {"accuracy", "speed", "outcome"}
    acc = problem["accuracy"]["methods"]
    for k in results["config"]["num_terms"]:
      assert f"neumann_{k}" in acc
    for method in ("t1t2", "hoag", "drmad"):
      assert {"hippotrainer", "hippojax"} <= set(acc[method])
    for method in METHODS:
      assert method in problem["speed"] and method in problem["outcome"]
      speed = problem["speed"][method]
      if "hippotrainer_error" not in speed:
        ratio = speed["hyper_step"]["hippojax"]["ratio"]
        assert ratio > 0
    assert results["goals"][name]["min_ratio"] > 0


@pytest.mark.slow
def test_neumann_converges_in_hippojax_not_in_hippotrainer(results):
  terms = results["config"]["num_terms"]
  assert terms[0] == 1 and len(terms) >= 3
  for problem in results["problems"].values():
    acc = problem["accuracy"]["methods"]
    ours = [acc[f"neumann_{k}"]["hippojax"] for k in terms]
    theirs = [acc[f"neumann_{k}"]["hippotrainer"] for k in terms]
    # hippojax computes the series it defines, and it approaches the exact
    # hypergradient with every added term.
    assert all(e["vs_own"]["rel_err"] < 1e-10 for e in ours)
    exact = [e["vs_exact"]["rel_err"] for e in ours]
    assert all(b < a for a, b in zip(exact, exact[1:]))
    # HippoTrainer agrees for one term only, then leaves the series and
    # ends no closer to the exact hypergradient than it started.
    assert theirs[0]["vs_own"]["rel_err"] < 1e-10
    assert all(e["vs_own"]["rel_err"] > 0.1 for e in theirs[1:])
    assert theirs[-1]["vs_exact"]["rel_err"] >= theirs[0]["vs_exact"][
        "rel_err"]
    assert exact[-1] < theirs[-1]["vs_exact"]["rel_err"]


@pytest.mark.slow
def test_hoag_and_t1t2_match_their_definitions(results):
  for problem in results["problems"].values():
    acc = problem["accuracy"]["methods"]
    assert acc["hoag"]["hippojax"]["vs_own"]["rel_err"] < 1e-8
    assert acc["t1t2"]["hippojax"]["vs_own"]["rel_err"] < 1e-10
    # HippoTrainer's T1T2 leaves out the inner learning rate.
    assert acc["t1t2"]["hippotrainer"]["vs_own"]["rel_err"] > 0.5


@pytest.mark.slow
def test_torch_models_section_runs_on_both_paths(tmp_path):
  """``--torch-models --quick``: every method timed on the JAX path (which
  the seed-sized model takes) and on the callback path."""
  subprocess.run(
      [sys.executable, "vs_hippotrainer.py", "--torch-models", "--quick",
       "--out", str(tmp_path)],
      cwd=ROOT / "benchmarks", check=True, capture_output=True, timeout=900)
  data = json.loads((tmp_path / "vs_hippotrainer_torch.json").read_text())
  assert (tmp_path / "vs_hippotrainer_torch.md").read_text().startswith("## ")
  assert data["quick"] is True and data["problems"]
  for problem in data["problems"].values():
    assert problem["paths"] == {"jax path": "jax",
                                "callback path": "callback"}
    for method in METHODS:
      entry = problem["methods"][method]
      for label in ("hyper_step", "outer_step"):
        for side in ("jax path", "callback path"):
          assert entry[label][side]["ms"] > 0
  assert data["goal"]["min_ratio"] > 0
