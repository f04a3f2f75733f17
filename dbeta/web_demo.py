"""A web demo of D-BETA zero-shot ECG classification (Gradio): upload an ECG, name labels, see the
12-lead tracing and the scores.

    dbeta demo [--model outputs/dbeta-demo] [--host 127.0.0.1] [--port 7860]
    dbeta export-space --model outputs/dbeta-demo --output_dir space/      # a Hugging Face Space folder

One module serves both: `dbeta demo` runs `main()`, and the Space's `app.py` imports this very
module (copied into the Space folder with the rest of the package) and calls the same `main()`.

Everything goes through the project's own mechanisms: the checked loader (`dbeta.loading`), the
processor's readers (`DBetaFeatureExtractor.read_file`, so any format the readers accept is
accepted and their error is shown), the zero-shot pipeline (sliding windows for records longer than
the model's 10 s) and `dbeta.report`'s 12-lead picture (25 mm/s, 10 mm/mV).

Limits for a public Space (`DemoLimits`): an upload-size cap (also given to Gradio, which refuses
larger uploads before they reach the handler), a duration cap (checked from the header before the
signal is read), a queue with a concurrency limit, and no file kept: Gradio's upload cache is a
per-process temporary folder, each request's uploads and staging folder are deleted when the
request ends, and pictures go to the page inline (nothing is written for them).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import html
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Where README command 1 (`python train/pretrain.py`, the offline demo) writes its model.
DEFAULT_MODEL = "outputs/dbeta-demo"
MAX_UPLOAD_MB = 20.0
MAX_DURATION_S = 300.0
#: One request is scored at a time: the processor's warnings are captured process-wide for the
#: page's notes, and one CPU model serves one request fastest anyway; the others wait in the queue.
CONCURRENCY_LIMIT = 1
QUEUE_SIZE = 16
#: A zip of one record folder holds a few files; more is refused before anything is extracted.
MAX_ZIP_MEMBERS = 32
#: Labels scored per request (the text tower runs once per label).
MAX_LABELS = 30
#: Vendored LUDB evaluation records offered as examples.
EXAMPLE_COUNT = 12
PICTURE_DPI = 100


class DemoInputError(ValueError):
    """Something the person can fix (no file, no label, too long, ...): shown as one line in the page."""


class DemoModelMissing(ValueError):
    """The model folder to serve does not exist or cannot be loaded."""


@dataclass(frozen=True)
class DemoLimits:
    max_upload_bytes: int = int(MAX_UPLOAD_MB * 1024 * 1024)
    max_duration_s: float = MAX_DURATION_S
    concurrency_limit: int = CONCURRENCY_LIMIT
    queue_size: int = QUEUE_SIZE


@dataclass
class DemoResult:
    """What one request shows: a message (error) or the picture, scores, timeline and notes."""

    error: str | None = None
    picture_png: bytes | None = None
    scores: list[dict] = field(default_factory=list)
    label_texts: dict[str, str] = field(default_factory=dict)
    windows: list[dict] = field(default_factory=list)
    timeline_png: bytes | None = None
    notes: list[str] = field(default_factory=list)
    multi_label: bool = True
    aggregation: str = "mean"


def one_line(error: BaseException) -> str:
    """The first non-empty line of an error, without the exception's class name for our own errors."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if isinstance(error, (DemoInputError, ValueError, OSError)):
        return text
    return f"{type(error).__name__}: {text}"


# --------------------------------------------------------------------------------------------
# Input: uploads, examples, labels
# --------------------------------------------------------------------------------------------


def _original_name(path: Path) -> str:
    # Gradio keeps the uploaded file's own name as the last part of its cache path.
    return Path(str(path)).name


def stage_upload(paths: Sequence[str | os.PathLike], folder: Path, limits: DemoLimits) -> Path:
    """Copy (or unzip) the uploaded files into `folder` under their own names; return the file to read.

    A WFDB record is its `.hea` with its signal file(s) (uploaded together, or zipped); any other
    single file is handed to the processor's reader as it is, which decides by its content whether
    it can read it (its message is shown otherwise).
    """
    paths = [Path(str(path)) for path in paths if path]
    if not paths:
        raise DemoInputError("Upload an ECG file (a WFDB record: its .hea and .dat together, or a zip of the record folder), or pick an example.")
    total = sum(path.stat().st_size for path in paths)
    if total > limits.max_upload_bytes:
        raise DemoInputError(f"The upload is {total / 2**20:.1f} MB; this demo accepts at most {limits.max_upload_bytes / 2**20:.3g} MB.")
    names = [_original_name(path) for path in paths]
    if len(set(names)) != len(names):
        raise DemoInputError(f"Two uploaded files have the same name ({', '.join(sorted(names))}).")
    if len(paths) == 1 and zipfile.is_zipfile(paths[0]):
        _extract_zip(paths[0], folder, limits)
    else:
        for path, name in zip(paths, names):
            shutil.copyfile(path, folder / name)
    return _record_to_read(folder)


def _extract_zip(path: Path, folder: Path, limits: DemoLimits) -> None:
    """Extract the regular files of a zip (sizes checked before extraction), flattened into `folder`."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) > MAX_ZIP_MEMBERS:
                raise DemoInputError(f"The zip holds {len(members)} files; upload the folder of one record (at most {MAX_ZIP_MEMBERS} files).")
            if sum(info.file_size for info in members) > limits.max_upload_bytes:
                raise DemoInputError(f"The zip unpacks to more than {limits.max_upload_bytes / 2**20:.3g} MB, this demo's limit.")
            names = set()
            for info in members:
                # Only the base name is kept: nothing can land outside the staging folder.
                name = Path(info.filename.replace("\\", "/")).name
                if not name or name.startswith(".") or name.startswith("__MACOSX"):
                    continue
                if name in names:
                    raise DemoInputError(f"The zip holds two files named {name}; upload the folder of one record.")
                names.add(name)
                with archive.open(info) as source, open(folder / name, "wb") as target:
                    shutil.copyfileobj(source, target)
    except zipfile.BadZipFile as error:
        raise DemoInputError(f"The zip file is damaged ({error}).") from error


def _record_to_read(folder: Path) -> Path:
    files = sorted(path for path in folder.iterdir() if path.is_file())
    headers = [path for path in files if path.suffix.lower() == ".hea"]
    if len(headers) > 1:
        raise DemoInputError(f"The upload holds {len(headers)} WFDB records ({', '.join(path.stem for path in headers)}); upload one.")
    if headers:
        return headers[0]
    if len(files) == 1:
        return files[0]
    if not files:
        raise DemoInputError("The upload holds no file.")
    raise DemoInputError(
        f"The upload holds {len(files)} files and no WFDB header (.hea): upload one ECG file, or a record's .hea with its signal file."
    )


def parse_labels(codes: Iterable[str] | None, free_text: str | None) -> list[str]:
    """Picked codes, then free-text labels (one per line or separated by `;`), without repeats."""
    labels = [str(code).strip() for code in codes or [] if str(code).strip()]
    for line in (free_text or "").replace(";", "\n").splitlines():
        if line.strip():
            labels.append(line.strip())
    unique = list(dict.fromkeys(labels))
    if not unique:
        raise DemoInputError("Name at least one label: pick codes from the list or type a description (e.g. atrial fibrillation).")
    if len(unique) > MAX_LABELS:
        raise DemoInputError(f"{len(unique)} labels given; this demo scores at most {MAX_LABELS} at a time.")
    return unique


def example_records(count: int = EXAMPLE_COUNT) -> dict[str, object]:
    """`{choice name: ECGRecord}` of the first vendored LUDB evaluation records (real 10 s ECGs)."""
    from processing_dbeta import ECGRecord

    from dbeta.ludb_assets import read_ludb_npz

    data = read_ludb_npz()
    examples = {}
    for index in range(min(count, len(data["record_ids"]))):
        record_id = data["record_ids"][index]
        name = f"LUDB {record_id} ({data['rhythms'][index]})"
        diagnoses = [line.strip() for line in re.split(r"(?<=\.)\s+|;", data["reports"][index]) if line.strip()]
        signal = np.asarray(data["signals"][index], dtype=np.float64)
        metadata = {"name": f"LUDB record {record_id}", "diagnoses": diagnoses, "total_samples": signal.shape[-1]}
        examples[name] = ECGRecord(signal, list(data["lead_names"]), float(data["sampling_rate"]), metadata)
    return examples


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


class _CollectedNotes(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class DemoApp:
    """The loaded model and the request handler (no Gradio here, so it is tested without a browser)."""

    def __init__(self, model: str, limits: DemoLimits = DemoLimits(), device: str = "cpu", examples: bool = True):
        from pipeline_dbeta import ZeroShotECGClassificationPipeline

        from dbeta.loading import ModelLoadError, load_model_and_processor, model_label_descriptions

        self.model_name = str(model)
        self.limits = limits
        if str(model) == DEFAULT_MODEL and not Path(model).exists():
            raise DemoModelMissing(
                f"The demo model {DEFAULT_MODEL}/ is missing: build it with README command 1 "
                "(pip install -e \".[train]\" && python train/pretrain.py, about 13 minutes on 2 CPU cores), "
                "or pass --model FOLDER_OR_HUB_ID."
            )
        try:
            self.model, processor = load_model_and_processor(model, device=device)
        except ModelLoadError as error:
            raise DemoModelMissing(str(error)) from error
        self.feature_extractor = processor.feature_extractor
        self.label_descriptions = model_label_descriptions(model if Path(model).exists() else None)
        self.pipeline = ZeroShotECGClassificationPipeline(
            model=self.model,
            tokenizer=processor.tokenizer,
            feature_extractor=self.feature_extractor,
            device=self.model.device,
            label_descriptions=self.label_descriptions,
        )
        self.window_seconds = self.feature_extractor.num_samples / float(self.feature_extractor.sampling_rate)
        self.examples = example_records() if examples else {}
        self.work_root = Path(tempfile.mkdtemp(prefix="dbeta-demo-"))
        # The pipeline and warning capture are not thread-safe; the queue's concurrency limit
        # already serialises requests, and this lock makes it true for direct callers too.
        self._lock = threading.Lock()

    def label_choices(self) -> list[tuple[str, str]]:
        """`(shown text, code)` for the searchable label picker."""
        choices = []
        for code, description in sorted(self.label_descriptions.items()):
            short = description if len(description) <= 90 else description[:87] + "..."
            choices.append((f"{code} - {short}", code))
        return choices

    def analyse(
        self,
        uploads: Sequence[str | os.PathLike] | None,
        example: str | None,
        codes: Iterable[str] | None,
        free_text: str | None,
        hypothesis_template: str = "{}",
        multi_label: bool = True,
        aggregation: str = "mean",
    ) -> DemoResult:
        """Score one request. Never raises: any failure is `DemoResult.error`, one line. The uploaded
        files and the request's staging folder are deleted before it returns."""
        staging = Path(tempfile.mkdtemp(prefix="request-", dir=self.work_root))
        try:
            with self._lock:
                return self._analyse(uploads, example, codes, free_text, hypothesis_template, multi_label, aggregation, staging)
        except Exception as error:  # noqa: BLE001 - the page shows one line, never a traceback
            return DemoResult(error=_hide_folder(one_line(error), staging))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            remove_uploads(uploads)

    def _analyse(self, uploads, example, codes, free_text, template, multi_label, aggregation, staging) -> DemoResult:
        from processing_dbeta import canonical_lead_name

        from dbeta.report import lead_roles, record_metadata, render_report

        labels = parse_labels(codes, free_text)
        notes: list[str] = []
        if uploads:
            path = stage_upload(uploads, staging, self.limits)
            record = self.feature_extractor.read_file(path)  # only the start: what the model reads
            shown_name = path.name
            if example:
                notes.append(f"The uploaded file was scored (the example {example} was not).")
        elif example:
            if example not in self.examples:
                raise DemoInputError(f"Unknown example {example!r}.")
            record, path = self.examples[example], None
            shown_name = example
            # What the vendored set's README says of its amplitudes, so no one reads them as millivolts.
            notes.append("LUDB v1.0.1 is published with every lead scaled to about 1 unit peak-to-peak: morphology, timing and rhythm are real, amplitudes are not millivolts.")
        else:
            raise DemoInputError("Upload an ECG file or pick an example record.")
        rate = float(record.sampling_rate)
        total_samples = int((record.metadata or {}).get("total_samples") or record.num_samples)
        duration = total_samples / rate
        if duration > self.limits.max_duration_s:
            raise DemoInputError(
                f"The recording is {duration:.0f} s long; this demo scores at most {self.limits.max_duration_s:g} s. "
                "Use `dbeta classify --window sliding` for long recordings."
            )
        notes.append(f"{shown_name}: {record.num_leads} leads ({' '.join(map(str, record.lead_names))}), {rate:g} Hz, {duration:.1f} s.")
        if abs(rate - self.feature_extractor.sampling_rate) > 1e-9:
            notes.append(f"Resampled from {rate:g} Hz to the model's {self.feature_extractor.sampling_rate:g} Hz (polyphase filter).")
        model_leads, absent, derived = lead_roles(self.feature_extractor, record)
        if derived:
            notes.append(f"Leads derived from I and II (the record does not have them): {', '.join(derived)}.")
        unused = [str(name) for name in record.lead_names if canonical_lead_name(str(name)) not in model_leads]
        if unused:
            notes.append(f"Leads the model does not read (not among the 12 standard leads): {', '.join(unused)}.")
        if absent:
            notes.append(f"Leads absent from the record, zero-filled for the model: {', '.join(absent)}.")

        settings = dict(hypothesis_template=template or "{}", multi_label=bool(multi_label))
        collected = _CollectedNotes()
        processor_logger = logging.getLogger(type(self.feature_extractor).__module__)
        processor_logger.addHandler(collected)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if duration > self.window_seconds + 1e-6 and path is not None:
                    # Longer than one model input: scored window by window (streamed from disk).
                    output = self.pipeline(path, candidate_labels=labels, window="sliding", aggregation=aggregation, return_windows=True, **settings)
                    scores, windows = output["scores"], output["windows"]
                    notes.append(
                        f"{duration:.1f} s is longer than the model's {self.window_seconds:g} s: scored in {len(windows)} windows, "
                        f"{aggregation} over the windows; the picture shows the first {self.window_seconds:g} s."
                    )
                else:
                    scores, windows = self.pipeline(record, candidate_labels=labels, **settings), []
                values = self.feature_extractor(record)["input_values"][0]
        finally:
            processor_logger.removeHandler(collected)
        for message in [str(item.message) for item in caught] + collected.messages:
            message = _hide_folder(message, staging)
            if message not in notes:
                notes.append(message)

        texts = self.pipeline.label_texts(labels, hypothesis_template=settings["hypothesis_template"])
        metadata = record_metadata(record, shown_name, self.model_name)
        metadata.pop("date", None)
        picture = render_report(
            np.asarray(values),
            model_leads,
            float(self.feature_extractor.sampling_rate),
            scores[:10],
            metadata,
            title=f"D-BETA zero-shot: {metadata['record']}",
            absent=absent,
            derived=derived,
            dpi=PICTURE_DPI,
        )
        return DemoResult(
            picture_png=picture,
            scores=scores,
            label_texts=dict(zip(labels, texts)),
            windows=windows,
            timeline_png=timeline_picture(windows, [item["label"] for item in scores]) if len(windows) > 1 else None,
            notes=notes,
            multi_label=settings["multi_label"],
            aggregation=aggregation,
        )


def _hide_folder(message: str, folder: Path) -> str:
    """Messages name files by their upload name, not by this server's temporary paths."""
    return message.replace(f"{folder}{os.sep}", "").replace(str(folder), "upload")


def remove_uploads(uploads: Sequence[str | os.PathLike] | None) -> None:
    """Delete a request's uploaded files, and the per-upload folders Gradio made for them in its cache."""
    cache = os.environ.get("GRADIO_TEMP_DIR")
    for upload in uploads or []:
        path = Path(str(upload))
        path.unlink(missing_ok=True)
        if cache and path.parent != Path(cache) and Path(cache) in path.parents:
            try:
                path.parent.rmdir()  # kept if anything else is in it
            except OSError:
                pass


def timeline_picture(windows: Sequence[dict], labels: Sequence[str]) -> bytes:
    """PNG of each label's score per window against the window's start time."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    starts = [window["start"] for window in windows]
    with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
        figure, ax = plt.subplots(figsize=(9, 3), dpi=PICTURE_DPI)
        try:
            for label in labels[:10]:
                ax.plot(starts, [window["scores"][label] for window in windows], marker="o", markersize=3, label=label[:40])
            ax.set_xlabel("window start (s)")
            ax.set_ylabel("score")
            ax.set_title("Scores per window", loc="left", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", facecolor="white")
        finally:
            plt.close(figure)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def _inline_image(png: bytes, alt: str) -> str:
    # Inline (data URI): the picture is never written to disk to be served.
    return f'<img alt="{html.escape(alt)}" style="max-width:100%" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def result_html(result: DemoResult) -> tuple[str, str, str, str, str]:
    """(error, picture, scores table, timeline, notes) HTML for the page."""
    if result.error:
        return f'<div class="dbeta-error" role="alert">&#9888; {html.escape(result.error)}</div>', "", "", "", ""
    picture = _inline_image(result.picture_png, "12-lead ECG at 25 mm/s, 10 mm/mV, with the top label scores")
    rows = []
    # As in the report picture: when every score is small (the ETS bias is negative), the bars are
    # scaled to the best score so that they still show the ranking.
    best = max((float(item["score"]) for item in result.scores), default=1.0)
    upper = 1.0 if best >= 0.5 else max(1.25 * best, 1e-6)
    for rank, item in enumerate(result.scores, 1):
        label, score = str(item["label"]), float(item["score"])
        text = result.label_texts.get(label, label)
        scored_as = "" if text == label else f'<div class="dbeta-text">{html.escape(text)}</div>'
        rows.append(
            f'<tr><td>{rank}</td><td class="dbeta-label">{html.escape(label)}{scored_as}</td>'
            f'<td class="dbeta-score">{score:.3f}</td>'
            f'<td><div class="dbeta-bar" style="width:{max(0.0, min(score / upper, 1.0)) * 100:.1f}%"></div></td></tr>'
        )
    kind = "independent sigmoid scores" if result.multi_label else "softmax across the labels"
    over = f", {result.aggregation} over {len(result.windows)} windows" if len(result.windows) > 1 else ""
    table = (
        f'<div class="dbeta-heading">Scores ({kind}{over}), best first</div>'
        + (f'<div class="dbeta-text">bars scaled to 0-{upper:.2g}</div>' if upper < 1.0 else "")
        + '<table class="dbeta-scores"><thead><tr><th>#</th><th>label (scored text)</th><th>score</th><th></th></tr></thead>'
        + f"<tbody>{''.join(rows)}</tbody></table>"
    )
    timeline = _inline_image(result.timeline_png, "score of each label per 10 s window") if result.timeline_png else ""
    notes = '<div class="dbeta-heading">Processing notes</div><ul>' + "".join(f"<li>{html.escape(note)}</li>" for note in result.notes) + "</ul>"
    return "", picture, table, timeline, notes


CSS = """
.dbeta-error {background:#fde8e8;border:1px solid #e0a0a0;color:#7a1010;padding:0.6em 0.9em;border-radius:6px;font-weight:600}
.dbeta-scores {border-collapse:collapse;width:100%}
.dbeta-scores td, .dbeta-scores th {padding:0.25em 0.5em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.dbeta-scores td:last-child {width:35%}
.dbeta-bar {background:#3b6ea8;height:0.9em;border-radius:3px}
.dbeta-text {font-size:0.8em;color:#666}
.dbeta-score {font-variant-numeric:tabular-nums}
.dbeta-heading {font-weight:600;margin:0.4em 0}
"""


def _hand_over_upload_paths(upload):
    """Make `upload` (a `gr.File` of several files) hand the uploaded paths to the handler itself:
    gr.File 6.x makes an empty temporary file in its cache for every file it hands over and never
    removes it, and a public demo must keep no file. Set on the instance because a gr.File subclass
    would make Gradio write a .pyi stub beside this module."""
    from gradio.data_classes import ListFiles
    from gradio.utils import NamedString

    def preprocess(payload):
        if payload is None:
            return None
        files = payload if isinstance(payload, ListFiles) else [payload]
        return [NamedString(item.path) for item in files]

    upload.preprocess = preprocess
    return upload


def build_blocks(app: DemoApp):
    """The Gradio page around `app.analyse`, with the queue limits applied."""
    import gradio as gr

    limits = app.limits
    with gr.Blocks(title="D-BETA zero-shot ECG demo") as blocks:
        gr.Markdown(
            "## D-BETA zero-shot ECG classification\n"
            f"Model: `{app.model_name}`. Upload one ECG (a WFDB record as its `.hea` + `.dat` pair, a zip of the "
            "record folder, or another format the processor reads) or pick a real LUDB example; pick label codes "
            "and/or type descriptions; press **Score**. Scores are the model's zero-shot ECG-text match, not a diagnosis. "
            f"Limits: {limits.max_upload_bytes / 2**20:.3g} MB per upload, {limits.max_duration_s:g} s of recording; "
            "files are deleted when the request ends."
        )
        with gr.Row():
            with gr.Column(scale=2):
                upload = _hand_over_upload_paths(
                    gr.File(label="ECG file(s)", file_count="multiple", type="filepath", elem_id="ecg-upload")
                )
                example = gr.Dropdown(
                    choices=list(app.examples), value=None, label="...or a vendored LUDB example (real 10 s ECG)", elem_id="example"
                )
                codes = gr.Dropdown(
                    choices=app.label_choices(), multiselect=True, filterable=True, value=[],
                    label="Label codes (type to search the shipped descriptions)", elem_id="label-codes",
                )
                free_text = gr.Textbox(
                    label="Free-text labels (separate with ; or new lines)", placeholder="atrial fibrillation; sinus rhythm",
                    lines=2, elem_id="free-labels",
                )
                with gr.Row():
                    template = gr.Textbox(value="{}", label="Hypothesis template ({} = the label)", elem_id="template")
                    aggregation = gr.Radio(["mean", "max"], value="mean", label="Windows of long records")
                multi_label = gr.Checkbox(value=True, label="Multi-label: independent sigmoid scores (off: softmax across labels)")
                button = gr.Button("Score", variant="primary", elem_id="score-button")
            with gr.Column(scale=3):
                error = gr.HTML(elem_id="demo-error")
                scores = gr.HTML(elem_id="scores")
                notes = gr.HTML(label="Processing notes", elem_id="notes")
        picture = gr.HTML(elem_id="ecg-picture")
        timeline = gr.HTML(elem_id="timeline")

        def score(uploads, example_name, code_list, text, hypothesis_template, aggregate, multi):
            result = app.analyse(uploads, example_name, code_list, text, hypothesis_template, multi, aggregate)
            error_html, picture_html, table_html, timeline_html, notes_html = result_html(result)
            return error_html, picture_html, table_html, timeline_html, notes_html

        button.click(
            score,
            inputs=[upload, example, codes, free_text, template, aggregation, multi_label],
            outputs=[error, picture, scores, timeline, notes],
            concurrency_limit=limits.concurrency_limit,
            api_name="score",
        )
    blocks.queue(default_concurrency_limit=limits.concurrency_limit, max_size=limits.queue_size)
    return blocks


def prepare_gradio_temp_dir(work_root: Path | None = None) -> Path:
    """Point Gradio's upload cache at a per-process temporary folder (removed at exit). Must run before
    gradio is imported: it reads GRADIO_TEMP_DIR then."""
    folder = Path(tempfile.mkdtemp(prefix="dbeta-demo-uploads-", dir=work_root))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo server
    atexit.register(shutil.rmtree, folder, True)
    return folder


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"D-BETA model folder or Hub id (default {DEFAULT_MODEL}, README command 1)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 in a Space)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max_upload_mb", type=float, default=MAX_UPLOAD_MB, help="largest upload accepted")
    parser.add_argument("--max_duration_s", type=float, default=MAX_DURATION_S, help="longest recording scored")
    parser.add_argument("--queue_size", type=int, default=QUEUE_SIZE, help="requests waiting at most")
    return parser


def limits_from_args(args: argparse.Namespace) -> DemoLimits:
    for name in ("max_upload_mb", "max_duration_s", "queue_size"):
        if not getattr(args, name) > 0:
            raise DemoInputError(f"--{name} must be positive, got {getattr(args, name)}")
    return DemoLimits(int(args.max_upload_mb * 1024 * 1024), float(args.max_duration_s), CONCURRENCY_LIMIT, int(args.queue_size))


def run(args: argparse.Namespace) -> int:
    """`dbeta demo`: load the model, then serve the page until interrupted."""
    limits = limits_from_args(args)
    import importlib.util

    # Found, not imported: gradio reads GRADIO_TEMP_DIR when imported, which is set below.
    if importlib.util.find_spec("gradio") is None:
        print('dbeta demo: needs the web extra (gradio is not installed): pip install -e ".[web]"', file=sys.stderr)
        return 2
    try:
        app = DemoApp(args.model, limits, device=args.device)
    except DemoModelMissing as error:
        print(f"dbeta demo: {error}", file=sys.stderr)
        return 2
    prepare_gradio_temp_dir(app.work_root)
    atexit.register(shutil.rmtree, app.work_root, True)
    blocks = build_blocks(app)
    print(f"dbeta demo: serving {args.model} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    blocks.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=limits.max_upload_bytes,
        show_error=False,  # errors are the one-line messages of the page, never tracebacks
        share=False,
        css=CSS,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="dbeta demo", description=__doc__.split("\n\n")[0]))
    return run(parser.parse_args(argv))


# --------------------------------------------------------------------------------------------
# The Space folder
# --------------------------------------------------------------------------------------------

SPACE_APP = '''"""Hugging Face Space entry point: the same app as `dbeta demo` (dbeta/web_demo.py)."""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the dbeta package and hub modules copied beside this file

from dbeta.web_demo import main  # noqa: E402

if __name__ == "__main__":
    model = {model!r}
    model = str(HERE / model) if (HERE / model).is_dir() else model  # the copied folder, or a Hub id
    sys.exit(main(["--model", model, "--host", "0.0.0.0", "--port", os.environ.get("PORT", "7860")]))
'''

SPACE_README = """---
title: D-BETA zero-shot ECG demo
emoji: 🫀
colorFrom: red
colorTo: blue
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: apache-2.0
---

# D-BETA zero-shot ECG classification

Upload an ECG (WFDB `.hea` + `.dat`, or a zip of the record folder) or pick a real LUDB example,
name labels (codes from the shipped descriptions, or free text), and see the 12-lead tracing
(25 mm/s, 10 mm/mV) with the zero-shot scores. Model: `{model}`. Scores are research output, not
a diagnosis.

Written by `dbeta export-space`; the app is `dbeta/web_demo.py` of the dbeta package (the same
code as `dbeta demo`). Limits: {limits}.
"""

_SPACE_EXTRAS = ("readers", "web")


def space_requirements() -> list[str]:
    """The installed dbeta's own requirements (base + readers + web extras), read from its metadata."""
    from importlib.metadata import requires

    wanted = []
    for requirement in requires("dbeta") or []:
        name, _, marker = requirement.partition(";")
        if not marker or any(f'extra == "{extra}"' in marker for extra in _SPACE_EXTRAS):
            if name.strip() not in wanted:
                wanted.append(name.strip())
    return wanted


def write_space(model: str, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a Space folder: app.py, requirements.txt, README.md (Space front matter), the dbeta code
    the app imports and the model folder (`model/`), or a Hub id the app loads at start."""
    import dbeta
    from dbeta.files import staged_folder

    model_path = Path(model)
    if model_path.exists() and not (model_path / "config.json").is_file():
        raise DemoModelMissing(f"{model} is not a saved D-BETA model folder (no config.json)")
    if not model_path.exists() and str(model) == DEFAULT_MODEL:
        raise DemoModelMissing(f"The demo model {DEFAULT_MODEL}/ is missing: build it with README command 1 (python train/pretrain.py).")
    try:
        import gradio

        gradio_version = gradio.__version__
    except ImportError:
        gradio_version = "6.0.0"
    limits = DemoLimits()
    with staged_folder(output_dir, overwrite=overwrite, replaceable=lambda folder: (folder / "app.py").is_file()) as staging:
        for module_name in ("configuration_dbeta", "modeling_dbeta", "processing_dbeta", "pipeline_dbeta"):
            module = sys.modules.get(module_name) or __import__(module_name)
            shutil.copyfile(module.__file__, staging / f"{module_name}.py")
        package = Path(dbeta.__file__).parent
        # The inference package (it imports no training code), without the LUDB training half.
        shutil.copytree(
            package, staging / "dbeta", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "ludb_train.npz")
        )
        if model_path.exists():
            # A Hub folder is flat: its files, not a training run's checkpoints/ or runs/ beside them.
            (staging / "model").mkdir()
            for entry in sorted(model_path.iterdir()):
                if entry.is_file() and not entry.name.startswith("."):
                    shutil.copyfile(entry, staging / "model" / entry.name)
            served = "model"
        else:
            served = str(model)  # a Hub id: the Space downloads it at start
        (staging / "app.py").write_text(SPACE_APP.format(model=served), encoding="utf-8")
        (staging / "requirements.txt").write_text("\n".join(space_requirements()) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(
            SPACE_README.format(
                gradio_version=gradio_version,
                model=served,
                limits=f"{limits.max_upload_bytes / 2**20:.3g} MB per upload, {limits.max_duration_s:g} s per recording, "
                f"{limits.concurrency_limit} request at a time",
            ),
            encoding="utf-8",
        )
    return Path(output_dir)


def add_space_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder to copy in, or a Hub id (default {DEFAULT_MODEL})")
    parser.add_argument("--output_dir", required=True, help="the Space folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing Space folder written by this command")
    return parser


def run_space(args: argparse.Namespace) -> int:
    try:
        folder = write_space(args.model, args.output_dir, overwrite=args.overwrite)
    except (DemoModelMissing, FileExistsError) as error:
        print(f"dbeta export-space: {error}", file=sys.stderr)
        return 2
    print(f"dbeta export-space: wrote {folder} (app.py, requirements.txt, README.md, model)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
