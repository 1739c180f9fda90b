"""Every command in the documentation runs as written.

For each ``docs/*.md`` page, the fenced ```` ```python ```` and ```` ```bash ```` blocks are run in
order, in a fresh temporary directory per page (files one block writes are there for the next):

* ``python`` blocks are ``exec``'d in one namespace per page (fresh for each page);
* ``bash`` blocks run through ``bash -e -o pipefail`` with the venv's ``python`` and
  ``depgraph-prune`` first on ``PATH`` (when the console script is not installed, a shim running
  ``python -m depgraph_prune`` stands in for it), one thread.

Other fences (```` ```text ````, ```` ```py ````, ```` ```pycon ````, ```` ```console ````) are
output samples or excerpts and are not run. HTML comments on the lines just above a fence:

* ``<!-- no-test -->``: not run (only for what cannot run here: installs, multi-process launches);
* ``<!-- file: NAME -->``: the block is written to ``NAME`` (e.g. a module for ``--model mod:factory``);
* ``<!-- requires: onnx dp.save -->``: run only when these modules import / ``depgraph_prune``
  attributes exist, otherwise skipped (with a warning). On a line of its own elsewhere on the page
  (not just above a fence), it applies to the whole page, which is then skipped with the reason.

The repository's top-level folders (``examples``, ``bench``, ...) are linked into the temporary
directory so that commands naming them work; ``docs`` is not, so nothing here writes into the
documentation.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import depgraph_prune as dp

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
RUN_LANGS = {"python", "bash"}
# pages written by other people: linked from ours, may not exist yet
OTHERS = {"zoo.md", "benchmarks.md", "experiments.md", "gallery.md"}
MAX_NO_TEST = 8  # "keep these few"
BLOCK_TIMEOUT = 600

_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*(.*)$")
_COMMENT = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    markers: dict = field(default_factory=dict)


def parse(text: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a page, with the markers just above each, and the page-level
    ``requires`` names."""
    lines = text.splitlines()
    blocks, page_requires = [], []
    i = 0
    pending: dict = {}
    pending_lines: list[int] = []
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if m:
            indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
            body = []
            j = i + 1
            while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                          and lines[j].strip().strip(fence[0]) == ""):
                body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
                j += 1
            blocks.append(Block(lang, "\n".join(body) + "\n", i + 1, dict(pending)))
            pending, pending_lines = {}, []
            i = j + 1
            continue
        c = _COMMENT.match(line)
        if c:
            key, _, value = c.group(1).partition(":")
            pending[key.strip().lower()] = value.strip()
            pending_lines.append(i)
        elif line.strip() and pending:
            # a marker not directly above a fence: page-level `requires`, others are mistakes
            if "requires" in pending:
                page_requires += pending["requires"].replace(",", " ").split()
            pending, pending_lines = {}, []
        i += 1
    if "requires" in pending:  # marker at the very end
        page_requires += pending["requires"].replace(",", " ").split()
    return blocks, page_requires


def missing(requirements) -> list[str]:
    out = []
    for r in requirements:
        if r.startswith("dp."):
            if not hasattr(dp, r[3:]):
                out.append(f"{r} (not exported by depgraph_prune yet)")
        elif importlib.util.find_spec(r) is None:
            out.append(f"{r} (not installed)")
    return out


def _shim_dir(tmp: Path) -> list[str]:
    """Directories to put first on PATH: the venv's bin, and a `depgraph-prune` shim if needed."""
    bin_dir = str(Path(sys.executable).parent)
    dirs = [bin_dir]
    if shutil.which("depgraph-prune", path=bin_dir) is None:
        shim = tmp / ".shim"
        shim.mkdir(exist_ok=True)
        script = shim / "depgraph-prune"
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m depgraph_prune "$@"\n')
        script.chmod(0o755)
        dirs.insert(0, str(shim))
    return dirs


def _link_repo(tmp: Path) -> None:
    for entry in ("examples", "bench", "depgraph_prune", "tests", "README.md", "pyproject.toml"):
        src = ROOT / entry
        if src.exists() and not (tmp / entry).exists():
            (tmp / entry).symlink_to(src)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_runs(page, tmp_path, monkeypatch):
    blocks, page_requires = parse(page.read_text(encoding="utf-8"))
    lacking = missing(page_requires)
    if lacking:
        pytest.skip(f"{page.name} needs {', '.join(lacking)}")
    run_blocks(page.name, blocks, tmp_path, monkeypatch)


# set-up steps of the README's commands: this test run is already inside such a venv
_SETUP = ("python3 -m venv", ". .venv/bin/activate", "pip install", "python -m pytest")


def test_readme_runs(tmp_path, monkeypatch):
    """The README's blocks run as written, its two set-up commands minus the set-up steps: the
    first command's job (``python examples/prune_resnet50.py``) runs; the second is this run."""
    blocks, _ = parse((ROOT / "README.md").read_text(encoding="utf-8"))
    jobs = []
    for b in blocks:
        if b.lang == "bash" and "&&" in b.code:
            steps = [s.strip() for s in b.code.strip().split("&&")]
            assert steps[0].startswith("python3 -m venv"), b.code
            b.code = " && ".join(s for s in steps if not s.startswith(_SETUP)) + "\n"
            jobs.append(b.code.strip())
    assert jobs == ["python examples/prune_resnet50.py", ""], jobs
    out = run_blocks("README.md", [b for b in blocks if b.code.strip()], tmp_path, monkeypatch)
    assert "speedup (MACs before / after)" in out[0]  # the example printed its before/after table


def run_blocks(name, blocks, tmp_path, monkeypatch) -> list[str]:
    """Run a page's blocks in ``tmp_path``; return the stdout of each bash block."""
    outputs = []
    runnable = [b for b in blocks if b.lang in RUN_LANGS or "file" in b.markers]
    if not runnable:
        return outputs
    _link_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # like `python` run there: modules written by the page import
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join(_shim_dir(tmp_path) + [env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    namespace = {"__name__": f"docs_{Path(name).stem.replace('-', '_')}"}
    for block in runnable:
        where = f"{name}:{block.line}"
        if "no-test" in block.markers:
            continue
        lacking = missing(block.markers.get("requires", "").replace(",", " ").split())
        if lacking:
            warnings.warn(f"{where}: block skipped, needs {', '.join(lacking)}")
            continue
        if "file" in block.markers:
            (tmp_path / block.markers["file"]).write_text(block.code, encoding="utf-8")
            continue
        if block.lang == "python":
            exec(compile(block.code, where, "exec"), namespace)  # noqa: S102 - the docs are ours
        else:
            proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
            assert proc.returncode == 0, (f"{where}: exit status {proc.returncode}\n--- command\n{block.code}"
                                          f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
            outputs.append(proc.stdout)
    return outputs


def test_parse_markers():
    text = ("<!-- requires: nothing_like_this_module -->\n\nintro\n\n"
            "<!-- no-test -->\n```bash\npip install x\n```\n\n"
            "<!-- file: m.py -->\n```python\nX = 1\n```\n"
            "<!-- requires: dp.prune -->\n```python\nprint(1)\n```\n"
            "```text\noutput\n```\n")
    blocks, page_requires = parse(text)
    assert [b.lang for b in blocks] == ["bash", "python", "python", "text"]
    assert "no-test" in blocks[0].markers
    assert blocks[1].markers["file"] == "m.py" and blocks[1].code == "X = 1\n"
    assert blocks[2].markers["requires"] == "dp.prune" and missing(["dp.prune"]) == []
    assert page_requires == ["nothing_like_this_module"] and missing(page_requires)


def test_no_test_markers_are_few():
    uses = {p.name: p.read_text(encoding="utf-8").count("<!-- no-test -->") for p in PAGES}
    assert sum(uses.values()) <= MAX_NO_TEST, uses


def test_api_reference_covers_all_public_names():
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    names = set(re.findall(r"`(?:dp\.|depgraph_prune\.)?([A-Za-z_][\w]*)", api))
    lacking = [n for n in dp.__all__ if n not in names]
    assert not lacking, f"docs/api.md does not document {lacking}; regenerate it: python docs/gen_api.py"


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_links_and_images_exist():
    broken, pending = [], []
    for page in PAGES:
        for link in _links(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+://", link) or link.startswith(("#", "mailto:")):
                continue
            target = (page.parent / link.split("#")[0]).resolve()
            if not target.exists():
                (pending if Path(link).name in OTHERS else broken).append(f"{page.name} -> {link}")
    assert not broken, broken
    if pending:
        warnings.warn(f"pages not written yet: {sorted(set(pending))}")


def test_mkdocs_nav_lists_every_page():
    yml = ROOT / "mkdocs.yml"
    text = yml.read_text(encoding="utf-8")
    nav = set(re.findall(r":\s*([\w.-]+\.md)\s*$", text, flags=re.M))
    on_disk = {p.name for p in PAGES}
    assert on_disk - nav <= set(), f"pages missing from mkdocs.yml nav: {sorted(on_disk - nav)}"
    assert not (nav - on_disk - OTHERS), f"mkdocs.yml lists missing pages: {sorted(nav - on_disk - OTHERS)}"
