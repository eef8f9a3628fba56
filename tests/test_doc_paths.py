"""Every file or folder of the project that the README, docs/, the recipes, the Makefile and
bot/'s own comments name exists: a moved or renamed file breaks this test, not a reader."""

import re

from conftest import ROOT

# a project path: one of the project's folders, then names; ends before punctuation (not
# another project's path, written as `gluon-cv:docs/...`)
PATH = re.compile(r"(?<![\w./~:-])((?:bot|scripts|recipes|docs|tests|configs)/[\w.-]+(?:/[\w.-]+)*/?)")
# paths in the README's transcript of the wheel used from /tmp: `bot` there is the checkout's folder
OUTSIDE_CHECKOUT = ("bot/runs/", "bot/data/toy")


def documents():
    yield ROOT / "README.md"
    yield ROOT / "Makefile"
    yield from sorted((ROOT / "docs").glob("*.md"))
    yield from sorted((ROOT / "recipes").rglob("*.yaml"))
    yield from sorted((ROOT / "bot").rglob("*.py"))


def named_paths(text: str):
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if not path.startswith(OUTSIDE_CHECKOUT):
            yield path


def test_the_pattern_finds_paths_in_prose_and_code():
    text = "see `bot/train/ema.py`, bot/models/ (the wing) and recipes/ablations/table4.yaml. Not ../bot/x.py"
    assert list(named_paths(text)) == ["bot/train/ema.py", "bot/models/", "recipes/ablations/table4.yaml"]


def missing_paths(texts: dict[str, str]) -> tuple[list[str], int]:
    """(`doc: path` for each named path that does not exist, how many paths were named)."""
    missing, seen = [], 0
    for doc, text in texts.items():
        for path in named_paths(text):
            seen += 1
            if not (ROOT / path).exists():
                missing.append(f"{doc}: {path}")
    return missing, seen


def test_a_path_that_does_not_exist_is_reported():
    text = "see bot/train/ema.py, then bot/train/emma.py and docs/nowhere/ (moved)"
    assert missing_paths({"doc.md": text}) == (["doc.md: bot/train/emma.py", "doc.md: docs/nowhere/"], 3)


def test_every_named_project_path_exists():
    missing, seen = missing_paths({str(doc.relative_to(ROOT)): doc.read_text() for doc in documents()})
    assert seen > 100  # the README alone names ~50
    assert not missing, "\n".join(missing)
