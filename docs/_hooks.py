"""MkDocs hooks for the hippojax site.

* The plots of ``benchmarks/RESULTS.md``: ``docs/benchmarks.md`` includes that
  file, whose images are linked relative to ``benchmarks/``
  (``results/NAME.png``); ``on_files`` adds ``benchmarks/results/*.png`` to
  the site under ``results/``, so the same links resolve from the page.
* Docstrings written with reStructuredText constructs: ``.. math::`` blocks
  become display math, and cross-reference roles (``:func:`name```) become
  plain code, in the rendered API pages (``on_page_content``).
"""

import pathlib
import re

from mkdocs.structure.files import File

_MATH = re.compile(r"<p>\.\. math::\s*(.*?)</p>", re.S)
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|exc|data|obj):(?=<code>)")


def on_files(files, config):
  root = pathlib.Path(config.config_file_path).parent / "benchmarks"
  for png in sorted((root / "results").glob("*.png")):
    files.append(File(f"results/{png.name}", src_dir=str(root),
                      dest_dir=config.site_dir,
                      use_directory_urls=config.use_directory_urls))
  return files


def on_page_content(html, page, config, files):
  del page, config, files
  html = _MATH.sub(lambda m: f'<div class="arithmatex">\\[{m.group(1).strip()}\\]</div>',
                   html)
  return _ROLE.sub("", html)
