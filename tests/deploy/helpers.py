"""Shared by the deployment tests: paths, YAML loading, the e2e scenario module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = REPO / "manifests"
EXAMPLES = REPO / "examples"
DOCS = REPO / "docs"
E2E = DEPLOY / "e2e"
LEONARDO = DEPLOY / "config" / "leonardo.yaml"
LOCAL = DEPLOY / "config" / "local.yaml"


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of a file (empty documents skipped)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def e2e_scenarios() -> ModuleType:
    """deploy/e2e/scenarios.py, imported once (it is a script directory, not a package)."""
    name = "ils_e2e_scenarios"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, E2E / "scenarios.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))
