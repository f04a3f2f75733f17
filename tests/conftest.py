"""Shared pytest fixtures: locations of the vendored real ECG files.

Tests must pass with only `tests/fixtures`; the larger shared data folder is optional.
"""
from pathlib import Path

import pytest


FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
#: Optional extra real data next to the checkout (not shipped with the repository).
SHARED_REAL_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The vendored real ECG files (`ludb/`, `cinc2021/`, `cpsc2018/`)."""
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def shared_real_data_dir():
    """The optional shared real-data folder, or None when it is not there."""
    return SHARED_REAL_DATA_DIR if SHARED_REAL_DATA_DIR.is_dir() else None


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny random D-BETA saved as a complete zero-shot folder (one per test module)."""
    from zero_shot_utils import save_tiny_zero_shot_folder

    return save_tiny_zero_shot_folder(tmp_path_factory.mktemp("dbeta-tiny"))
