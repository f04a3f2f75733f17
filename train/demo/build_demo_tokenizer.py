# Copyright 2025 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Build the small offline tokenizer shipped in `dbeta/assets/demo_tokenizer/`.

The released D-BETA uses Flan-T5's 32k sentencepiece vocabulary, which cannot be downloaded in
offline runs (tests, the demo). This script trains, once, a ~1000-piece Unigram model in the T5
style (Metaspace pre-tokenizer, `<pad>`=0, `</s>`=1, `<unk>`=2, `</s>` appended, sentinel tokens
`<extra_id_N>` at the end of the vocabulary with `<extra_id_0>` last, as in T5) on text the
repository ships: the label descriptions, LUDB diagnosis lines, and MIMIC-IV-ECG style report
phrases written below.

Training a Unigram model twice can give slightly different ids, so the result is generated once
and committed; tests and the demo only load it (`load_demo_tokenizer()`). Regenerate with

    python train/demo/build_demo_tokenizer.py [--output_dir DIR] [--extra_ludb_dir ../shared/data/real/ludb/data]
"""

from __future__ import annotations

import argparse
import json
import logging
import string
from pathlib import Path
from typing import Iterable, Optional, Union

from dbeta import ASSETS_DIR, LABEL_DESCRIPTIONS_FILE


logger = logging.getLogger(__name__)

#: Where the shipped demo tokenizer lives.
DEMO_TOKENIZER_DIR = ASSETS_DIR / "demo_tokenizer"

#: T5's first three ids.
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
#: Number of T5-style sentinel tokens; `<extra_id_0>` (the last id) is the MLM mask token.
NUM_SENTINEL_TOKENS = 10
SENTINEL_TOKENS = [f"<extra_id_{index}>" for index in range(NUM_SENTINEL_TOKENS)]
MASK_TOKEN = SENTINEL_TOKENS[0]
#: Target vocabulary size of the trained pieces (plus the 10 sentinels).
DEFAULT_VOCAB_SIZE = 1000

#: Report statements in the phrasing of MIMIC-IV-ECG machine reads (`machine_measurements.csv`
#: report_0..report_17), written for this tokenizer; each is also added lower-cased, because the
#: pretraining collator lower-cases reports.
MIMIC_STYLE_REPORT_PHRASES: tuple[str, ...] = (
    "Sinus rhythm",
    "Sinus bradycardia",
    "Sinus tachycardia",
    "Sinus arrhythmia",
    "Marked sinus bradycardia",
    "Sinus rhythm with 1st degree A-V block",
    "Sinus rhythm with premature atrial complexes",
    "Sinus rhythm with premature ventricular complexes",
    "Atrial fibrillation",
    "Atrial fibrillation with rapid ventricular response",
    "Atrial fibrillation with slow ventricular response",
    "Atrial flutter",
    "Atrial flutter with 2:1 A-V conduction",
    "Atrial flutter with variable A-V block",
    "Supraventricular tachycardia",
    "Ectopic atrial rhythm",
    "Junctional rhythm",
    "Accelerated junctional rhythm",
    "Ventricular tachycardia",
    "Paced rhythm",
    "Ventricular paced rhythm",
    "Atrial-sensed ventricular-paced rhythm",
    "Demand pacing",
    "Undetermined rhythm",
    "Normal ECG",
    "Abnormal ECG",
    "Borderline ECG",
    "Otherwise normal ECG",
    "Low QRS voltages",
    "Low QRS voltages in limb leads",
    "Low QRS voltages in precordial leads",
    "Left bundle branch block",
    "Right bundle branch block",
    "Incomplete right bundle branch block",
    "Incomplete left bundle branch block",
    "Left anterior fascicular block",
    "Left posterior fascicular block",
    "Bifascicular block",
    "Intraventricular conduction delay",
    "Nonspecific intraventricular conduction delay",
    "1st degree A-V block",
    "2nd degree A-V block, Mobitz I (Wenckebach)",
    "2nd degree A-V block, Mobitz II",
    "Complete heart block",
    "Short PR interval",
    "Prolonged QT interval",
    "Borderline prolonged QT interval",
    "Left axis deviation",
    "Right axis deviation",
    "Indeterminate axis",
    "Left ventricular hypertrophy",
    "Left ventricular hypertrophy with repolarization abnormality",
    "Right ventricular hypertrophy",
    "Left atrial enlargement",
    "Right atrial enlargement",
    "Biatrial enlargement",
    "Premature ventricular contractions",
    "Premature atrial contractions",
    "Multiple premature complexes, vent & supraven",
    "Ventricular bigeminy",
    "Ventricular trigeminy",
    "Poor R wave progression",
    "Poor R wave progression - probable normal variant",
    "Early repolarization",
    "Inverted T waves",
    "T wave inversions in inferior leads",
    "T wave inversions in anterior leads",
    "T wave inversions in lateral leads",
    "Nonspecific T wave abnormalities",
    "Nonspecific ST and T wave abnormalities",
    "Nonspecific ST-T changes",
    "ST elevation",
    "ST depression",
    "ST elevation, consider anterior injury or acute infarct",
    "ST depression, consider subendocardial injury",
    "Anterior infarct - age undetermined",
    "Inferior infarct - age undetermined",
    "Septal infarct - age undetermined",
    "Lateral infarct - age undetermined",
    "Inferior infarct, possibly acute",
    "Anteroseptal infarct, old",
    "Consider acute ST elevation myocardial infarction",
    "Possible anterior infarct",
    "Possible inferior infarct - age undetermined",
    "Probable left ventricular hypertrophy",
    "Pulmonary disease pattern",
    "Wolff-Parkinson-White pattern",
    "Brugada pattern",
    "Repolarization abnormality",
    "Abnormal R wave progression",
    "Baseline wander",
    "Artifact in lead(s) I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6",
    "Lead(s) unsuitable for analysis: V1",
    "Warning: Data quality may affect interpretation",
    "Technically difficult study",
    "When compared with ECG of 01-JAN-2020 12:00,",
    "No significant change was found",
    "Significant changes have occurred",
    "Vent. rate 72 BPM",
    "PR interval 160 ms",
    "QRS duration 96 ms",
    "QT/QTc 380/420 ms",
    "P-R-T axes 60 45 30",
    "Summary: the ECG shows a heart rate of 0 1 2 3 4 5 6 7 8 9 beats per minute",
)


def _ludb_diagnosis_lines(header_dir: Path) -> list[str]:
    """The diagnosis lines after `#<diagnoses>:` in every LUDB `.hea` file of a folder."""
    lines: list[str] = []
    for header_path in sorted(header_dir.glob("*.hea")):
        in_diagnoses = False
        for raw_line in header_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not raw_line.startswith("#"):
                continue
            comment = raw_line.lstrip("#").strip()
            if comment.startswith("<"):
                in_diagnoses = comment.lower().startswith("<diagnoses>")
            elif in_diagnoses and comment:
                lines.append(comment)
    return lines


def training_texts(ludb_dirs: Iterable[Path]) -> list[str]:
    """The training corpus, deduplicated, in a fixed order."""
    texts: list[str] = []
    descriptions = json.loads(Path(LABEL_DESCRIPTIONS_FILE).read_text(encoding="utf-8"))
    texts.extend(str(value) for value in descriptions.values())
    for ludb_dir in ludb_dirs:
        texts.extend(_ludb_diagnosis_lines(Path(ludb_dir)))
    for phrase in MIMIC_STYLE_REPORT_PHRASES:
        texts.extend([phrase, phrase.lower()])
    return list(dict.fromkeys(text.strip() for text in texts if text.strip()))


def train_demo_tokenizer(texts: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train a T5-style Unigram tokenizer and wrap it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    # Like sentencepiece's T5 model: NFKC, collapsed spaces, "▁" marks word starts.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN, UNK_TOKEN],  # ids 0, 1, 2 as in T5
        unk_token=UNK_TOKEN,
        # Every printable ASCII character gets a piece, so unseen words still tokenize without <unk>.
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        shrinking_factor=0.75,
        max_piece_length=16,
        n_sub_iterations=2,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Sentinels go at the end, in reverse so that <extra_id_0> has the highest id (as in T5).
    tokenizer.add_special_tokens(list(reversed(SENTINEL_TOKENS)))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, tokenizer.token_to_id(EOS_TOKEN))],
    )
    # PreTrainedTokenizerFast keeps this pipeline on save/load (T5TokenizerFast would rebuild its own).
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(reversed(SENTINEL_TOKENS)),
        model_max_length=512,
        padding_side="right",
    )


def check_tokenizer(tokenizer) -> None:
    """The invariants the rest of the package relies on."""
    expected = {PAD_TOKEN: 0, EOS_TOKEN: 1, UNK_TOKEN: 2}
    for token, token_id in expected.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise AssertionError(f"{token} must have id {token_id}")
    sentinel_ids = [tokenizer.convert_tokens_to_ids(token) for token in SENTINEL_TOKENS]
    if sentinel_ids != list(range(len(tokenizer) - 1, len(tokenizer) - 1 - NUM_SENTINEL_TOKENS, -1)):
        raise AssertionError(f"Sentinels must be the last ids, <extra_id_0> last: {sentinel_ids}")
    if tokenizer("Sinus rhythm")["input_ids"][-1] != expected[EOS_TOKEN]:
        raise AssertionError("</s> must be appended")


def build_demo_tokenizer(
    output_dir: Union[str, Path] = DEMO_TOKENIZER_DIR,
    extra_ludb_dirs: Optional[Iterable[Union[str, Path]]] = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
):
    """Train on the shipped text (plus optional extra LUDB folders) and save to `output_dir`."""
    repo_fixtures = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "ludb"
    ludb_dirs = [repo_fixtures] if repo_fixtures.is_dir() else []
    ludb_dirs += [Path(path) for path in (extra_ludb_dirs or []) if Path(path).is_dir()]
    texts = training_texts(ludb_dirs)
    tokenizer = train_demo_tokenizer(texts, vocab_size=vocab_size)
    check_tokenizer(tokenizer)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "README.md").write_text(
        "# D-BETA demo tokenizer\n\n"
        f"A {len(tokenizer)}-token T5-style Unigram tokenizer for offline tests and the demo, built by\n"
        "`train/demo/build_demo_tokenizer.py` from the label descriptions, LUDB diagnosis lines\n"
        f"({', '.join(path.name for path in ludb_dirs) or 'none'}) and MIMIC-IV-ECG style report phrases\n"
        f"({len(texts)} texts). `<pad>`=0, `</s>`=1 (appended), `<unk>`=2, `<extra_id_9>`..`<extra_id_0>`\n"
        "are the last ids (`<extra_id_0>` last; it is the MLM mask token). It is NOT the Flan-T5\n"
        "vocabulary: use it only with models trained with it.\n",
        encoding="utf-8",
    )
    logger.info("Saved a %d-token tokenizer trained on %d texts to %s", len(tokenizer), len(texts), output_dir)
    return tokenizer


def load_demo_tokenizer(path: Union[str, Path] = DEMO_TOKENIZER_DIR):
    """Load the shipped demo tokenizer (a `PreTrainedTokenizerFast`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default=str(DEMO_TOKENIZER_DIR))
    parser.add_argument(
        "--extra_ludb_dir", action="append", default=[], help="More LUDB .hea folders to take diagnosis lines from."
    )
    parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_demo_tokenizer(args.output_dir, args.extra_ludb_dir, args.vocab_size)


if __name__ == "__main__":
    main()
