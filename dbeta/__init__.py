"""dbeta: the D-BETA ECG-text model, its processor, training and evaluation tools.

The model and processor classes live in the flat hub modules (`modeling_dbeta`, ...), which is
what `trust_remote_code=True` loads from a model folder; this package re-exports them and holds
the command line and the shipped assets.
"""
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
LABEL_DESCRIPTIONS_FILE = Path(__file__).resolve().parent / "label_descriptions.json"
