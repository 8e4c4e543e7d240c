"""What recording every hyperparameter element as an Optuna param costs.

A gradient trial stores each element of an array hyperparameter as an
Optuna param ``name[i]`` with its distribution (up to
``hippojax._src.trials.MAX_ELEMENT_PARAMS`` elements; larger arrays as
their min/median/max plus the whole array in a user attribute). This script
measures, for arrays of 10, 640 and 10 000 elements, on a SQLite file and a
journal file:

* **add**: seconds to add one complete trial, with Optuna's own
  ``study.add_trial`` and with hippojax's bulk insert (SQLite only; the
  journal takes the public path);
* **load**: seconds for a fresh process's ``optuna.load_study(...).trials``
  over a study of ``TRIALS`` such trials, per trial;
* **bytes**: storage file size per trial.

    python benchmarks/optuna_params.py [--quick] [--out DIR]
"""

import datetime
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _common  # noqa: E402  pylint: disable=wrong-import-position

SIZES = (10, 640, 10_000)


def _trial(optuna, n: int, k: int):
  dist = optuna.distributions.FloatDistribution(1e-4, 10.0, log=True)
  params = {f"w[{i}]": 1e-4 * (1 + i + k) for i in range(n)}
  t = optuna.trial.create_trial(
      value=float(k), params=params,
      distributions={p: dist for p in params},
      user_attrs={"chain": 0, "step": k})
  t.datetime_start = datetime.datetime.now()
  return t


def measure(n: int, kind: str, trials: int, tmp: str) -> dict:
  """One row: add (public, bulk), load per trial, bytes per trial."""
  import optuna

  from hippojax._src import storage as storage_lib
  from hippojax._src import trials as trials_lib
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  row = {"elements": n, "storage": kind, "trials": trials}
  for path_kind in (("public", "bulk") if kind == "sqlite" else ("public",)):
    path = os.path.join(tmp, f"{kind}-{n}-{path_kind}." +
                        ("db" if kind == "sqlite" else "log"))
    resolved = storage_lib.open_storage(path)
    study = optuna.create_study(storage=resolved.storage, study_name="s")
    times = []
    for k in range(trials):
      t = _trial(optuna, n, k)
      start = time.perf_counter()
      if path_kind == "bulk":
        trials_lib.add_trial(study, resolved.storage, t)
      else:
        study.add_trial(t)
      times.append(time.perf_counter() - start)
    row[f"add_{path_kind}_s"] = _common.median(times)
    url = ("sqlite:///" + path) if kind == "sqlite" else resolved.storage
    start = time.perf_counter()
    loaded = optuna.load_study(study_name="s", storage=url).trials
    row[f"load_{path_kind}_s_per_trial"] = (time.perf_counter() - start) / trials
    assert len(loaded) == trials and len(loaded[-1].params) == n
    size = sum(os.path.getsize(f) for f in (path, path + "-wal")
               if os.path.exists(f))
    row["bytes_per_trial"] = size / trials
  return row


def markdown(data: dict) -> str:
  rows = []
  for r in data["rows"]:
    rows.append([r["elements"], r["storage"], r["trials"],
                 f"{r['add_public_s']:.3f}",
                 (f"{r['add_bulk_s']:.3f}" if "add_bulk_s" in r else "—"),
                 f"{r.get('load_bulk_s_per_trial', r['load_public_s_per_trial']):.3f}",
                 f"{r['bytes_per_trial'] / 1024:.0f}"])
  lines = _common.header("Optuna params per hyperparameter element",
                         info=data) + [
      "One study of complete trials per row (*trials*); medians over "
      "them. *add*: seconds to add one trial with Optuna's "
      "`study.add_trial` and with hippojax's bulk insert; *load*: seconds "
      "per trial to load the study in a fresh `optuna.load_study(...)."
      "trials`; *KiB*: file size per trial.", "",
      _common.table(["elements", "storage", "trials", "add (Optuna) s",
                     "add (bulk) s", "load s / trial", "KiB / trial"], rows),
      "",
      "Adding is cheap with the bulk insert, but loading reads one row per "
      "param back, so a long chain of a 10 000-element array would take "
      "minutes to open: gradient trials record arrays of more than "
      f"{data['max_element_params']} elements as min/median/max params "
      "plus the whole array in a user attribute."]
  return "\n".join(lines)


def main() -> None:
  p = _common.parser(__doc__)
  args = p.parse_args()
  if args.render:
    data = _common.read("optuna_params", args.out)
    _common.write("optuna_params", data, markdown(data), args.out)
    return
  from hippojax._src import trials as trials_lib
  before = _common.load()
  trials = 3 if args.quick else 20
  sizes = (10, 640) if args.quick else SIZES
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in sizes:
      for kind in ("sqlite", "journal"):
        count = trials if n < 10_000 else 2
        rows.append(measure(n, kind, count, tmp))
        print(rows[-1], flush=True)
  data = dict(_common.run_info(before), trials=trials, rows=rows,
              max_element_params=trials_lib.MAX_ELEMENT_PARAMS)
  _common.write("optuna_params", data, markdown(data), args.out)


if __name__ == "__main__":
  main()
