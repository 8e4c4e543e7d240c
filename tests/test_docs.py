"""The documentation: the site builds without warnings, and its examples run.

Python blocks of a page run in order, in a fresh interpreter per page. A block
that starts with an import starts a new program (with fresh globals); a block
that does not continues the previous one (it uses its names). A page's leading
block that neither imports nor follows one is a fragment (e.g. a one-line call
shown in prose) and is not run.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Pages whose python blocks are complete examples, and the section of the
# page they are taken from (None: the whole page).
RUNNABLE = {
    "README.md": None,
    "docs/optax.md": None,
    "docs/flax.md": None,
    "docs/online_lr.md": None,
    "docs/multi_device.md": None,
    "docs/pytorch.md": None,
    "docs/studies.md": None,
    "docs/stochastic.md": None,
    "docs/jaxopt.md": None,
}

_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_IMPORT = re.compile(r"^(import|from)\s", re.M)


def _section(text: str, title: str) -> str:
  """The text under the heading ``title`` (any level), to the next heading
  of the same or a higher level."""
  m = re.search(rf"^(#+) {re.escape(title)}\s*$", text, re.M)
  if m is None:
    raise ValueError(f"no section {title!r}")
  level = len(m.group(1))
  rest = text[m.end():]
  end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
  return rest[:end.start()] if end else rest


def programs(path: str, section: str | None = None) -> list[str]:
  """The runnable programs of a page: its python blocks, grouped."""
  text = (ROOT / path).read_text()
  if section is not None:
    text = _section(text, section)
  out = []
  for block in _FENCE.findall(text):
    first = next((l for l in block.splitlines() if l.strip()), "")
    if _IMPORT.match(first):
      out.append(block)
    elif out:
      out[-1] += "\n" + block
  return out


def test_programs_are_found():
  for path, section in RUNNABLE.items():
    assert programs(path, section), f"{path} has no runnable python block"
  readme = programs("README.md", RUNNABLE["README.md"])
  # The 15-line example continued by the optax fragment, and the torch one.
  assert len(readme) == 2 and "hippojax.hoag(" in readme[0]
  assert "tx.update(" in readme[0] and "hippojax.torch" in readme[1]
  # optax.md: a one-line fragment, the outer loop, the vmap block that
  # continues it, and the unrolled example.
  optax_programs = programs("docs/optax.md")
  assert len(optax_programs) == 2
  assert "jax.vmap(tx.init)" in optax_programs[0]


def _env():
  env = dict(os.environ)
  env.update(MPLBACKEND="Agg", JAX_PLATFORMS="cpu", NO_MKDOCS_2_WARNING="1")
  return env


def test_readme_documentation_links_exist():
  section = _section((ROOT / "README.md").read_text(), "Documentation")
  links = re.findall(r"\]\(([^)#]+)\)", section)
  assert len(links) > 20
  for link in links:
    if "://" not in link:
      assert (ROOT / link).exists(), link


# Runs each program, then checks that every jitted function it left behind
# compiled once: an example that recompiles (weak-typed hyperparameters, a
# changing static argument) teaches users a slow loop.
_DRIVER = """
import json, sys
for i, program in enumerate(json.loads(sys.argv[1])):
  print(f"--- program {i}", flush=True)
  g = {"__name__": "__main__"}
  exec(compile(program, f"<program {i}>", "exec"), g)
  for name, obj in g.items():
    size = getattr(obj, "_cache_size", None)
    if callable(size) and size() > 1:
      sys.exit(f"program {i}: jitted {name} compiled {size()} times")
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(RUNNABLE))
def test_examples_run(path, tmp_path):
  progs = programs(path, RUNNABLE[path])
  result = subprocess.run(
      [sys.executable, "-c", _DRIVER, json.dumps(progs)], cwd=tmp_path,
      env=_env(), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, (
      f"an example of {path} failed (programs: {len(progs)}):\n"
      f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n"
      f"{result.stderr[-5000:]}")


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "-d",
       str(tmp_path / "site")], cwd=ROOT, env=_env(), capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  site = tmp_path / "site"
  for page in ("index.html", "api/index.html", "notebooks/index.html"):
    assert (site / page).is_file(), page
  api = (site / "api" / "index.html").read_text()
  for name in ("hippojax.hypergradient", "hippojax.create_study",
               "hippojax.torch.wrap", "hippojax.problems.get",
               "hippojax.custom_root", "hippojax.custom_fixed_point"):
    assert f'id="{name}"' in api, name
