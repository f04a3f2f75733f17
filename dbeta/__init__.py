"""dbeta: the D-BETA ECG-text model, its processor, training and evaluation tools.

The model and processor classes live in the flat hub modules (`modeling_dbeta`, ...), which is
what `trust_remote_code=True` loads from a model folder. Importing this package also registers
them with the transformers Auto classes, so an installed dbeta loads D-BETA folders without
remote code.
"""
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoProcessor,
)

from configuration_dbeta import DBetaConfig, DBetaECGConfig
from modeling_dbeta import DBetaECGModel, DBetaForECGClassification, DBetaForPreTraining, DBetaModel
from processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
LABEL_DESCRIPTIONS_FILE = PACKAGE_DIR / "label_descriptions.json"

AutoConfig.register(DBetaConfig.model_type, DBetaConfig, exist_ok=True)
AutoConfig.register(DBetaECGConfig.model_type, DBetaECGConfig, exist_ok=True)
AutoModel.register(DBetaConfig, DBetaModel, exist_ok=True)
AutoModel.register(DBetaECGConfig, DBetaECGModel, exist_ok=True)
AutoModelForPreTraining.register(DBetaConfig, DBetaForPreTraining, exist_ok=True)
AutoModelForSequenceClassification.register(DBetaConfig, DBetaForECGClassification, exist_ok=True)
for config_class in (DBetaConfig, DBetaECGConfig):
    AutoFeatureExtractor.register(config_class, DBetaFeatureExtractor, exist_ok=True)
AutoProcessor.register(DBetaConfig, DBetaProcessor, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "DBetaConfig",
    "DBetaECGConfig",
    "DBetaECGModel",
    "DBetaForECGClassification",
    "DBetaFeatureExtractor",
    "DBetaForPreTraining",
    "DBetaProcessor",
    "DBetaModel",
    "LABEL_DESCRIPTIONS_FILE",
]
