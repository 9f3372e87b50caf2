"""The documentation stays true: the CLI reference matches --help, the README's links and example work.

`mkdocs build --strict` (in .ci/run) checks the links inside docs/; the README lies
outside the site, so its links are checked here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, ...


def relative_links(markdown: str) -> list[str]:
    """Targets of the links and images in `markdown` that point into the repository (no URLs, no bare anchors)."""
    text = CODE_SPAN.sub("", FENCE.sub("", markdown))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text) + HTML_LINK.findall(text)
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def missing_targets(markdown: str, base: Path) -> list[str]:
    """The relative links in `markdown` whose file or folder does not exist under `base`."""
    missing = []
    for target in relative_links(markdown):
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if not (base / path).exists():
            missing.append(target)
    return missing


def test_cli_reference_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_readme_links_point_at_existing_files() -> None:
    links = relative_links(README.read_text(encoding="utf-8"))
    assert links, "the README should link into docs/"
    assert missing_targets(README.read_text(encoding="utf-8"), ROOT) == []


def test_link_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "data.md").write_text("# Data\n")
    markdown = "\n".join([
        "[ok](docs/data.md) [anchor ok](docs/data.md#layouts) [gone](docs/gone.md)",
        "![image gone](docs/figure.png) [web](https://example.com/x.md) [here](#set-up)",
        "`[in code](docs/code.md)`",
        "```",
        "[in a fence](docs/fence.md)",
        "```",
        "[ref]: docs/ref-gone.md",
        '<img src="docs/html-gone.png">',
    ])
    assert missing_targets(markdown, tmp_path) == ["docs/gone.md", "docs/figure.png", "docs/ref-gone.md", "docs/html-gone.png"]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it to {README_MAX_LINES} and move detail into docs/"


def test_readme_library_example_runs() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme.split("## The library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README's library section should hold one Python example"
    assert "from gaussian_adaptive_attention.gaussian_block import GaussianBlock" in blocks[0]
    exec(compile(blocks[0], "README.md (library example)", "exec"), {})
