"""Builds the notebooks (``NN_name.ipynb``) from their sources (``NN_name.py``).

The sources are Python files in the percent format: a line ``# %%`` starts a
code cell, ``# %% [markdown]`` a markdown cell (its lines start with ``#``),
and ``# %% tags=["parameters"]`` a code cell with tags. The notebooks are
written without outputs, with stable cell ids, so rebuilding an unchanged
source changes nothing.

  python notebooks/_build.py           # rebuild every notebook
  python notebooks/_build.py --check   # exit 1 if a notebook is out of date
"""

import argparse
import json
import pathlib
import re
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
_MARKER = re.compile(r"^# %%(?P<kind> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python",
                   "name": "python3"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
}


def sources() -> list[pathlib.Path]:
  """The notebook sources, ``notebooks/NN_*.py``, in order."""
  return sorted(HERE.glob("[0-9][0-9]_*.py"))


def _markdown(lines: list[str]) -> str:
  out = []
  for line in lines:
    if line == "#":
      out.append("")
    elif line.startswith("# "):
      out.append(line[2:])
    else:
      raise ValueError(f"markdown line does not start with '# ': {line!r}")
  return "\n".join(out)


def parse(text: str) -> nbformat.NotebookNode:
  """A percent-format source as a notebook without outputs."""
  cells, kind, tags, lines = [], None, [], []

  def flush():
    if kind is None:
      if any(l.strip() for l in lines):
        raise ValueError("text before the first '# %%' cell marker")
      return
    while lines and not lines[-1].strip():
      lines.pop()
    while lines and not lines[0].strip():
      lines.pop(0)
    if kind == "markdown":
      cell = nbformat.v4.new_markdown_cell(_markdown(lines))
    else:
      cell = nbformat.v4.new_code_cell("\n".join(lines))
    if tags:
      cell.metadata["tags"] = tags
    cell.id = f"cell-{len(cells):02d}"
    cells.append(cell)

  for line in text.splitlines():
    m = _MARKER.match(line)
    if m:
      flush()
      kind = "markdown" if m.group("kind") else "code"
      tags = json.loads(m.group("tags")) if m.group("tags") else []
      lines = []
    else:
      lines.append(line)
  flush()
  nb = nbformat.v4.new_notebook(cells=cells, metadata=METADATA)
  nb.nbformat_minor = 5
  return nb


def render(source: pathlib.Path) -> str:
  """The ``.ipynb`` text built from ``source``."""
  nb = parse(source.read_text())
  nbformat.validate(nb)
  return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="only check that every notebook is up to date")
  args = parser.parse_args(argv)
  stale = []
  for source in sources():
    target = source.with_suffix(".ipynb")
    text = render(source)
    if target.exists() and target.read_text() == text:
      continue
    if args.check:
      stale.append(target.name)
    else:
      target.write_text(text)
      print(f"wrote {target.relative_to(HERE.parent)}")
  if stale:
    print("out of date (run python notebooks/_build.py): " + ", ".join(stale),
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
