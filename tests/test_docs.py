"""The documentation stays true: docs/cli.md is the parser's own --help, experiments/README.md indexes the
experiments that are there, every relative link of README.md, docs/ and experiments/ reaches an existing file
(and heading), docs/ holds only the guide, and no tracked text names an issue number.

``python tests/test_docs.py`` prints the broken links, one a line.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _load(name: str, folder: str = "tools"):
    """A script of tools/ (or experiments/) as a module (neither is a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "experiments").rglob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced or indented code blocks and inline code (links there are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or line.startswith(("    ", "\t")):
            continue
        out.append(line)
    # a code span may hold a link's text ([`train`](#...)): keep brackets, drop only spans outside them
    return re.sub(r"(?<!\[)`[^`\n]*`(?!\])", "", "\n".join(out))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            base, n = slug(m[1]), 0
            while (anchor := base if n == 0 else f"{base}-{n}") in found:
                n += 1
            found.add(anchor)
    return found


def broken_links(files: list[Path]) -> list[str]:
    """'file: target (why)' for every relative link that does not resolve."""
    broken = []
    for md in files:
        for target in LINK.findall(_prose(md.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (md.parent / path_part).resolve() if path_part else md
            where = f"{md.relative_to(ROOT)}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where} (no heading #{anchor} in {dest.name})")
    return broken


def test_cli_reference_matches_the_parser():
    make = _load("make_cli_reference")
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert make.render() == committed, "docs/cli.md differs from --help: run python tools/make_cli_reference.py"


def test_cli_reference_reaches_every_command():
    make = _load("make_cli_reference")
    from cifar_resnet.cli import get_args_parser

    progs = [p.prog for p in make.walk(get_args_parser())]
    assert {"cifar-resnet", "cifar-resnet train", "cifar-resnet data info", "cifar-resnet serve"} <= set(progs)
    # the width is fixed, whatever the terminal
    assert all(len(line) <= make.WIDTH for line in make.help_text(get_args_parser()).splitlines())


def test_cli_reference_check_fails_on_a_stale_page(tmp_path, capsys):
    make = _load("make_cli_reference")
    stale = tmp_path / "cli.md"
    stale.write_text((ROOT / "docs" / "cli.md").read_text() + "drift\n")
    assert make.main(["--check", "--out", str(stale)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert make.main(["--check", "--out", str(ROOT / "docs" / "cli.md")]) == 0


def test_experiments_index_is_current():
    make = _load("make_index", "experiments")
    committed = (ROOT / "experiments" / "README.md").read_text()
    assert make.render() == committed, "experiments/README.md is out of date: run python experiments/make_index.py"
    assert make.main(["--check"]) == 0


def test_every_experiment_file_is_linked_and_every_readme_opens_with_its_claim():
    """Each file of an experiment is reached from the index or from its folder's README (a sweep's study/
    through its report), and each README's first line is a heading: the claim the index lists."""
    index = (ROOT / "experiments" / "README.md").read_text()
    linked = {(ROOT / "experiments" / target).resolve() for target in LINK.findall(index)}
    unlisted = []
    for folder in _load("make_index", "experiments").experiments():
        readme = (folder / "README.md").read_text()
        assert readme.startswith("# ") and len(readme.splitlines()[0]) > 20, f"{folder.name}: no claim on line 1"
        linked |= {(folder / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
        for path in folder.rglob("*"):
            if path.is_file() and path.name != "README.md" and path.parent == folder and path.resolve() not in linked:
                unlisted.append(str(path.relative_to(ROOT)))
    assert not unlisted, f"experiment files linked from neither the index nor their README: {unlisted}"


def test_docs_hold_only_the_guide():
    """No run logs, metrics, study databases or scripts in docs/: the evidence is in experiments/."""
    stray = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "docs").rglob("*")
        if p.is_file() and p.suffix in {".log", ".csv", ".json", ".db", ".py", ".sh", ".toml"}
    ]
    assert not stray, f"not the user's guide, belongs in experiments/ or tools/: {stray}"


ISSUE = re.compile(r"issue[ -]?#?\d+", re.IGNORECASE)
BINARY = {".db", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".ico", ".pt", ".onnx", ".npz", ".ipynb_checkpoints"}


def issue_references(root: Path = ROOT) -> list[str]:
    """'path:line: text' for every line of a tracked text file that names an issue: the word, then its number.
    A user cannot see the tracker: a page says what is, and an experiment's README how it was found.
    Run logs (*.log) are left out: they are captured program output, which may quote anything."""
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = root / name
        if path.suffix in BINARY or path.suffix == ".log" or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # a binary file under another name
            continue
        found += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1) if ISSUE.search(line)]
    return found


def test_no_tracked_text_names_an_issue():
    found = issue_references()
    assert not found, "issue numbers in tracked files (say what is, without them):\n" + "\n".join(found)


def test_the_issue_scan_sees_one(tmp_path):
    word = "iss" + "ue"  # spelled apart, so that this file does not match itself
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.md").write_text(f"fine\nas {word.title()} 11 had it\n")
    (tmp_path / "b.md").write_text(f"[x](#{word}-17-the-budget)\n")
    (tmp_path / "c.log").write_text(f"{word} 3 in a captured log\n")
    (tmp_path / "d.md").write_text(f"an {word} with 3 parts\n")
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    assert issue_references(tmp_path) == [f"a.md:2: as {word.title()} 11 had it", f"b.md:1: [x](#{word}-17-the-budget)"]


def test_relative_links_resolve():
    files = markdown_files()
    assert ROOT / "docs" / "performance.md" in files and ROOT / "experiments" / "budget" / "README.md" in files
    broken = broken_links(files)
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_broken_links(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Top\n\n## The two commands\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](a.md#the-two-commands) ![ok](a.md) [ok](#here) [web](https://x.org/y)\n\n# Here\n\n"
        "[gone](b.md) [bad anchor](a.md#nope) `[code](c.md)`\n\n    [indented](d.md)\n"
    )
    assert broken_links([page]) == ["page.md: b.md (no such file)", "page.md: a.md#nope (no heading #nope in a.md)"]


def test_slug_is_githubs():
    assert slug("Time to accuracy on a 2-core CPU (`fast-cpu`)") == "time-to-accuracy-on-a-2-core-cpu-fast-cpu"
    assert slug("`cifar-resnet data info`") == "cifar-resnet-data-info"
    assert slug("The notebook, retold") == "the-notebook-retold"


if __name__ == "__main__":
    problems = broken_links(markdown_files())
    print("\n".join(problems) or "all relative links resolve")
    sys.exit(1 if problems else 0)
