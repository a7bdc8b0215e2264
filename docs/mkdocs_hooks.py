"""MkDocs hooks: the repository's root documents (REPRODUCTION.md, CONTRIBUTING.md) as pages of the site.

They stay where a reader of the repository looks for them and are not copied into docs/: the hook adds each
as a generated page, with its links rewritten from the repository root to docs/ (a link to another file
of the repository, which the site does not hold, becomes its text).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"REPRODUCTION.md": "reproduction.md", "CONTRIBUTING.md": "contributing.md", "README.md": "index.md"}
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def relink(text: str) -> str:
    """Links written from the repository root, as they work on a code host, made relative to docs/."""

    def one(m: re.Match[str]) -> str:
        bang, label, target = m.groups()
        name, hash_, anchor = target.partition("#")
        if target.startswith(("http://", "https://", "mailto:", "#")):
            return m.group(0)
        if name.startswith("docs/data"):  # the committed run data: files of the repository, not pages
            return label if label.startswith("`") else f"`{label}`"
        if name.startswith("docs/"):
            return f"{bang}[{label}]({name[len('docs/'):]}{hash_}{anchor})"
        if name in PAGES:
            return f"{bang}[{label}]({PAGES[name]}{hash_}{anchor})"
        return label if label.startswith("`") else f"`{label}`"

    return LINK.sub(one, text)


def on_files(files: Files, config: Any, **_: Any) -> Files:
    for source, dest in PAGES.items():
        files.append(File.generated(config, dest, content=relink((ROOT / source).read_text())))
    return files
