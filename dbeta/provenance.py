"""What produced a result: package versions and the git revision of the dbeta checkout.

One collector for the evaluation report, the pretraining model card and the ONNX export metadata.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: Packages whose versions change results; absent ones are reported as None.
DEFAULT_PACKAGES = (
    "dbeta",
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "numpy",
    "scipy",
    "scikit-learn",
    "huggingface_hub",
    "tokenizers",
    "wfdb",
    "h5py",
)

_CHECKOUT = Path(__file__).resolve().parents[1]


def package_versions(packages: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    """`{package: installed version or None}` from the installed distributions (imports nothing)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def git_revision(folder: str | Path = _CHECKOUT) -> dict:
    """`{"revision": full hash or None, "dirty": bool or None}` of the checkout holding `folder`."""
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout
        return {"revision": revision, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}


__all__ = ["DEFAULT_PACKAGES", "git_revision", "package_versions"]
