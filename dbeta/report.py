"""A picture of one result: the 12-lead ECG on standard ECG paper with the model's top label scores.

    dbeta report RECORD --model MODEL --labels AFIB LBBB "sinus rhythm" ... --output report.png [--html report.html]

The ECG is drawn as a clinical printout: 25 mm/s, 10 mm/mV, a 1 mm grid with 5 mm major lines, a
1 mV x 0.2 s calibration pulse on every row, the standard 3 x 4 layout (I, II, III | aVR, aVL, aVF
| V1-V3 | V4-V6, 2.5 s each) and a 10 s lead II rhythm strip. The figure is sized so the grid is
at true scale when the image is printed at 100 % (its DPI is set in the file). The traces are
the model's input: the record as `DBetaFeatureExtractor` prepares it (first 10 s, resampled to
500 Hz, millivolts; leads the record lacks are zero and marked "absent"). Beside the ECG: the
top label scores (zero-shot sigmoid scores, best first) and the record's metadata.

matplotlib draws it (a `train` dependency). `ecg_plot` (PyPI) was considered: its PNG output
needs CairoSVG and the system cairo library, and a side panel of scores would be drawn with
matplotlib anyway, so the few lines of grid drawing are kept here instead.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dbeta.files import write_bytes, write_text

PAPER_SPEED_MM_PER_S = 25.0
GAIN_MM_PER_MV = 10.0
#: The 3 x 4 layout: columns of three leads, 2.5 s each.
LAYOUT = (("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6"))
RHYTHM_LEAD = "II"
COLUMN_SECONDS = 2.5
ROW_HEIGHT_MM = 35.0
LEFT_MARGIN_MM = 10.0  # calibration pulses
TOP_MARGIN_MM = 5.0
MINOR_COLOR = "#f6c6c6"
MAJOR_COLOR = "#e58c8c"


def _grid(ax, width_mm: float, height_mm: float) -> None:
    from matplotlib.collections import LineCollection

    for step, color, linewidth in ((1.0, MINOR_COLOR, 0.3), (5.0, MAJOR_COLOR, 0.6)):
        xs = np.arange(0.0, width_mm + 1e-6, step)
        ys = np.arange(0.0, height_mm + 1e-6, step)
        segments = [((x, 0.0), (x, height_mm)) for x in xs] + [((0.0, y), (width_mm, y)) for y in ys]
        ax.add_collection(LineCollection(segments, colors=color, linewidths=linewidth, zorder=0))


def _calibration(ax, x0: float, baseline: float) -> None:
    # 1 mV (10 mm) high, 0.2 s (5 mm) wide, with 2.5 mm of baseline either side.
    xs = np.array([0.0, 2.5, 2.5, 7.5, 7.5, 10.0]) + x0 - LEFT_MARGIN_MM
    ys = np.array([0.0, 0.0, GAIN_MM_PER_MV, GAIN_MM_PER_MV, 0.0, 0.0]) + baseline
    ax.plot(xs, ys, color="black", linewidth=0.8, zorder=3)


def draw_ecg(
    ax,
    signal: np.ndarray,
    lead_names: Sequence[str],
    sampling_rate: float,
    absent: Sequence[str] = (),
    derived: Sequence[str] = (),
) -> None:
    """Draw a (leads, samples) millivolt ECG on `ax` in paper millimetres (3 x 4 + rhythm strip)."""
    index = {name: row for row, name in enumerate(lead_names)}
    column_mm = COLUMN_SECONDS * PAPER_SPEED_MM_PER_S
    strip_seconds = min(signal.shape[1] / sampling_rate, 4 * COLUMN_SECONDS)
    width = LEFT_MARGIN_MM + 4 * column_mm
    height = TOP_MARGIN_MM + 4 * ROW_HEIGHT_MM
    _grid(ax, width, height)

    def trace(lead: str, start_s: float, seconds: float, x0: float, baseline: float) -> None:
        if lead not in index:
            ax.text(x0 + 2, baseline, f"{lead} not in record", fontsize=6, color="0.4", va="center")
            return
        first = int(round(start_s * sampling_rate))
        last = min(signal.shape[1], int(round((start_s + seconds) * sampling_rate)))
        values = signal[index[lead], first:last]
        times = np.arange(values.shape[0]) / sampling_rate
        ax.plot(
            x0 + times * PAPER_SPEED_MM_PER_S,
            baseline + values * GAIN_MM_PER_MV,
            color="black",
            linewidth=0.55,
            zorder=2,
            solid_joinstyle="round",
        )
        label = lead + (" (absent)" if lead in absent else " (derived)" if lead in derived else "")
        ax.text(x0 + 1.0, baseline + 7.0, label, fontsize=7, fontweight="bold", zorder=4)

    for row in range(3):
        baseline = height - TOP_MARGIN_MM - (row + 0.5) * ROW_HEIGHT_MM
        _calibration(ax, LEFT_MARGIN_MM, baseline)
        for column, leads in enumerate(LAYOUT):
            x0 = LEFT_MARGIN_MM + column * column_mm
            trace(leads[row], column * COLUMN_SECONDS, COLUMN_SECONDS, x0, baseline)
            if column:  # lead change marker
                ax.plot([x0, x0], [baseline - 3, baseline + 3], color="black", linewidth=0.8, zorder=3)
    baseline = height - TOP_MARGIN_MM - 3.5 * ROW_HEIGHT_MM
    _calibration(ax, LEFT_MARGIN_MM, baseline)
    trace(RHYTHM_LEAD, 0.0, strip_seconds, LEFT_MARGIN_MM, baseline)
    ax.text(
        width - 1,
        1.0,
        f"{PAPER_SPEED_MM_PER_S:g} mm/s   {GAIN_MM_PER_MV:g} mm/mV   {sampling_rate:g} Hz",
        fontsize=6,
        ha="right",
        va="bottom",
    )
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")


def _metadata_lines(metadata: Mapping[str, object]) -> list[str]:
    def clip(text: str) -> str:
        return text if len(text) <= 62 else text[:59] + "..."

    lines = []
    for key, value in metadata.items():
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, (list, tuple)) and any(len(str(item)) > 12 for item in value):
            # Long items (LUDB diagnosis lines) one per line, at most 8.
            lines.append(f"{key}:")
            lines += [clip(f"  {str(item).strip()}") for item in value[:8]]
            if len(value) > 8:
                lines.append(f"  (+{len(value) - 8} more)")
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(item) for item in value)
        lines.append(clip(f"{key}: {value}"))
    return lines


def render_report(
    signal: np.ndarray,
    lead_names: Sequence[str],
    sampling_rate: float,
    scores: Sequence[Mapping[str, float]],
    metadata: Mapping[str, object],
    output: str | Path | None = None,
    title: str | None = None,
    absent: Sequence[str] = (),
    dpi: int = 150,
    derived: Sequence[str] = (),
) -> bytes:
    """Render the report; write it to `output` (PNG) if given and return the PNG bytes.

    Text from the record and the labels is drawn as it is: `$...$` is not typeset as math.

    Args:
        signal: `(leads, samples)` in millivolts. lead_names: one canonical name per row (I, II,
            III, aVR, aVL, aVF, V1-V6). scores: `[{"label", "score"}]`, best first (as the
            pipeline returns them). metadata: shown as `key: value` lines.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    column_mm = COLUMN_SECONDS * PAPER_SPEED_MM_PER_S
    ecg_width_mm = LEFT_MARGIN_MM + 4 * column_mm
    ecg_height_mm = TOP_MARGIN_MM + 4 * ROW_HEIGHT_MM
    panel_mm = 95.0
    margin_mm = 6.0
    title_mm = 10.0
    width_mm = margin_mm + ecg_width_mm + margin_mm + panel_mm + margin_mm
    height_mm = title_mm + ecg_height_mm + margin_mm
    # Labels and header comments come from users and files: never parse them as mathtext/LaTeX
    # (read when each text is made and when it is drawn, so the setting spans both).
    plain_text = plt.rc_context({"text.parse_math": False, "text.usetex": False})
    plain_text.__enter__()
    figure = plt.figure(figsize=(width_mm / 25.4, height_mm / 25.4), dpi=dpi)
    try:
        # ECG axes: exactly ecg_width_mm x ecg_height_mm of the figure, so the grid is to scale.
        ax = figure.add_axes(
            (margin_mm / width_mm, margin_mm / height_mm, ecg_width_mm / width_mm, ecg_height_mm / height_mm)
        )
        draw_ecg(ax, signal, lead_names, sampling_rate, absent, derived)
        figure.text(
            margin_mm / width_mm,
            1 - 3.5 / height_mm,
            title or "D-BETA zero-shot report",
            fontsize=11,
            fontweight="bold",
            va="top",
        )

        panel_left = (2 * margin_mm + ecg_width_mm) / width_mm
        panel_width = panel_mm / width_mm
        bars = figure.add_axes((panel_left + 0.42 * panel_width, 0.50, 0.55 * panel_width, 0.40))
        shown = list(scores)
        labels = [str(item["label"]) for item in shown]
        values = [float(item["score"]) for item in shown]
        rows = max(len(shown), 8)  # bars keep their thickness however few labels there are
        positions = rows - 1 - np.arange(len(shown))
        bars.set_ylim(-0.6, rows - 0.4)
        bars.barh(positions, values, color="#3b6ea8", height=0.7)
        bars.set_yticks(positions, [label if len(label) <= 28 else label[:25] + "..." for label in labels], fontsize=7)
        # Sigmoid scores of a D-BETA are often all small (the ETS bias is negative): zoom the axis to
        # the best score then, so that the bars still show the ranking.
        upper = 1.0 if not values or max(values) >= 0.5 else max(1.25 * max(values), 1e-6)
        bars.set_xlim(0, upper)
        bars.tick_params(axis="x", labelsize=6)
        zoomed = "" if upper == 1.0 else f"\n(axis zoomed to 0-{upper:.2g})"
        bars.set_xlabel(f"score (sigmoid of the ECG-text logit){zoomed}", fontsize=6)
        bars.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        for position, value in zip(positions, values):
            inside = value > 0.82 * upper  # no room right of the bar: write inside it
            bars.text(
                value - 0.02 * upper if inside else value + 0.02 * upper,
                position,
                f"{value:.3f}",
                va="center",
                ha="right" if inside else "left",
                color="white" if inside else "black",
                fontsize=6,
            )
        bars.set_title(f"Top {len(shown)} labels", fontsize=9, loc="left")
        for side in ("top", "right"):
            bars.spines[side].set_visible(False)

        lines = _metadata_lines(metadata)
        figure.text(
            panel_left,
            0.40,
            "Record\n" + "\n".join(lines),
            fontsize=6.5,
            va="top",
            ha="left",
            family="monospace",
            linespacing=1.35,
        )
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    finally:
        plt.close(figure)
        plain_text.__exit__(None, None, None)
    data = buffer.getvalue()
    if output is not None:
        write_bytes(output, data)
    return data


def _shown(value: object) -> str:
    """A metadata value as text: lists (leads, skipped parts, diagnoses) joined, not as Python lists."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def write_html(path: str | Path, png: bytes, scores, metadata: Mapping[str, object], title: str) -> Path:
    """A self-contained HTML page: the report image (embedded), a score table and the metadata."""
    rows = "\n".join(
        f"<tr><td>{rank}</td><td>{html.escape(str(item['label']))}</td><td>{float(item['score']):.4f}</td></tr>"
        for rank, item in enumerate(scores, 1)
    )
    meta = "\n".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_shown(value))}</td></tr>"
        for key, value in metadata.items()
        if value not in (None, "", [])
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<img alt="12-lead ECG (25 mm/s, 10 mm/mV) with label scores"
 src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Label scores</h2><table><tr><th>#</th><th>label</th><th>score</th></tr>
{rows}
</table>
<h2>Record</h2><table>
{meta}
</table></body></html>
"""
    write_text(path, page)
    return Path(path)


def record_metadata(record, path: str, model: str, extra: Mapping[str, object] | None = None) -> dict:
    """The metadata lines shown for a record (name, source, rate, duration, demographics, labels)."""
    info = record.metadata or {}
    metadata = {
        "record": info.get("name") or Path(path).name,
        "file": str(path),
        "sampling rate": f"{float(record.sampling_rate):g} Hz",
        # The whole recording's length (only its start is read, shown and scored).
        "duration": f"{info.get('total_samples', record.num_samples) / float(record.sampling_rate):.1f} s (first 10 s shown and scored)",
        "leads": f"{record.num_leads}: {' '.join(str(name) for name in record.lead_names)}",
        # What clinical exports say about themselves (processing_dbeta's clinical readers).
        "format": f"{info['format']} (read with {info.get('reader')})" if info.get("format") else None,
        "device": info.get("device"),
        "acquired": info.get("acquisition_time"),
        "derived from I and II": info.get("derived_leads"),
        "skipped in file": info.get("skipped"),
        "notes": info.get("notes"),
        "age": info.get("age"),
        "sex": info.get("sex"),
        "Dx (SNOMED)": info.get("dx"),
        "diagnoses": info.get("diagnoses"),
        "model": model,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    metadata.update(extra or {})
    return metadata


def lead_roles(feature_extractor, record) -> tuple[list[str], list[str], list[str]]:
    """`(model lead order, absent leads, derived leads)` for a record, by the extractor's own rule
    (leads it zero-fills are absent; limb leads it computes from I and II are derived)."""
    from processing_dbeta import canonical_lead_name

    model_leads = [canonical_lead_name(name) for name in feature_extractor.lead_names]
    recorded = {canonical_lead_name(str(name)) for name in record.lead_names}
    _, holds_data = feature_extractor._arrange_leads(np.zeros((1, len(record.lead_names), 1)), list(record.lead_names))
    absent = [name for name, has in zip(model_leads, holds_data) if not has]
    derived = [name for name, has in zip(model_leads, holds_data) if has and name not in recorded]
    return model_leads, absent, derived


def report(
    record_path: str,
    model: str,
    labels: Sequence[str],
    output: str | Path,
    html_path: str | Path | None = None,
    top_k: int = 10,
    hypothesis_template: str = "{}",
    labels_are_codes: bool | None = None,
    device: str = "cpu",
    title: str | None = None,
    dpi: int = 150,
) -> list[dict]:
    """Score `record_path` with the zero-shot pipeline of `model` and draw the report. Returns the scores."""
    from pipeline_dbeta import ZeroShotECGClassificationPipeline

    from dbeta.loading import load_model_and_processor, model_label_descriptions

    loaded, processor = load_model_and_processor(model, device=device)
    record = processor.feature_extractor.read_file(record_path)  # what the model reads, not a 6 h file
    pipe = ZeroShotECGClassificationPipeline(
        model=loaded,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        device=loaded.device,
        label_descriptions=model_label_descriptions(model if Path(model).exists() else None),
    )
    scores = pipe(
        record,
        candidate_labels=list(labels),
        hypothesis_template=hypothesis_template,
        labels_are_codes=labels_are_codes,
        top_k=top_k,
    )
    feature_extractor = processor.feature_extractor
    values = feature_extractor(record)["input_values"][0]
    model_leads, absent, derived = lead_roles(feature_extractor, record)
    metadata = record_metadata(record, record_path, model)
    title = title or f"D-BETA zero-shot: {metadata['record']}"
    png = render_report(
        np.asarray(values),
        model_leads,
        float(feature_extractor.sampling_rate),
        scores,
        metadata,
        output,
        title=title,
        absent=absent,
        dpi=dpi,
        derived=derived,
    )
    if html_path is not None:
        write_html(html_path, png, scores, metadata, title)
    return scores


def add_arguments(parser):
    parser.add_argument(
        "record",
        help="an ECG record: WFDB/CinC .hea record (with or without .hea), a CPSC .mat, or a clinical export "
        "(DICOM waveform, GE MUSE / Philips / HL7 aECG XML, SCP-ECG, EDF, ISHNE; recognised by content)",
    )
    parser.add_argument("--model", required=True, help="D-BETA model folder (or Hub id)")
    parser.add_argument(
        "--labels", nargs="+", required=True, help="label codes (AFIB, LBBB, ...) and/or free-text descriptions"
    )
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--html", help="also write a self-contained HTML page here")
    parser.add_argument("--top_k", type=int, default=10, help="labels shown (best first)")
    parser.add_argument("--hypothesis_template", default="{}")
    parser.add_argument("--labels_are_codes", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--title")
    parser.add_argument("--dpi", type=int, default=150, help="image resolution (the grid is to scale at any DPI)")
    return parser


def run(args) -> int:
    import sys

    scores = report(
        args.record,
        args.model,
        args.labels,
        args.output,
        html_path=args.html,
        top_k=args.top_k,
        hypothesis_template=args.hypothesis_template,
        labels_are_codes={"auto": None, "yes": True, "no": False}[args.labels_are_codes],
        device=getattr(args, "device", "cpu"),
        title=args.title,
        dpi=args.dpi,
    )
    best = ", ".join(f"{item['label']} {item['score']:.3f}" for item in scores[:3])
    written = args.output + (f" and {args.html}" if args.html else "")
    print(f"dbeta: wrote {written} (top: {best})", file=sys.stderr)
    return 0
