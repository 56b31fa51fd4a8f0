"""The documentation stays true: docs/cli.md is the parser's own --help, docs/runs/README.md indexes the run
logs that are there, and every relative link of README.md and docs/ reaches an existing file (and heading).

``python tests/test_docs.py`` prints the broken links, one a line.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _load(name: str):
    """A script of docs/ as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


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
    assert make.render() == committed, "docs/cli.md differs from --help: run python docs/make_cli_reference.py"


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


def test_runs_index_is_current():
    make = _load("make_runs_index")
    committed = (ROOT / "docs" / "runs" / "README.md").read_text()
    assert make.render() == committed, "docs/runs/README.md is out of date: run python docs/make_runs_index.py"
    linked = set(LINK.findall(committed))
    unlisted = [p.name for p in (ROOT / "docs" / "runs").iterdir() if p.name != "README.md" and p.name not in linked]
    assert not unlisted, f"files of docs/runs missing from its index: {unlisted}"


def test_relative_links_resolve():
    files = markdown_files()
    assert ROOT / "docs" / "performance.md" in files
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
