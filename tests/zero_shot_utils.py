"""Shared test helpers: a tiny random D-BETA saved as a complete zero-shot folder, real ECG records."""
import shutil
import string
from pathlib import Path

import torch
from tiny import tiny_config
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LUDB_FIXTURES = FIXTURES / "ludb"
CINC_FIXTURES = FIXTURES / "cinc2021"


def character_tokenizer() -> PreTrainedTokenizerFast:
    """A T5-style (pad 0, </s> 1 appended) character tokenizer: reads any label description with
    ~100 ids, inside the tiny config's 1000-word vocabulary, with no download."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for character in string.printable:
        vocab.setdefault(character, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def save_tiny_zero_shot_folder(folder, seed: int = 0) -> Path:
    """Save a tiny random `DBetaModel` with processor, pipeline and label descriptions to `folder`."""
    from modeling_dbeta import DBetaModel
    from pipeline_dbeta import save_pipeline_folder
    from processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

    torch.manual_seed(seed)
    model = DBetaModel(tiny_config()).eval()
    processor = DBetaProcessor(DBetaFeatureExtractor(), character_tokenizer())
    return save_pipeline_folder(model, processor, folder)


def copy_records(source: Path, target: Path, names) -> None:
    """Copy WFDB/CinC records (header + signal file) into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        for path in source.glob(f"{name}.*"):
            shutil.copy(path, target / path.name)
