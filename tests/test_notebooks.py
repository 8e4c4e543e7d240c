"""The notebooks: built from their sources, Colab-ready, stored without outputs.

The notebooks themselves are executed by nbmake (``--nbmake`` and
``notebooks`` in the pytest configuration); this file checks what running
them does not.
"""

import pathlib
import subprocess
import sys

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COLAB = "https://colab.research.google.com/github/hippojax/hippojax/blob/main/notebooks/"


def test_every_source_has_its_notebook_and_is_built():
  sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
  assert [s.stem for s in sources] == [n.stem for n in NOTEBOOKS]
  assert len(NOTEBOOKS) >= 6
  result = subprocess.run(
      [sys.executable, str(ROOT / "notebooks" / "_build.py"), "--check"],
      capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_colab_ready(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  first, install = nb.cells[0], nb.cells[1]
  assert first.cell_type == "markdown"
  assert f"]({COLAB}{path.name})" in first.source
  assert "colab-badge.svg" in first.source
  # The install cell only installs where hippojax is missing (on Colab).
  assert install.cell_type == "code"
  assert 'importlib.util.find_spec("hippojax") is None' in install.source
  assert "hippojax[all] @ git+https://github.com/hippojax/hippojax" in install.source
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1 and tagged[0].cell_type == "code"
  assert nb.cells.index(tagged[0]) < 4
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code)
  assert any("plt.show()" in c.source for c in code)


def test_docs_page_links_every_notebook():
  page = (ROOT / "docs" / "notebooks.md").read_text()
  for path in NOTEBOOKS:
    assert f"({COLAB}{path.name})" in page, path.name


def test_python3_kernel_is_this_interpreter():
  """nbmake runs the notebooks with the "python3" kernelspec."""
  from jupyter_client.manager import KernelManager  # pylint: disable=import-outside-toplevel
  cmd = KernelManager(kernel_name="python3").format_kernel_cmd()
  # Same environment: the same bin directory (not resolving symlinks, which
  # lead out of a virtual environment to the base interpreter).
  assert pathlib.Path(cmd[0]).absolute().parent == pathlib.Path(
      sys.executable).absolute().parent, (cmd, sys.executable)
