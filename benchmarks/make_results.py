"""Regenerates ``benchmarks/RESULTS.md`` from ``benchmarks/results/*.md``.

Each benchmark script writes its own section (with the command that produced
it and the machine it ran on) into ``results/``; this script only assembles
them in a fixed order.

    python benchmarks/make_results.py
"""

import pathlib

HERE = pathlib.Path(__file__).resolve().parent
ORDER = ["accuracy", "symmetric_products", "overhead", "vs_jaxopt", "roofline",
         "memory", "scale", "compile", "million_hparams", "vs_hippotrainer",
         "time_to_target"]

HEADER = """# Benchmark results

Every section below was produced by the command it names, on the machine it
names; rerun that command to refresh its section, then
`python benchmarks/make_results.py` to rebuild this file. Timings are medians
over repeats after warm-up, taken side by side in one process; compare ratios,
not absolute times, across machines.
"""


def main():
  sections = {p.stem: p.read_text() for p in (HERE / "results").glob("*.md")}
  names = [n for n in ORDER if n in sections]
  names += sorted(n for n in sections if n not in ORDER and
                  not n.endswith("_quick"))
  body = [HEADER] + [sections[n].rstrip() + "\n" for n in names]
  (HERE / "RESULTS.md").write_text("\n".join(body))
  print(f"wrote {HERE / 'RESULTS.md'} with sections: {', '.join(names)}")


if __name__ == "__main__":
  main()
