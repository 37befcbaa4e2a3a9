"""The docs point at things that exist: every file path, ``selffeed.*`` name, markdown link (and its
#anchor), ``selffeed`` subcommand and ``python -m`` module named in README.md, docs/ and
benchmarks/README.md. Moving a module or renaming a section without updating its readers fails here."""

import importlib
import re
from pathlib import Path

import pytest

from flows.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("data", "benchmarks", "flows", "tasks", "deployments", "selffeed", "tests", "docs")
PATH = re.compile(rf"(?<![\w/.-])((?:{'|'.join(TOP)})/[\w./-]*[\w/])")
NAME = re.compile(r"(?<![\w/.-])(selffeed(?:\.\w+)+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+\s+(.*)$", FENCE.sub("", md.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("md", DOCS, ids=ids(DOCS))
def test_named_paths_exist(md):
    missing = {p for p in PATH.findall(md.read_text()) if not (ROOT / p).exists()}
    assert not missing, f"{md.name} names paths that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("md", DOCS, ids=ids(DOCS))
def test_named_python_objects_exist(md):
    text = md.read_text()
    names = set(NAME.findall(text)) | set(re.findall(r"python -m ([\w.]+)", text))
    missing = {n for n in names if n.split(".")[0] in ("selffeed", "flows", "tasks") and not resolves(n)}
    assert not missing, f"{md.name} names modules or attributes that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("md", DOCS, ids=ids(DOCS))
def test_links_and_anchors_resolve(md):
    broken = []
    for target in LINK.findall(md.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (md.parent / file).resolve() if file else md
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    assert not broken, f"{md.name} has broken links: {broken}"


def test_documented_subcommands_exist():
    known = set(_parser()._subparsers._group_actions[0].choices)
    used = set()
    for md in DOCS:
        for block in FENCE.findall(md.read_text()):
            used |= set(re.findall(r"(?:^|&&\s*|\s)selffeed ([a-z][\w-]*)", block, re.M))
    assert {"run", "experiment", "import-gguf"} <= used
    assert used <= known, f"documented subcommands that the CLI lacks: {sorted(used - known)}"


def test_the_checks_catch_a_stale_name(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("# Top\nSee selffeed.stages and [here](#nowhere) and [top](#top).\n")
    assert not resolves("selffeed.stages") and resolves("selffeed.loop.stages")
    assert anchors(md) == {"top"}
    assert PATH.findall("run `python benchmarks/collapse.py --rounds 1`") == ["benchmarks/collapse.py"]
