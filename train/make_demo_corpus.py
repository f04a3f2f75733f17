"""Write a small, learnable ECG-report corpus in the exact MIMIC-IV-ECG v1.0 on-disk layout.

The corpus is simulated, so it can ship with tests and the README demo where MIMIC-IV-ECG (a
credentialed PhysioNet dataset) cannot. Each record is a 10 s, 500 Hz, 12-lead ECG produced by a
dipole ("heart vector") model: every beat is a sum of Gaussian waves (P, Q, R, S, T), each with a
3-D direction that is projected onto the 12 lead axes. The conditions listed in
:data:`DEMO_CONDITIONS` change the signal in the way a cardiologist would see them (heart rate,
RR irregularity and missing P waves with fibrillatory baseline, QRS amplitude, QRS width and
direction, T polarity), and the machine-style report states exactly what was simulated, one
statement per ``report_N`` column, as in MIMIC-IV-ECG.

Layout written (identical to the PhysioNet release)::

    out_dir/
      record_list.csv            subject_id, study_id, file_name, ecg_time, path
      machine_measurements.csv   subject_id, study_id, cart_id, ecg_time, report_0..report_17, ...
      files/p1000/p10000032/s40689238/40689238.hea|.dat
      demo_labels.csv            (extra) study_id + one 0/1 column per condition key

Usage::

    python train/make_demo_corpus.py --output_dir data/demo_mimic --num_records 2000 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dbeta.train.text import MIMIC_REPORT_COLUMNS

logger = logging.getLogger(__name__)

#: Condition key -> the report statement used for it (MIMIC-IV-ECG machine phrasing). The same
#: phrases serve as zero-shot prompts; each is a substring of the report line it produces.
DEMO_CONDITIONS: dict[str, str] = {
    "sinus_rhythm": "Sinus rhythm",
    "sinus_bradycardia": "Sinus bradycardia",
    "sinus_tachycardia": "Sinus tachycardia",
    "atrial_fibrillation": "Atrial fibrillation",
    "low_qrs_voltages": "Low QRS voltages",
    "left_bundle_branch_block": "Left bundle branch block",
    "inverted_t_waves": "Inverted T waves",
}
RHYTHM_CONDITIONS: tuple[str, ...] = (
    "sinus_rhythm",
    "sinus_bradycardia",
    "sinus_tachycardia",
    "atrial_fibrillation",
)
#: Probability of each rhythm (they are mutually exclusive).
RHYTHM_PROBABILITIES: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)
#: Independent probability of each morphology finding (LBBB and inverted T waves exclude each other:
#: LBBB already brings discordant T waves).
MORPHOLOGY_PROBABILITIES: dict[str, float] = {
    "low_qrs_voltages": 0.2,
    "left_bundle_branch_block": 0.15,
    "inverted_t_waves": 0.2,
}

MIMIC_LEAD_ORDER: tuple[str, ...] = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
SAMPLING_RATE = 500
NUM_SAMPLES = 5000
#: ADC gain of the written WFDB files (ADC units per mV); 200/mV is a 5 uV resolution.
ADC_GAIN = 200.0

#: The defects that ``num_corrupt_records`` cycles through, with the skip reason that data
#: preparation is expected to report for each.
CORRUPT_RECORD_KINDS: dict[str, str] = {
    "truncated_signal_file": "unreadable",
    "bad_header": "unreadable",
    "missing_signal_file": "missing_file",
    "nan_lead": "nan_values",
    "flat_lead": "flat_lead",
    "missing_lead": "missing_leads",
    "missing_report": "missing_report",
}

_TEMPLATE_START_S = -0.40  # beat template window, relative to the R peak
_TEMPLATE_END_S = 0.70


def _lead_axes() -> np.ndarray:
    """Unit-ish lead vectors (12, 3) in MIMIC order; axes x = left, y = inferior (feet), z = anterior."""
    frontal_degrees = {"I": 0.0, "II": 60.0, "III": 120.0, "aVR": -150.0, "aVF": 90.0, "aVL": -30.0}
    frontal_gain = {"I": 1.0, "II": 1.0, "III": 1.0, "aVR": 0.87, "aVF": 0.87, "aVL": 0.87}
    horizontal_degrees = {"V1": 115.0, "V2": 95.0, "V3": 75.0, "V4": 55.0, "V5": 30.0, "V6": 5.0}
    axes = []
    for lead in MIMIC_LEAD_ORDER:
        if lead in frontal_degrees:
            angle = np.deg2rad(frontal_degrees[lead])
            axes.append(frontal_gain[lead] * np.array([np.cos(angle), np.sin(angle), 0.0]))
        else:
            angle = np.deg2rad(horizontal_degrees[lead])
            axes.append(1.4 * np.array([np.cos(angle), 0.15, np.sin(angle)]))
    return np.stack(axes)


LEAD_AXES = _lead_axes()


@dataclass
class SimulatedECG:
    """One simulated record: the signal and what was simulated."""

    signal: np.ndarray  # float32 (12, NUM_SAMPLES), mV, MIMIC lead order
    conditions: list[str]
    report_lines: list[str]
    heart_rate_bpm: float
    qrs_duration_ms: float
    qrs_axis_degrees: float


def _rotation_frontal(angle_radians: float) -> np.ndarray:
    """Rotation about the antero-posterior (z) axis, i.e. within the frontal plane."""
    cos, sin = np.cos(angle_radians), np.sin(angle_radians)
    return np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])


def _gaussian(time_s: np.ndarray, centre_s: float, width_s: float) -> np.ndarray:
    return np.exp(-0.5 * ((time_s - centre_s) / width_s) ** 2)


def _sample_conditions(rng: np.random.Generator) -> list[str]:
    rhythm = RHYTHM_CONDITIONS[rng.choice(len(RHYTHM_CONDITIONS), p=RHYTHM_PROBABILITIES)]
    conditions = [rhythm]
    for key, probability in MORPHOLOGY_PROBABILITIES.items():
        if key == "inverted_t_waves" and "left_bundle_branch_block" in conditions:
            continue
        if rng.random() < probability:
            conditions.append(key)
    return conditions


def _beat_times(rng: np.random.Generator, rhythm: str, heart_rate_bpm: float) -> np.ndarray:
    """R-peak times (s), from before the start to after the end of the 10 s window."""
    mean_rr = 60.0 / heart_rate_bpm
    count = int(np.ceil((NUM_SAMPLES / SAMPLING_RATE + 2.0) / (0.5 * mean_rr))) + 2
    if rhythm == "atrial_fibrillation":
        # Irregularly irregular: independent RR intervals with a large spread.
        variation = rng.uniform(0.18, 0.3)
        rr = mean_rr * rng.lognormal(-0.5 * variation**2, variation, size=count)
        rr = np.clip(rr, 0.28, 2.0)
    else:
        # Sinus: regular, with slight respiratory modulation and jitter.
        phase = rng.uniform(0, 2 * np.pi)
        breathing = 0.03 * np.sin(phase + np.arange(count) * 2 * np.pi * mean_rr / rng.uniform(3.5, 5.5))
        rr = mean_rr * (1.0 + breathing + rng.normal(0.0, 0.01, size=count))
    return -1.0 - rng.uniform(0, mean_rr) + np.cumsum(rr)


def _beat_template(
    rng: np.random.Generator, conditions: list[str], mean_rr_s: float
) -> tuple[np.ndarray, dict[str, float]]:
    """Heart-vector waveform (3, W) of one beat around the R peak, plus a few measurements."""
    time_s = np.arange(int(_TEMPLATE_START_S * SAMPLING_RATE), int(_TEMPLATE_END_S * SAMPLING_RATE)) / SAMPLING_RATE
    rotation = _rotation_frontal(np.deg2rad(rng.normal(0.0, 12.0)))
    amplitude = rng.uniform(0.8, 1.25)
    if "low_qrs_voltages" in conditions:
        qrs_scale = rng.uniform(0.2, 0.3)
    else:
        qrs_scale = amplitude
    template = np.zeros((3, time_s.size))

    def add_wave(vector: tuple[float, float, float], centre_s: float, width_s: float, scale: float = 1.0) -> None:
        template[:] += scale * (rotation @ np.asarray(vector))[:, None] * _gaussian(time_s, centre_s, width_s)[None]

    qt_factor = np.sqrt(mean_rr_s)  # Bazett: the QT interval shortens as the heart rate rises
    if "atrial_fibrillation" not in conditions:
        pr_interval = rng.uniform(0.13, 0.19)
        add_wave((0.07, 0.12, 0.04), -pr_interval, 0.022, amplitude)  # P wave
    if "left_bundle_branch_block" in conditions:
        # Right-to-left septal activation and slow left-ventricular depolarisation: no septal q,
        # a broad notched R in I/aVL/V5/V6, a deep broad QS in V1, and discordant T waves.
        qrs_width = rng.uniform(0.135, 0.165)
        main = np.array((0.85, 0.25, -0.75))
        add_wave(tuple(main), -0.25 * qrs_width, 0.16 * qrs_width, qrs_scale * 1.1)
        add_wave(tuple(main * np.array((1.0, 0.6, 1.1))), 0.25 * qrs_width, 0.16 * qrs_width, qrs_scale * 1.0)
        t_vector = -0.35 * main / np.linalg.norm(main)
        add_wave(tuple(t_vector), 0.30 * qt_factor + 0.03, 0.06 * qt_factor, amplitude)
    else:
        qrs_width = rng.uniform(0.08, 0.1)
        add_wave((-0.15, 0.0, 0.2), -0.3 * qrs_width, 0.08 * qrs_width, qrs_scale)  # septal q / r in V1
        add_wave((0.65, 0.85, -0.35), 0.0, 0.11 * qrs_width, qrs_scale)  # R
        add_wave((-0.25, -0.25, -0.35), 0.3 * qrs_width, 0.09 * qrs_width, qrs_scale)  # S
        t_vector = np.array((0.22, 0.22, 0.12))
        if "inverted_t_waves" in conditions:
            t_vector = -t_vector * rng.uniform(1.0, 1.5)
        t_scale = amplitude * (0.7 if "low_qrs_voltages" in conditions else 1.0)
        # An asymmetric T wave: slow upstroke, faster downstroke.
        t_peak = 0.28 * qt_factor
        add_wave(tuple(t_vector), t_peak - 0.03, 0.055 * qt_factor, t_scale * 0.6)
        add_wave(tuple(t_vector), t_peak + 0.01, 0.035 * qt_factor, t_scale * 0.6)
    frontal = rotation @ np.array((0.65, 0.85, 0.0))
    measurements = {
        "qrs_duration_ms": 1000.0 * qrs_width,
        "qrs_axis_degrees": float(np.rad2deg(np.arctan2(frontal[1], frontal[0]))),
    }
    return template, measurements


def _noise(rng: np.random.Generator, num_leads: int) -> np.ndarray:
    """White noise, baseline wander and (sometimes) mains interference, per lead (mV)."""
    time_s = np.arange(NUM_SAMPLES) / SAMPLING_RATE
    noise = rng.normal(0.0, rng.uniform(0.005, 0.025), size=(num_leads, NUM_SAMPLES))
    for _ in range(2):
        frequency = rng.uniform(0.05, 0.5, size=(num_leads, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(num_leads, 1))
        noise += rng.uniform(0.0, 0.2, size=(num_leads, 1)) * np.sin(2 * np.pi * frequency * time_s + phase)
    if rng.random() < 0.2:
        mains = rng.choice([50.0, 60.0])
        noise += rng.uniform(0.005, 0.02) * np.sin(2 * np.pi * mains * time_s + rng.uniform(0, 2 * np.pi))
    return noise


def _fibrillatory_waves(rng: np.random.Generator) -> np.ndarray:
    """Atrial f-waves (3, N): a few 4-9 Hz oscillations with drifting amplitude, strongest in V1."""
    time_s = np.arange(NUM_SAMPLES) / SAMPLING_RATE
    waves = np.zeros(NUM_SAMPLES)
    for _ in range(3):
        frequency = rng.uniform(4.0, 9.0)
        envelope = 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * time_s + rng.uniform(0, 2 * np.pi))
        waves += envelope * np.sin(2 * np.pi * frequency * time_s + rng.uniform(0, 2 * np.pi))
    waves *= rng.uniform(0.03, 0.06)
    direction = np.array((-0.3, 0.5, 0.8))
    return direction[:, None] * waves[None]


def _report_lines(conditions: list[str], heart_rate_bpm: float) -> list[str]:
    lines = []
    for key in conditions:
        line = DEMO_CONDITIONS[key]
        if key == "atrial_fibrillation" and heart_rate_bpm > 100:
            line += " with rapid ventricular response"
        lines.append(line)
    if conditions == ["sinus_rhythm"]:
        lines.append("Normal ECG")
    elif len(conditions) == 1 and conditions[0] in ("sinus_bradycardia", "sinus_tachycardia"):
        lines.append("Borderline ECG")
    else:
        lines.append("Abnormal ECG")
    return lines


def simulate_ecg(rng: np.random.Generator, conditions: list[str] | None = None) -> SimulatedECG:
    """Simulate one 10 s 12-lead ECG (mV, MIMIC lead order) with the given (or random) conditions."""
    conditions = list(conditions) if conditions is not None else _sample_conditions(rng)
    rhythm = next(key for key in conditions if key in RHYTHM_CONDITIONS)
    heart_rate = {
        "sinus_rhythm": lambda: rng.uniform(62.0, 98.0),
        "sinus_bradycardia": lambda: rng.uniform(40.0, 56.0),
        "sinus_tachycardia": lambda: rng.uniform(105.0, 150.0),
        "atrial_fibrillation": lambda: rng.uniform(65.0, 135.0),
    }[rhythm]()
    beats_s = _beat_times(rng, rhythm, heart_rate)
    template, measurements = _beat_template(rng, conditions, 60.0 / heart_rate)

    # Place one template per beat (slightly varying amplitude) in a padded 3-D heart-vector trace.
    offset = -int(_TEMPLATE_START_S * SAMPLING_RATE)
    width = template.shape[1]
    padded = np.zeros((3, NUM_SAMPLES + 2 * width))
    starts = np.round(beats_s * SAMPLING_RATE).astype(int) - offset + width
    beat_scales = rng.normal(1.0, 0.03, size=starts.size)
    for start, scale in zip(starts, beat_scales):
        if 0 <= start <= padded.shape[1] - width:
            padded[:, start : start + width] += scale * template
    heart_vector = padded[:, width : width + NUM_SAMPLES]
    if rhythm == "atrial_fibrillation":
        heart_vector = heart_vector + _fibrillatory_waves(rng)

    signal = LEAD_AXES @ heart_vector + _noise(rng, len(MIMIC_LEAD_ORDER))
    inside = beats_s[(beats_s >= 0) & (beats_s < NUM_SAMPLES / SAMPLING_RATE)]
    measured_rate = 60.0 / float(np.mean(np.diff(inside))) if inside.size > 1 else heart_rate
    return SimulatedECG(
        signal=signal.astype(np.float32),
        conditions=conditions,
        report_lines=_report_lines(conditions, measured_rate),
        heart_rate_bpm=measured_rate,
        qrs_duration_ms=measurements["qrs_duration_ms"],
        qrs_axis_degrees=measurements["qrs_axis_degrees"],
    )


def mimic_relative_path(subject_id: int, study_id: int) -> str:
    """``files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN``, the ``path`` column of ``record_list.csv``."""
    subject = str(subject_id)
    return f"files/p{subject[:4]}/p{subject}/s{study_id}/{study_id}"


def _write_wfdb(directory: Path, record_name: str, signal_mv: np.ndarray, lead_names: list[str]) -> None:
    """Write a WFDB format-16 record (``.hea`` + ``.dat``), byte-identical to ``wfdb.wrsamp``.

    ``wfdb.wrsamp`` spends ~45 ms per record validating header fields; this writer produces the same
    bytes (the test suite compares them) in well under a millisecond, which keeps a 2000-record
    corpus under a minute on two cores. NaN samples become the format-16 invalid value -32768.
    """
    directory.mkdir(parents=True, exist_ok=True)
    num_leads, num_samples = signal_mv.shape
    scaled = np.round(signal_mv.astype(np.float64) * ADC_GAIN)
    digital = np.where(np.isnan(scaled), -32768, scaled).astype(np.int64)
    if digital.max(initial=0) > 32767 or digital.min(initial=0) < -32768:
        raise ValueError(f"Signal exceeds the format-16 range at gain {ADC_GAIN}/mV")
    checksums = digital.sum(axis=1) % 65536
    lines = [f"{record_name} {num_leads} {SAMPLING_RATE} {num_samples}"]
    for lead in range(num_leads):
        lines.append(
            f"{record_name}.dat 16 {ADC_GAIN}(0)/mV 16 0 {digital[lead, 0]} {checksums[lead]} 0 {lead_names[lead]}"
        )
    (directory / f"{record_name}.hea").write_text("\n".join(lines) + "\n")
    # Format 16: little-endian int16, samples interleaved (sample-major).
    (directory / f"{record_name}.dat").write_bytes(digital.T.astype("<i2").tobytes())


def _corrupt(kind: str, signal: np.ndarray) -> tuple[np.ndarray, list[str], bool]:
    """Apply a defect; returns the signal and lead names to write and whether to write files at all."""
    lead_names = list(MIMIC_LEAD_ORDER)
    if kind == "nan_lead":
        signal = signal.copy()
        signal[3] = np.nan
    elif kind == "flat_lead":
        signal = signal.copy()
        signal[7] = 0.0
    elif kind == "missing_lead":
        signal = np.delete(signal, 8, axis=0)
        lead_names.pop(8)
    return signal, lead_names, kind != "missing_signal_file"


def _damage_files(kind: str, record_dir: Path, record_name: str) -> None:
    if kind == "truncated_signal_file":
        data_file = record_dir / f"{record_name}.dat"
        data_file.write_bytes(data_file.read_bytes()[:1000])
    elif kind == "bad_header":
        (record_dir / f"{record_name}.hea").write_text("this is not a WFDB header\n")


def make_demo_corpus(
    out_dir: str | os.PathLike,
    num_records: int = 2000,
    num_subjects: int | None = None,
    seed: int = 0,
    num_corrupt_records: int = 0,
) -> Path:
    """Write a simulated corpus in the MIMIC-IV-ECG layout and return its root folder.

    Args:
        out_dir: Folder to create (existing files with the same names are overwritten).
        num_records: Number of valid studies.
        num_subjects: Number of distinct patients (default: ``max(1, num_records // 3)``); each
            study belongs to one of them, so patients have several ECGs as in MIMIC.
        seed: Everything written is a function of the seed (and the counts).
        num_corrupt_records: Extra studies with one defect each, cycling through
            :data:`CORRUPT_RECORD_KINDS`; they are listed in ``corrupt_records.csv`` (study_id,
            kind, expected skip reason), to test data preparation.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = num_records + num_corrupt_records
    num_subjects = num_subjects or max(1, num_records // 3)
    corpus_rng = np.random.default_rng([seed, 0])
    subject_ids = 10_000_000 + np.sort(corpus_rng.choice(9_000_000, size=num_subjects, replace=False))
    record_subjects = subject_ids[corpus_rng.integers(0, num_subjects, size=total)]
    study_ids = 40_000_000 + corpus_rng.choice(20_000_000, size=total, replace=False)
    start = np.datetime64("2110-01-01T00:00:00")
    ecg_times = start + corpus_rng.integers(0, 60 * 60 * 24 * 365 * 10, size=total).astype("timedelta64[s]")

    record_rows, measurement_rows, label_rows, corrupt_rows = [], [], [], []
    corrupt_kinds = list(CORRUPT_RECORD_KINDS)
    for index in range(total):
        record_rng = np.random.default_rng([seed, 1, index])
        simulated = simulate_ecg(record_rng)
        subject_id, study_id = int(record_subjects[index]), int(study_ids[index])
        relative = mimic_relative_path(subject_id, study_id)
        record_dir = out_dir / Path(relative).parent
        record_name = str(study_id)
        ecg_time = str(ecg_times[index]).replace("T", " ")
        report_lines = simulated.report_lines

        kind = corrupt_kinds[(index - num_records) % len(corrupt_kinds)] if index >= num_records else None
        signal, lead_names, write_files = simulated.signal, list(MIMIC_LEAD_ORDER), True
        if kind is not None:
            signal, lead_names, write_files = _corrupt(kind, signal)
            corrupt_rows.append({"study_id": study_id, "kind": kind, "expected_reason": CORRUPT_RECORD_KINDS[kind]})
            if kind == "missing_report":
                report_lines = []
        if write_files:
            _write_wfdb(record_dir, record_name, signal, lead_names)
            if kind is not None:
                _damage_files(kind, record_dir, record_name)

        record_rows.append(
            {"subject_id": subject_id, "study_id": study_id, "file_name": record_name, "ecg_time": ecg_time, "path": relative}
        )
        measurement = {"subject_id": subject_id, "study_id": study_id, "cart_id": 6000 + index % 7, "ecg_time": ecg_time}
        for column, line in zip(MIMIC_REPORT_COLUMNS, report_lines + [""] * len(MIMIC_REPORT_COLUMNS)):
            measurement[column] = line
        measurement.update(
            {
                "bandwidth": "0.005-150 Hz",
                "filtering": "60 Hz notch Baseline filter",
                "rr_interval": int(round(60_000.0 / simulated.heart_rate_bpm)),
                "qrs_onset": 240,
                "qrs_end": 240 + int(round(simulated.qrs_duration_ms)),
                "qrs_axis": int(round(simulated.qrs_axis_degrees)),
            }
        )
        measurement_rows.append(measurement)
        if kind is None:
            label_rows.append({"study_id": study_id, **{key: int(key in simulated.conditions) for key in DEMO_CONDITIONS}})

    _write_csv(out_dir / "record_list.csv", record_rows)
    _write_csv(out_dir / "machine_measurements.csv", measurement_rows)
    _write_csv(out_dir / "demo_labels.csv", label_rows, fieldnames=["study_id", *DEMO_CONDITIONS])
    if corrupt_rows:
        _write_csv(out_dir / "corrupt_records.csv", corrupt_rows)
    return out_dir


def _write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    fieldnames = fieldnames or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="Folder to write the corpus to.")
    parser.add_argument("--num_records", type=int, default=2000)
    parser.add_argument("--num_subjects", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_corrupt_records", type=int, default=0, help="Extra defective studies, for tests.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    root = make_demo_corpus(args.output_dir, args.num_records, args.num_subjects, args.seed, args.num_corrupt_records)
    logger.info("Wrote %d simulated studies to %s in %.1f s", args.num_records, root, time.perf_counter() - started)


if __name__ == "__main__":
    main()
