"""Shared test helpers: a tiny random D-BETA saved as a complete zero-shot folder, real ECG records."""

import shutil
from pathlib import Path

import torch
from tiny import tiny_config

from dbeta.train.demo.build_demo_tokenizer import load_demo_tokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LUDB_FIXTURES = FIXTURES / "ludb"
CINC_FIXTURES = FIXTURES / "cinc2021"


def save_tiny_zero_shot_folder(folder, seed: int = 0, **config_overrides) -> Path:
    """Save a tiny random `DBetaModel` with the demo tokenizer, processor, pipeline and label
    descriptions to `folder` (what `pipeline(..., trust_remote_code=True)` loads)."""
    from modeling_dbeta import DBetaModel
    from pipeline_dbeta import save_pipeline_folder
    from processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

    torch.manual_seed(seed)
    model = DBetaModel(tiny_config(**config_overrides)).eval()
    processor = DBetaProcessor(DBetaFeatureExtractor(), load_demo_tokenizer())
    return save_pipeline_folder(model, processor, folder)


def copy_records(source: Path, target: Path, names) -> None:
    """Copy WFDB/CinC records (header + signal file) into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        for path in source.glob(f"{name}.*"):
            shutil.copy(path, target / path.name)
