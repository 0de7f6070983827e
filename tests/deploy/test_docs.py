"""The deployment docs: present, their links and repository paths resolve, and what they say about
annotations and configuration keys matches the README and the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from interlink_slurm.config import Settings
from tests.deploy.helpers import DOCS, REPO, rel

OURS = ["operator-guide.md", "user-guide.md", "troubleshooting.md", "jupyterhub.md"]
DOC_FILES = [DOCS / name for name in OURS]
README = REPO / "README.md"
PATH_PREFIXES = ("deploy/", "manifests/", "examples/", "docs/", ".github/")


def test_the_docs_exist() -> None:
    for path in DOC_FILES:
        assert path.exists(), rel(path)


@pytest.mark.parametrize("path", [*DOC_FILES, README], ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{rel(path)} links to missing {target}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_repository_paths_in_backticks_exist(path: Path) -> None:
    # Files others are writing, mentioned as coming.
    coming = {"docs/metrics.md", "docs/security.md"}
    for token in re.findall(r"`([^`\s]+)`", path.read_text()):
        if token.startswith(PATH_PREFIXES) and token not in coming:
            assert (REPO / token.rstrip("/")).exists(), f"{rel(path)} names missing {token}"


def annotations_in(text: str) -> set[str]:
    return set(re.findall(r"`((?:slurm-job\.vk\.io|interlink\.eu)/[\w-]+)`", text))


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def test_user_guide_annotations_match_the_readme() -> None:
    readme = section(README.read_text(), "## Annotations reference")
    guide = section((DOCS / "user-guide.md").read_text(), "## Annotations")
    # README writes some pending ones without their prefix (e.g. `pre-exec`).
    readme_names = {a.split("/")[-1] for a in annotations_in(readme)}
    readme_names |= set(re.findall(r"`([\w-]+)`", readme))
    guide_names = {a.split("/")[-1] for a in annotations_in(guide)}
    assert guide_names <= readme_names
    assert "image-root" in guide_names and "wstunnel-client-commands" in guide_names


def test_config_keys_named_in_the_operator_guide_exist() -> None:
    """Every `snake_case` word of the guide is a configuration key (partition names aside)."""
    text = (DOCS / "operator-guide.md").read_text()
    words = {w for w in re.findall(r"`([a-z][a-z0-9_]*)`", text) if "_" in w}
    not_keys = {"boost_usr_prod", "dcgp_usr_prod"}
    assert words - not_keys <= set(Settings.model_fields), (
        words - not_keys - set(Settings.model_fields)
    )


def test_security_placeholder_points_to_the_readme() -> None:
    guide = section((DOCS / "operator-guide.md").read_text(), "## Security model")
    assert "SSH and REST modes" in guide and "README" in guide


def test_readme_has_a_deploying_section_linking_every_doc() -> None:
    deploying = section(README.read_text(), "## Deploying")
    for name in OURS:
        assert f"(docs/{name})" in deploying
