"""The parts of the README that the Terraform tests hold to the module."""

from __future__ import annotations

from .evaluate import REPO

README = REPO / "README.md"


def deploy_section() -> str:
    """The README's "Deploy to Google Cloud" section, up to the next second-level heading."""
    text = README.read_text()
    start = text.index("\n## Deploy to Google Cloud")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]
