"""Write a small, learnable ECG-report corpus in the exact MIMIC-IV-ECG v1.0 on-disk layout.

The corpus is simulated, so it can ship with tests and the README demo where MIMIC-IV-ECG (a
credentialed PhysioNet dataset) cannot. Each record is a 10 s, 500 Hz, 12-lead ECG made by a
cardiac dipole ("heart vector") model:

* **Rhythm physiology.** Atrial and ventricular activity are generated separately. Sinus rhythms
  have a P wave before every QRS (PR 120-200 ms), respiratory sinus arrhythmia and beat-to-beat
  jitter; atrial fibrillation has no P waves, irregularly irregular RR intervals and a
  fibrillatory baseline (350-600 /min f waves, fine to coarse); atrial flutter has a sawtooth
  F-wave trace at 240-340 /min (negative in the inferior leads, positive in V1) with 2:1, 3:1, 4:1
  or variable conduction; marked sinus arrhythmia (reported, not a zero-shot label) is irregular
  *with* P waves. Rates follow the clinical definitions (brady < 60, tachy > 100); atrial
  fibrillation's overlap the sinus rates, so that irregularity, not speed, marks it.
* **12-lead morphology.** Every wave (P, septal q, R, S, T; F and f waves) is a 3-D vector times
  a Gaussian pulse; the vectorcardiogram is projected onto the lead vectors of the six limb leads
  (Einthoven/Goldberger: III = II - I, aVR = -(I + II) / 2, ...) and the six precordial leads. The
  QRS axis (frontal and horizontal), the R/S balance, the QRS width, the T vector, the P wave and
  the amplitudes vary from patient to patient; QT follows Bazett.
* **Real noise.** Noise is added per electrode (RA, LA, LL, V1-V6), so the lead relations hold as
  in a real recording: respiratory baseline wander, EMG (band-limited, bursty), 50/60 Hz mains
  and occasional electrode-motion transients, at levels calibrated on the shared real records
  (see `../shared/notes/real-vs-simulated.md`).
* **Amplitude variability.** A share of the records (:data:`LEAD_NORMALISED_FRACTION`) has every
  lead scaled to 1 mV peak-to-peak, as some exports (LUDB v1.0.1) are; the model must not rely on
  absolute amplitude alone.
* **Real beats.** In 80 % of the records (:data:`REAL_MORPHOLOGY_FRACTION`) the P wave and the
  QRS-T complex are not Gaussians but the median beat of a real patient: one of the regular sinus
  records of the vendored LUDB *training* part (:func:`real_beat_library`; the evaluation patients
  are never used), split in the PR segment, with its ST-T stretched to the simulated RR interval
  (Bazett). The rhythm (beat times, P waves or f/F waves, ectopics) and the noise are simulated as
  above, so the labels stay exact while the morphology is real.

The conditions in :data:`DEMO_CONDITIONS` change the signal as a cardiologist would see them,
and the report states what was simulated, in the phrasing of MIMIC-IV-ECG machine statements or
of LUDB cardiologist lines ("Rhythm: Sinus bradycardia."), with synonyms (e.g. "Normal sinus
rhythm", "Atrial fibrillation with rapid ventricular response", "Atrial flutter with 2:1 A-V
conduction"), one statement per ``report_N`` column as in MIMIC-IV-ECG. Every report contains
the canonical phrase of each of its conditions (case-insensitively), which the zero-shot
validation uses as its label.

Layout written (identical to the PhysioNet release)::

    out_dir/
      record_list.csv            subject_id, study_id, file_name, ecg_time, path
      machine_measurements.csv   subject_id, study_id, cart_id, ecg_time, report_0..report_17, ...
      files/p1000/p10000032/s40689238/40689238.hea|.dat
      demo_labels.csv            (extra) study_id + one 0/1 column per condition key

Usage::

    python train/demo/make_demo_corpus.py --output_dir data/demo_mimic --num_records 2000 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dbeta.text import MIMIC_REPORT_COLUMNS
from dbeta.workers import map_in_workers

logger = logging.getLogger(__name__)

#: Condition key -> its canonical report statement (MIMIC-IV-ECG machine phrasing). The same
#: phrases serve as zero-shot prompts; every report of a condition contains its phrase
#: (case-insensitively), possibly inside a longer synonym statement.
DEMO_CONDITIONS: dict[str, str] = {
    "sinus_rhythm": "Sinus rhythm",
    "sinus_bradycardia": "Sinus bradycardia",
    "sinus_tachycardia": "Sinus tachycardia",
    "atrial_fibrillation": "Atrial fibrillation",
    "atrial_flutter": "Atrial flutter",
    "low_qrs_voltages": "Low QRS voltages",
    "left_bundle_branch_block": "Left bundle branch block",
    "inverted_t_waves": "Inverted T waves",
}
RHYTHM_CONDITIONS: tuple[str, ...] = (
    "sinus_rhythm",
    "sinus_bradycardia",
    "sinus_tachycardia",
    "atrial_fibrillation",
    "atrial_flutter",
    # Reported but not one of DEMO_CONDITIONS: an irregular rhythm *with* P waves, so that the
    # model cannot read "irregular RR" alone as atrial fibrillation.
    "sinus_arrhythmia",
)
#: Statement of each rhythm (the DEMO_CONDITIONS phrase where it has one).
RHYTHM_NAMES: dict[str, str] = {
    **{key: phrase for key, phrase in DEMO_CONDITIONS.items() if key in RHYTHM_CONDITIONS},
    "sinus_arrhythmia": "Sinus arrhythmia",
}
#: Probability of each rhythm (they are mutually exclusive).
RHYTHM_PROBABILITIES: tuple[float, ...] = (0.30, 0.17, 0.16, 0.17, 0.12, 0.08)
#: Rhythms with a sinus P wave before each QRS complex.
SINUS_RHYTHMS: tuple[str, ...] = ("sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "sinus_arrhythmia")
#: Independent probability of each morphology finding (LBBB and inverted T waves exclude each other:
#: LBBB already brings discordant T waves).
MORPHOLOGY_PROBABILITIES: dict[str, float] = {
    "low_qrs_voltages": 0.15,
    "left_bundle_branch_block": 0.12,
    "inverted_t_waves": 0.15,
    # Reported but not one of DEMO_CONDITIONS: conduction variety that the rhythm must be read through.
    "right_bundle_branch_block": 0.08,
}
#: Columns of demo_labels.csv: the scored conditions, then the unscored rhythms.
LABEL_COLUMNS: tuple[str, ...] = (*DEMO_CONDITIONS, *(key for key in RHYTHM_CONDITIONS if key not in DEMO_CONDITIONS))
#: Share of sinus-rhythm records with ventricular extrasystoles (1-2 premature ventricular complexes).
ECTOPIC_FRACTION = 0.12
#: Share of records band-limited as ECG carts do (low-pass 35-100 Hz; some also high-pass 0.5 Hz).
FILTERED_FRACTION = 0.5
#: Share of records with every lead scaled to 1 mV peak-to-peak (as LUDB v1.0.1 is published).
LEAD_NORMALISED_FRACTION = 0.5
#: Share of records whose beats are real: the P wave and QRS-T complex are one patient's median
#: beat from the vendored LUDB training part (never from the evaluation part), re-timed to the
#: simulated rhythm. The dipole model alone gives every patient the same few Gaussian waves, and a
#: model trained on it reads the rate of dipole beats only (its bradycardia score follows the rate
#: with Spearman -0.68 on dipole records, -0.2 on real-beat ones and -0.09 on real ECGs). The
#: rest keep the dipole model, which carries every simulated morphology finding (real beats carry
#: two of them, `REAL_BEAT_FINDINGS`). On seed 0, 0.5 gave real macro AUROC 0.72 and 0.8 gave 0.85 (1 thread) / 0.76
#: (2 threads); the README's sim-to-real table has every run.
REAL_MORPHOLOGY_FRACTION = 0.8
#: Morphology findings a real-beat record can carry, made from the source patient's own beat:
#: low QRS voltages (the QRS scaled to 0.2-0.35 of its size, the T wave to 0.6) and inverted T
#: waves (the ST-T part negated). Without them the findings live only in the dipole records, and a
#: model learns them as "dipole beat with X" rather than X. Bundle branch blocks need a new
#: activation sequence, which a recorded beat cannot be given, so they stay dipole-only.
REAL_BEAT_FINDINGS: tuple[str, ...] = ("low_qrs_voltages", "inverted_t_waves")
#: Share of reports written in LUDB's cardiologist style instead of the machine style.
CARDIOLOGIST_STYLE_FRACTION = 0.3
#: Share of machine-style reports without the closing "Normal/Borderline/Abnormal ECG" statement.
SHORT_REPORT_FRACTION = 0.25

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

_TEMPLATE_START_S = -0.35  # QRS-T template window, relative to the R peak
_TEMPLATE_END_S = 0.75
_PAD_S = 2.0  # simulated before and after the 10 s window
#: Heart-rate ranges (/min) per rhythm; flutter's follows from its atrial rate and conduction.
RATE_RANGES: dict[str, tuple[float, float]] = {
    "sinus_rhythm": (60.0, 99.0),
    "sinus_bradycardia": (38.0, 58.0),
    "sinus_tachycardia": (102.0, 150.0),
    "atrial_fibrillation": (50.0, 160.0),
    "sinus_arrhythmia": (55.0, 100.0),
}
#: Median ventricular rate of atrial fibrillation (/min). Rate-controlled AF overlaps the sinus
#: rates (LUDB's AF records run at 62-101 /min), so that its irregularity, not its rate, tells it
#: apart; a faster median teaches "fast = AF".
AF_MEDIAN_RATE = 80.0
#: Depth of the respiratory RR modulation: ordinary sinus rhythm, and marked sinus arrhythmia
#: (RR coefficient of variation about 0.06-0.14, as LUDB's sinus-arrhythmia records).
SINUS_MODULATION_DEPTH = (0.0, 0.045)
MARKED_SINUS_ARRHYTHMIA_DEPTH = (0.09, 0.2)

#: Precordial electrode directions in the horizontal plane (degrees from the patient's left,
#: towards anterior), and their lead gain relative to the limb leads.
_PRECORDIAL_DEGREES = (115.0, 95.0, 75.0, 55.0, 30.0, 5.0)
_PRECORDIAL_GAIN = 1.7


def _heart_vector_to_electrodes(heart_vector: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Electrode potentials (9, N) for RA, LA, LL, V1-V6 (relative to the body's mean potential).

    Axes: x = the patient's left, y = inferior (feet), z = anterior. The limb electrodes sit on an
    equilateral (Einthoven) triangle; the precordial electrodes look at the heart from their
    horizontal-plane angle (jittered per patient: electrode placement), slightly from above.
    """
    x, y, z = heart_vector
    # Einthoven triangle: RA at -150 deg, LA at -30 deg, LL at 90 deg (frontal plane), radius 1/sqrt(3).
    limb = []
    for degrees in (-150.0, -30.0, 90.0):
        angle = np.deg2rad(degrees)
        limb.append((np.cos(angle) * x + np.sin(angle) * y) / np.sqrt(3.0))
    precordial = []
    jitter = rng.normal(0.0, 6.0, size=6)
    for degrees, shift in zip(_PRECORDIAL_DEGREES, jitter):
        angle = np.deg2rad(degrees + shift)
        precordial.append(_PRECORDIAL_GAIN * (np.cos(angle) * x + 0.1 * y + np.sin(angle) * z))
    return np.stack(limb + precordial)


def electrodes_to_leads(electrodes: np.ndarray) -> np.ndarray:
    """The 12 leads (MIMIC order) from RA, LA, LL, V1-V6 electrode potentials (9, N)."""
    ra, la, ll = electrodes[:3]
    wilson = (ra + la + ll) / 3.0
    leads = [
        la - ra,  # I
        ll - ra,  # II
        ll - la,  # III
        ra - (la + ll) / 2.0,  # aVR
        ll - (ra + la) / 2.0,  # aVF
        la - (ra + ll) / 2.0,  # aVL
    ]
    leads += [electrodes[3 + index] - wilson for index in range(6)]
    return np.stack(leads)


def _lead_axes() -> np.ndarray:
    """Lead vectors (12, 3) in MIMIC order without electrode-placement jitter: lead = axis . heart vector."""
    limb = [np.array([np.cos(np.deg2rad(d)), np.sin(np.deg2rad(d)), 0.0]) / np.sqrt(3.0) for d in (-150.0, -30.0, 90.0)]
    precordial = [_PRECORDIAL_GAIN * np.array([np.cos(np.deg2rad(d)), 0.1, np.sin(np.deg2rad(d))]) for d in _PRECORDIAL_DEGREES]
    return electrodes_to_leads(np.stack(limb + precordial))  # (9, 3) electrode rows -> (12, 3)


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
    #: R-peak times (s) inside the 10 s window, and whether P waves precede the QRS complexes.
    r_peaks_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    has_p_waves: bool = True
    lead_normalised: bool = False
    #: The LUDB training record whose median beat the record is built from (None: the dipole model).
    real_beat_record: str | None = None


def _rotation(axis: int, angle_radians: float) -> np.ndarray:
    cos, sin = np.cos(angle_radians), np.sin(angle_radians)
    i, j = [k for k in range(3) if k != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = cos, -sin, sin, cos
    return matrix


def _gaussian(time_s: np.ndarray, centre_s: float, width_s: float) -> np.ndarray:
    return np.exp(-0.5 * ((time_s - centre_s) / width_s) ** 2)


def _sample_conditions(rng: np.random.Generator) -> list[str]:
    rhythm = RHYTHM_CONDITIONS[rng.choice(len(RHYTHM_CONDITIONS), p=RHYTHM_PROBABILITIES)]
    conditions = [rhythm]
    for key, probability in MORPHOLOGY_PROBABILITIES.items():
        if key in ("inverted_t_waves", "right_bundle_branch_block") and "left_bundle_branch_block" in conditions:
            continue
        if rng.random() < probability:
            conditions.append(key)
    return conditions


def _sinus_beats(
    rng: np.random.Generator, heart_rate_bpm: float, duration_s: float, depth_range: tuple[float, float] = SINUS_MODULATION_DEPTH
) -> np.ndarray:
    """R-peak times of a sinus rhythm: respiratory modulation (sinus arrhythmia) plus jitter."""
    mean_rr = 60.0 / heart_rate_bpm
    breathing_period = rng.uniform(3.0, 6.0)
    depth = rng.uniform(*depth_range)
    phase = rng.uniform(0, 2 * np.pi)
    jitter = rng.uniform(0.006, 0.02)
    times, t = [], -_PAD_S + rng.uniform(0, mean_rr)
    while t < duration_s + _PAD_S:
        times.append(t)
        rr = mean_rr * (1.0 + depth * np.sin(2 * np.pi * t / breathing_period + phase) + rng.normal(0.0, jitter))
        t += max(rr, 0.25)
    return np.array(times)


def _fibrillation_beats(rng: np.random.Generator, heart_rate_bpm: float, duration_s: float) -> np.ndarray:
    """Irregularly irregular RR intervals: independent draws, coefficient of variation 0.12-0.35,
    never shorter than the AV node's refractory period (~0.28 s)."""
    mean_rr = 60.0 / heart_rate_bpm
    variation = rng.uniform(0.12, 0.35)
    times, t = [], -_PAD_S + rng.uniform(0, mean_rr)
    while t < duration_s + _PAD_S:
        times.append(t)
        rr = mean_rr * rng.lognormal(-0.5 * variation**2, variation)
        t += float(np.clip(rr, 0.28, 2.2))
    return np.array(times)


def _flutter(rng: np.random.Generator, duration_s: float, time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(R-peak times, atrial F-wave trace (3, N), conduction statement) of typical atrial flutter."""
    atrial_cycle = 60.0 / rng.uniform(240.0, 340.0)
    conduction = rng.choice(["2:1", "3:1", "4:1", "variable"], p=[0.45, 0.1, 0.2, 0.25])
    # The F-wave trace: a sawtooth (slow descent, quick rise) smoothed by a short Gaussian.
    phase = (time_s / atrial_cycle + rng.uniform(0, 1)) % 1.0
    sawtooth = np.where(phase < 0.75, 1.0 - phase / 0.75 * 2.0, -1.0 + (phase - 0.75) / 0.25 * 2.0)
    kernel = _gaussian(np.arange(-25, 26) / SAMPLING_RATE, 0.0, 0.012)
    sawtooth = np.convolve(sawtooth, kernel / kernel.sum(), mode="same")
    # Counter-clockwise typical flutter: negative in II, III, aVF (superior vector), positive in V1.
    direction = np.array((rng.normal(-0.05, 0.05), -1.0, rng.uniform(0.3, 0.8)))
    trace = rng.uniform(0.08, 0.2) * direction[:, None] * sawtooth[None]
    # Ventricular beats: every k-th flutter wave, after a fixed conduction delay.
    delay = rng.uniform(0.18, 0.3)
    waves = np.arange(-_PAD_S, duration_s + _PAD_S, atrial_cycle)
    if conduction == "variable":
        ratios = rng.choice([2, 3, 4], size=waves.size, p=[0.45, 0.2, 0.35])
    else:
        ratios = np.full(waves.size, int(conduction[0]))
    index, beats = int(rng.integers(0, 4)), []
    while index < waves.size:
        beats.append(waves[index] + delay)
        index += int(ratios[index])
    return np.array(beats), trace, conduction


def _fibrillatory_waves(rng: np.random.Generator, time_s: np.ndarray) -> np.ndarray:
    """Atrial f waves (3, N): drifting 5.5-10 Hz oscillations, fine to coarse, strongest in V1."""
    waves = np.zeros(time_s.size)
    for _ in range(3):
        frequency = rng.uniform(5.5, 10.0) + rng.uniform(0.0, 0.6) * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * time_s)
        envelope = 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * time_s + rng.uniform(0, 2 * np.pi))
        waves += envelope * np.sin(2 * np.pi * np.cumsum(frequency) / SAMPLING_RATE + rng.uniform(0, 2 * np.pi))
    waves *= rng.uniform(0.01, 0.05)
    direction = np.array((rng.normal(-0.2, 0.2), rng.uniform(0.2, 0.6), rng.uniform(0.6, 1.0)))
    return direction[:, None] * waves[None]


@dataclass
class _Morphology:
    """One patient's beat: the QRS-T template (3, W) around the R peak and the P-wave vector."""

    template: np.ndarray
    p_vector: np.ndarray
    p_width_s: float
    pr_interval_s: float
    qrs_duration_ms: float
    qrs_axis_degrees: float


def _morphology(rng: np.random.Generator, conditions: list[str], mean_rr_s: float) -> _Morphology:
    time_s = np.arange(int(_TEMPLATE_START_S * SAMPLING_RATE), int(_TEMPLATE_END_S * SAMPLING_RATE)) / SAMPLING_RATE
    # Patient's heart orientation: frontal QRS axis ~ N(45, 28) degrees (left/right deviation in
    # the tails), rotation in the horizontal plane (R-wave transition), and overall size.
    frontal = np.deg2rad(np.clip(rng.normal(45.0, 28.0), -60.0, 130.0))
    horizontal = np.deg2rad(rng.normal(0.0, 15.0))
    rotation = _rotation(1, horizontal) @ _rotation(2, frontal - np.deg2rad(50.0))
    size = rng.lognormal(np.log(1.5), 0.25)
    qrs_scale = size * (rng.uniform(0.18, 0.3) if "low_qrs_voltages" in conditions else 1.0)
    template = np.zeros((3, time_s.size))

    def add_wave(vector, centre_s: float, width_s: float, scale: float = 1.0) -> None:
        template[:] += scale * (rotation @ np.asarray(vector, dtype=float))[:, None] * _gaussian(time_s, centre_s, width_s)[None]

    qt_factor = np.sqrt(mean_rr_s)  # Bazett: the QT interval shortens as the heart rate rises
    qtc = rng.uniform(0.38, 0.45)
    t_scale = size * rng.uniform(0.1, 0.25) * (0.6 if "low_qrs_voltages" in conditions else 1.0)
    if "left_bundle_branch_block" in conditions:
        # Right-to-left septal activation and slow left-ventricular depolarisation: no septal q,
        # a broad notched R in I/aVL/V5/V6, a deep broad QS in V1, and discordant T waves.
        qrs_width = rng.uniform(0.13, 0.17)
        main = np.array((0.85, 0.25, -0.75))
        add_wave(main * 0.7, -0.25 * qrs_width, 0.16 * qrs_width, qrs_scale)
        add_wave(main * np.array((0.65, 0.4, 0.75)), 0.22 * qrs_width, 0.16 * qrs_width, qrs_scale)
        t_vector = -main / np.linalg.norm(main)
        t_peak = qtc * qt_factor - 0.1
        add_wave(t_vector, t_peak - 0.02, 0.05 * np.sqrt(qt_factor), t_scale * 1.2)
    else:
        qrs_width = rng.uniform(0.075, 0.105)
        r_direction = np.array((0.55, 0.75, rng.uniform(-0.6, -0.1)))
        r_direction /= np.linalg.norm(r_direction)
        s_depth = rng.uniform(0.2, 0.55)
        add_wave((-0.1, 0.0, 0.25), -0.32 * qrs_width, 0.08 * qrs_width, qrs_scale * rng.uniform(0.5, 1.2))  # septal q / r in V1
        add_wave(r_direction, 0.0, 0.11 * qrs_width, qrs_scale * 0.9)  # R
        add_wave((-0.3, -0.35, -0.75), 0.3 * qrs_width, 0.09 * qrs_width, qrs_scale * s_depth)  # S
        if "right_bundle_branch_block" in conditions:
            # Late right-ventricular activation: a terminal rightward-anterior wave (R' in V1, broad S in I/V6).
            qrs_width = rng.uniform(0.12, 0.15)
            add_wave((-0.55, 0.05, 0.75), 0.42 * qrs_width, 0.13 * qrs_width, qrs_scale * rng.uniform(0.5, 0.8))
        t_vector = 0.7 * r_direction + np.array((0.0, 0.0, rng.uniform(0.2, 0.6)))
        t_vector /= np.linalg.norm(t_vector)
        if "inverted_t_waves" in conditions:
            t_vector = -t_vector * rng.uniform(0.8, 1.3)
        # An asymmetric T wave: slow upstroke, faster downstroke, ending at QT.
        t_peak = qtc * qt_factor - 0.09
        add_wave(t_vector, t_peak - 0.035, 0.05 * np.sqrt(qt_factor), t_scale)
        add_wave(t_vector, t_peak + 0.005, 0.03 * np.sqrt(qt_factor), t_scale)
    p_vector = rotation @ np.array((0.5, 0.8, 0.25)) * rng.uniform(0.1, 0.22)
    frontal_vector = rotation @ np.array((0.55, 0.75, 0.0))
    return _Morphology(
        template=template,
        p_vector=p_vector,
        p_width_s=rng.uniform(0.018, 0.028),
        pr_interval_s=rng.uniform(0.12, 0.2),
        qrs_duration_ms=1000.0 * qrs_width,
        qrs_axis_degrees=float(np.rad2deg(np.arctan2(frontal_vector[1], frontal_vector[0]))),
    )


def _place(trace: np.ndarray, template: np.ndarray, times_s: np.ndarray, offset_samples: int, scales: np.ndarray) -> None:
    """Add `template` (3, W) to `trace` (3, N) at each time (sample 0 of `trace` = -_PAD_S)."""
    width = template.shape[1]
    starts = np.round((times_s + _PAD_S) * SAMPLING_RATE).astype(int) - offset_samples
    for start, scale in zip(starts, scales):
        lo, hi = max(0, start), min(trace.shape[1], start + width)
        if lo < hi:
            trace[:, lo:hi] += scale * template[:, lo - start : hi - start]


def _electrode_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Noise per electrode (9, N), mV: baseline wander, EMG, mains, motion artefacts, white noise."""
    time_s = np.arange(num_samples) / SAMPLING_RATE
    noise = rng.normal(0.0, rng.uniform(0.002, 0.01), size=(9, num_samples))
    # Respiratory baseline wander (shared rhythm, per-electrode amplitude) and slow drift.
    breathing = rng.uniform(0.15, 0.4)
    wander_amplitude = rng.lognormal(np.log(0.05), 0.7)
    noise += wander_amplitude * rng.uniform(0.0, 1.0, size=(9, 1)) * np.sin(2 * np.pi * breathing * time_s + rng.uniform(0, 2 * np.pi, size=(9, 1)))
    noise += rng.uniform(0.0, 0.03) * np.sin(2 * np.pi * rng.uniform(0.03, 0.1, size=(9, 1)) * time_s + rng.uniform(0, 2 * np.pi, size=(9, 1)))
    # EMG: high-pass noise, bursty in some records.
    if rng.random() < 0.5:
        emg = rng.normal(0.0, 1.0, size=(9, num_samples))
        emg -= np.convolve(emg.ravel(), np.ones(5) / 5, mode="same").reshape(9, num_samples)
        envelope = 1.0 + rng.uniform(0, 2) * (np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * time_s) > 0.6)
        noise += rng.uniform(0.003, 0.025) * emg * envelope
    if rng.random() < 0.25:
        mains = rng.choice([50.0, 60.0])
        noise += rng.uniform(0.003, 0.02, size=(9, 1)) * np.sin(2 * np.pi * mains * time_s + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.1:  # electrode motion: a step-and-recover transient on one electrode
        electrode, start = int(rng.integers(0, 9)), rng.uniform(0.5, 9.0)
        after = np.clip(time_s - start, 0.0, None)
        noise[electrode] += rng.normal(0.0, 0.3) * (time_s >= start) * np.exp(-after / rng.uniform(0.2, 1.0))
    return noise


# --------------------------------------------------------------------------------------------
# Real beats (REAL_MORPHOLOGY_FRACTION of the records)
# --------------------------------------------------------------------------------------------

#: Median-beat window around the R peak (s): from before the P wave to after the T wave.
_REAL_BEAT_START_S = -0.28
_REAL_BEAT_END_S = 0.5
#: The P wave ends and the QRS starts in the PR segment; the beat is split there with a short
#: cross-fade (isoelectric, so the split adds nothing).
_REAL_SPLIT_S = (-0.07, -0.05)
#: Past the QRS, the ST-T segment is stretched with the RR interval (Bazett) when re-timed.
_REAL_QRS_END_S = 0.08
#: Source records: regular (RR coefficient of variation below this) sinus rhythms slow enough that
#: the window holds one beat, without a paced rhythm or a complete bundle branch block.
_REAL_SOURCE_MAX_RR_CV = 0.12
_REAL_SOURCE_MIN_RR_S = 0.72
#: Complete bundle branch blocks are excluded because the demo reports them (a real beat's report
#: states only the simulated rhythm and the source's axis).
_REAL_SOURCE_EXCLUDE = re.compile(r"pacing|complete (left|right) bundle branch block|iii degree", re.IGNORECASE)
#: LUDB's axis statement -> a representative frontal QRS axis (degrees) for the report.
_LUDB_AXIS_DEGREES = {"left axis deviation": -45.0, "right axis deviation": 110.0, "horizontal": 10.0, "vertical": 80.0, "normal": 50.0}
#: The eight independent leads, from which the electrodes (and so the other four leads) follow.
_INDEPENDENT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclass(frozen=True)
class RealBeat:
    """One real patient's median beat in the eight independent leads (I, II, V1-V6), split into
    the atrial part (the P wave) and the ventricular part (QRS-T); sample 0 is `_REAL_BEAT_START_S`."""

    record_id: str
    atrial: np.ndarray  # (8, W)
    ventricular: np.ndarray  # (8, W)
    rr_s: float
    axis_degrees: float
    qrs_duration_ms: float

    def ventricular_at(self, rr_s: float) -> np.ndarray:
        """The QRS-T part with its ST-T segment stretched to another RR interval (QT ~ sqrt(RR))."""
        factor = float(np.clip(np.sqrt(rr_s / self.rr_s), 0.65, 1.35))
        source_s = _REAL_BEAT_START_S + np.arange(self.ventricular.shape[1]) / SAMPLING_RATE
        end_s = _REAL_QRS_END_S + (source_s[-1] - _REAL_QRS_END_S) * factor
        target_s = _REAL_BEAT_START_S + np.arange(int(round((end_s - _REAL_BEAT_START_S) * SAMPLING_RATE)) + 1) / SAMPLING_RATE
        lookup_s = np.where(target_s <= _REAL_QRS_END_S, target_s, _REAL_QRS_END_S + (target_s - _REAL_QRS_END_S) / factor)
        return np.stack([np.interp(lookup_s, source_s, row) for row in self.ventricular])


def detect_r_peaks(signal: np.ndarray) -> np.ndarray:
    """R-peak sample indices of a 12-lead 500 Hz record: maxima of the 5-25 Hz energy summed over leads."""
    from scipy.signal import butter, find_peaks, sosfiltfilt

    energy = (sosfiltfilt(butter(2, (5.0, 25.0), "band", fs=SAMPLING_RATE, output="sos"), signal, axis=-1) ** 2).sum(axis=0)
    peaks, _ = find_peaks(energy / energy.max(), height=0.15, distance=int(0.25 * SAMPLING_RATE))
    return peaks


def _median_beat(record_id: str, signal: np.ndarray, report: str, independent: list[int]) -> RealBeat | None:
    """The median beat of a regular 12-lead record in its independent leads (row indices
    `independent`), baseline-corrected and tapered; None if unsuitable."""
    peaks = detect_r_peaks(signal)
    rr = np.diff(peaks) / SAMPLING_RATE
    if rr.size < 4 or rr.std() / rr.mean() > _REAL_SOURCE_MAX_RR_CV or np.median(rr) < _REAL_SOURCE_MIN_RR_S:
        return None
    before, after = int(-_REAL_BEAT_START_S * SAMPLING_RATE), int(_REAL_BEAT_END_S * SAMPLING_RATE)
    beats = [signal[:, peak - before : peak + after] for peak in peaks if peak >= before and peak + after <= signal.shape[1]]
    if len(beats) < 3:
        return None
    beat = np.median(np.stack(beats), axis=0)[independent].astype(np.float64)
    # Baseline: a straight line through the isoelectric ends (before the P wave, after the T wave).
    edge = int(0.02 * SAMPLING_RATE)
    ramp = np.linspace(0.0, 1.0, beat.shape[1])
    start_level, end_level = beat[:, :edge].mean(axis=1, keepdims=True), beat[:, -edge:].mean(axis=1, keepdims=True)
    beat -= start_level + (end_level - start_level) * ramp
    taper = np.ones(beat.shape[1])
    taper[:edge] = np.sin(np.linspace(0.0, np.pi / 2, edge)) ** 2
    taper[-edge:] = taper[:edge][::-1]
    beat *= taper
    time_s = _REAL_BEAT_START_S + np.arange(beat.shape[1]) / SAMPLING_RATE
    ventricular_weight = np.clip((time_s - _REAL_SPLIT_S[0]) / (_REAL_SPLIT_S[1] - _REAL_SPLIT_S[0]), 0.0, 1.0)
    axis = next((degrees for name, degrees in _LUDB_AXIS_DEGREES.items() if f"electric axis of the heart: {name}" in report.lower()), 50.0)
    # QRS duration: where the slope (summed over leads) stays above 10 % of its peak near R.
    slope = np.abs(np.diff(beat, axis=1)).sum(axis=0)
    near_r = np.abs(time_s[1:]) < 0.1
    qrs_samples = int(np.count_nonzero(near_r & (slope > 0.1 * slope[near_r].max())))
    return RealBeat(record_id, beat * (1.0 - ventricular_weight), beat * ventricular_weight, float(np.median(rr)), axis, 1000.0 * qrs_samples / SAMPLING_RATE)


@functools.lru_cache(maxsize=1)
def real_beat_library() -> tuple[RealBeat, ...]:
    """The median beats of the vendored LUDB training part's regular sinus records (patients that
    are never in the real evaluation set: `dbeta.train.demo.real_ecg.load_ludb_train_set` checks it)."""
    from dbeta.train.demo.real_ecg import load_ludb_train_set

    records = load_ludb_train_set()
    independent = [records.lead_names.index(name) for name in _INDEPENDENT_LEADS]
    library = []
    for record_id, signal, report, rhythm in zip(records.record_ids, records.signals, records.reports, records.rhythms):
        if rhythm.startswith("sinus") and "arrhythmia" not in rhythm and not _REAL_SOURCE_EXCLUDE.search(report):
            beat = _median_beat(record_id, np.asarray(signal, dtype=np.float64), report, independent)
            if beat is not None:
                library.append(beat)
    return tuple(library)


def _with_real_beat_findings(rng: np.random.Generator, ventricular: np.ndarray, conditions: list[str]) -> np.ndarray:
    """A real beat's QRS-T part (8, W) given the `REAL_BEAT_FINDINGS` among `conditions`."""
    time_s = _REAL_BEAT_START_S + np.arange(ventricular.shape[1]) / SAMPLING_RATE
    # 0 up to the end of the QRS, 1 from 30 ms later on (the ST-T part), a linear ramp between.
    st_t = np.clip((time_s - _REAL_QRS_END_S) / 0.03, 0.0, 1.0)
    scale = np.ones_like(time_s)
    if "inverted_t_waves" in conditions:
        scale = scale * (1.0 - st_t * (1.0 + rng.uniform(0.8, 1.3)))
    if "low_qrs_voltages" in conditions:
        scale = scale * (rng.uniform(0.2, 0.35) * (1.0 - st_t) + 0.6 * st_t)
    return ventricular * scale[None]


def _independent_leads_to_electrodes(leads: np.ndarray) -> np.ndarray:
    """Electrode potentials (9, N) relative to Wilson's terminal from I, II, V1-V6 (8, N): the
    limb leads then obey Einthoven/Goldberger exactly, whatever the source did."""
    lead_i, lead_ii = leads[0], leads[1]
    right_arm = -(lead_i + lead_ii) / 3.0
    return np.stack([right_arm, right_arm + lead_i, right_arm + lead_ii, *leads[2:]])


_RHYTHM_STATEMENTS: dict[str, list[tuple[str, float]]] = {
    # (statement, weight); rate-dependent variants are chosen in `_rhythm_statement`.
    "sinus_rhythm": [("Sinus rhythm", 0.6), ("Normal sinus rhythm", 0.4)],
    "sinus_bradycardia": [("Sinus bradycardia", 1.0)],
    "sinus_tachycardia": [("Sinus tachycardia", 1.0)],
    "atrial_fibrillation": [("Atrial fibrillation", 1.0)],
    "atrial_flutter": [("Atrial flutter", 1.0)],
    "sinus_arrhythmia": [("Sinus arrhythmia", 0.6), ("Marked sinus arrhythmia", 0.4)],
}


def _rhythm_statement(rng: np.random.Generator, rhythm: str, heart_rate_bpm: float, conduction: str | None, style: str) -> str:
    if style == "cardiologist":
        name = {"atrial_flutter": "Atrial flutter, typical"}.get(rhythm, RHYTHM_NAMES[rhythm])
        return f"Rhythm: {name}."
    statements, weights = zip(*_RHYTHM_STATEMENTS[rhythm])
    line = statements[rng.choice(len(statements), p=np.array(weights) / sum(weights))]
    if rhythm == "sinus_bradycardia" and heart_rate_bpm < 48 and rng.random() < 0.5:
        line = "Marked sinus bradycardia"
    if rhythm == "atrial_fibrillation" and rng.random() < 0.7:
        if heart_rate_bpm > 100:
            line += " with rapid ventricular response"
        elif heart_rate_bpm < 60:
            line += " with slow ventricular response"
    if rhythm == "atrial_flutter" and conduction is not None and rng.random() < 0.7:
        line += " with variable A-V block" if conduction == "variable" else f" with {conduction} A-V conduction"
    return line


_MORPHOLOGY_STATEMENTS: dict[str, dict[str, str]] = {
    "machine": {
        "low_qrs_voltages": "Low QRS voltages",
        "left_bundle_branch_block": "Left bundle branch block",
        "inverted_t_waves": "Inverted T waves",
        "right_bundle_branch_block": "Right bundle branch block",
    },
    "cardiologist": {
        "low_qrs_voltages": "Low QRS voltages.",
        "left_bundle_branch_block": "Complete left bundle branch block.",
        "inverted_t_waves": "Inverted T waves.",
        "right_bundle_branch_block": "Complete right bundle branch block.",
    },
}


def _axis_statement(axis_degrees: float, style: str) -> str | None:
    if style == "cardiologist":
        if axis_degrees < -30:
            return "Electric axis of the heart: left axis deviation."
        if axis_degrees > 90:
            return "Electric axis of the heart: right axis deviation."
        return "Electric axis of the heart: normal."
    if axis_degrees < -30:
        return "Left axis deviation"
    if axis_degrees > 90:
        return "Right axis deviation"
    return None


def _report_lines(
    rng: np.random.Generator, conditions: list[str], heart_rate_bpm: float, axis_degrees: float, conduction: str | None
) -> list[str]:
    style = "cardiologist" if rng.random() < CARDIOLOGIST_STYLE_FRACTION else "machine"
    rhythm = next(key for key in conditions if key in RHYTHM_CONDITIONS)
    lines = [_rhythm_statement(rng, rhythm, heart_rate_bpm, conduction, style)]
    axis = _axis_statement(axis_degrees, style)
    if axis is not None and "left_bundle_branch_block" not in conditions:
        lines.append(axis)
    if "ventricular_extrasystoles" in conditions:
        if style == "machine":
            lines[0] += " with premature ventricular complexes"
        else:
            lines.append("Ventricular extrasystoles.")
    lines += [_MORPHOLOGY_STATEMENTS[style][key] for key in conditions if key in _MORPHOLOGY_STATEMENTS[style]]
    # Some machine reports stop after the findings (no overall statement), as short as a user's prompt.
    if style == "machine" and rng.random() >= SHORT_REPORT_FRACTION:
        if conditions == ["sinus_rhythm"] and (axis is None):
            lines.append("Normal ECG")
        elif len(conditions) == 1 and rhythm in SINUS_RHYTHMS:
            lines.append("Borderline ECG")
        else:
            lines.append("Abnormal ECG")
    return lines


def _pvc_template(rng: np.random.Generator, mean_rr_s: float) -> np.ndarray:
    """A premature ventricular complex (3, W): broad (130-170 ms), an ectopic vector, discordant T."""
    time_s = np.arange(int(_TEMPLATE_START_S * SAMPLING_RATE), int(_TEMPLATE_END_S * SAMPLING_RATE)) / SAMPLING_RATE
    vector = rng.normal(0.0, 1.0, size=3)
    vector *= rng.uniform(1.5, 3.0) / np.linalg.norm(vector)
    width = rng.uniform(0.13, 0.17)
    template = vector[:, None] * (_gaussian(time_s, -0.1 * width, 0.2 * width) + 0.5 * _gaussian(time_s, 0.25 * width, 0.15 * width))[None]
    template -= 0.3 * vector[:, None] * _gaussian(time_s, 0.3 * np.sqrt(mean_rr_s), 0.06)[None]
    return template


def simulate_ecg(
    rng: np.random.Generator,
    conditions: list[str] | None = None,
    lead_normalised: bool | None = None,
    ectopic_beats: int | None = None,
    filtered: bool | None = None,
    real_morphology: bool | None = None,
) -> SimulatedECG:
    """Simulate one 10 s 12-lead ECG (mV, MIMIC lead order) with the given (or random) conditions.

    `lead_normalised` forces (True) or forbids (False) scaling every lead to 1 mV peak-to-peak;
    by default a random :data:`LEAD_NORMALISED_FRACTION` of the records are scaled. `ectopic_beats`
    sets the number of premature ventricular complexes of a sinus rhythm (default: 1-2 in a random
    :data:`ECTOPIC_FRACTION` of them), `filtered` the cart-like band-limiting (default: random).
    `real_morphology` takes the beats from :func:`real_beat_library` (default: a random
    :data:`REAL_MORPHOLOGY_FRACTION` of the records with random conditions); such a record carries
    only the findings of :data:`REAL_BEAT_FINDINGS`, and its report states the source patient's axis.
    """
    if real_morphology is None:
        real_morphology = conditions is None and bool(rng.random() < REAL_MORPHOLOGY_FRACTION)
    if conditions is None:
        conditions = _sample_conditions(rng)
        if real_morphology:
            conditions = [key for key in conditions if key in RHYTHM_CONDITIONS or key in REAL_BEAT_FINDINGS]
    conditions = list(conditions)
    if real_morphology and any(key in MORPHOLOGY_PROBABILITIES and key not in REAL_BEAT_FINDINGS for key in conditions):
        raise ValueError(
            f"A real beat has its own morphology: {conditions} cannot be simulated with real_morphology=True "
            f"(a real beat can carry {', '.join(REAL_BEAT_FINDINGS)} only)"
        )
    rhythm = next(key for key in conditions if key in RHYTHM_CONDITIONS)
    duration_s = NUM_SAMPLES / SAMPLING_RATE
    total = NUM_SAMPLES + int(2 * _PAD_S * SAMPLING_RATE)
    time_s = np.arange(total) / SAMPLING_RATE - _PAD_S
    atrial = np.zeros((3, total))
    conduction = None
    if rhythm == "atrial_flutter":
        beats_s, flutter_waves, conduction = _flutter(rng, duration_s, time_s)
        atrial += flutter_waves
    elif rhythm == "atrial_fibrillation":
        low, high = RATE_RANGES[rhythm]
        rate = float(np.clip(rng.lognormal(np.log(AF_MEDIAN_RATE), 0.25), low, high))
        beats_s = _fibrillation_beats(rng, rate, duration_s)
        atrial += _fibrillatory_waves(rng, time_s)
    else:
        low, high = RATE_RANGES[rhythm]
        # Real rates cluster near the middle of the normal range and just beyond the thresholds.
        if rhythm == "sinus_rhythm":
            rate = float(np.clip(rng.normal(74.0, 11.0), low, high))
        elif rhythm == "sinus_bradycardia":
            rate = float(np.clip(high - rng.exponential(7.0), low, high))
        elif rhythm == "sinus_tachycardia":
            rate = float(np.clip(low + rng.exponential(16.0), low, high))
        else:
            rate = float(rng.uniform(low, high))
        depth = MARKED_SINUS_ARRHYTHMIA_DEPTH if rhythm == "sinus_arrhythmia" else SINUS_MODULATION_DEPTH
        beats_s = _sinus_beats(rng, rate, duration_s, depth)
    mean_rr = float(np.median(np.diff(beats_s)))
    morphology = _morphology(rng, conditions, mean_rr)
    real_beat = None
    if real_morphology:
        library = real_beat_library()
        real_beat = library[int(rng.integers(len(library)))]

    heart_vector = atrial
    offset = -int(_TEMPLATE_START_S * SAMPLING_RATE)
    has_p_waves = rhythm in SINUS_RHYTHMS
    sinus_beats = beats_s
    if ectopic_beats is None:
        ectopic_beats = int(rng.integers(1, 3)) if has_p_waves and rng.random() < ECTOPIC_FRACTION else 0
    ectopic_times = np.zeros(0)
    if ectopic_beats and has_p_waves:
        # A premature beat replaces a sinus one (its P wave is hidden); the pause is compensatory.
        inside_indices = np.flatnonzero((beats_s > 0.5) & (beats_s < duration_s - 0.5))
        chosen = rng.choice(inside_indices[1:], size=min(ectopic_beats, max(0, inside_indices.size - 1)), replace=False)
        ectopic_times = beats_s[chosen - 1] + rng.uniform(0.5, 0.7) * mean_rr
        beats_s = np.delete(beats_s, chosen)
        _place(heart_vector, _pvc_template(rng, mean_rr), ectopic_times, offset, np.ones(ectopic_times.size))
        conditions = conditions + ["ventricular_extrasystoles"]
    real_leads = np.zeros((len(_INDEPENDENT_LEADS), total))
    if real_beat is not None:
        # LUDB scales every lead to 1 peak-to-peak: a patient gain and a gain per lead give the
        # amplitudes back their variety (the limb leads stay consistent, see below).
        gains = rng.lognormal(np.log(1.2), 0.3) * rng.lognormal(0.0, 0.2, size=(len(_INDEPENDENT_LEADS), 1))
        real_offset = int(-_REAL_BEAT_START_S * SAMPLING_RATE)
        ventricular = _with_real_beat_findings(rng, real_beat.ventricular_at(mean_rr), conditions)
        _place(real_leads, gains * ventricular, beats_s, real_offset, rng.normal(1.0, 0.03, size=beats_s.size))
        if has_p_waves:
            _place(real_leads, gains * real_beat.atrial, beats_s, real_offset, rng.normal(1.0, 0.03, size=beats_s.size))
    else:
        _place(heart_vector, morphology.template, beats_s, offset, rng.normal(1.0, 0.03, size=beats_s.size))
        if has_p_waves:
            width = int(0.1 * SAMPLING_RATE)
            p_time = (np.arange(2 * width + 1) - width) / SAMPLING_RATE
            p_shape = _gaussian(p_time, -0.25 * morphology.p_width_s, morphology.p_width_s) + 0.8 * _gaussian(p_time, 0.9 * morphology.p_width_s, morphology.p_width_s)
            p_template = morphology.p_vector[:, None] * p_shape[None] / 1.1
            _place(heart_vector, p_template, beats_s - morphology.pr_interval_s, width, rng.normal(1.0, 0.03, size=beats_s.size))
    beats_s = np.sort(np.concatenate([beats_s, ectopic_times]))
    del sinus_beats

    electrodes = _heart_vector_to_electrodes(heart_vector, rng) + _independent_leads_to_electrodes(real_leads) + _electrode_noise(rng, total)
    if filtered is None:
        filtered = bool(rng.random() < FILTERED_FRACTION)
    if filtered:  # the same linear filter on every electrode keeps the lead relations
        from scipy.signal import butter, sosfiltfilt

        electrodes = sosfiltfilt(butter(2, rng.uniform(35.0, 100.0), "low", fs=SAMPLING_RATE, output="sos"), electrodes, axis=1)
        if rng.random() < 0.5:
            electrodes = sosfiltfilt(butter(1, 0.5, "high", fs=SAMPLING_RATE, output="sos"), electrodes, axis=1)
    start = int(_PAD_S * SAMPLING_RATE)
    signal = electrodes_to_leads(electrodes)[:, start : start + NUM_SAMPLES]
    if lead_normalised is None:
        lead_normalised = bool(rng.random() < LEAD_NORMALISED_FRACTION)
    if lead_normalised:
        signal = signal / np.maximum(np.ptp(signal, axis=1, keepdims=True), 1e-6)
    inside = beats_s[(beats_s >= 0) & (beats_s < duration_s)]
    axis_degrees = real_beat.axis_degrees if real_beat is not None else morphology.qrs_axis_degrees
    measured_rate = 60.0 / float(np.mean(np.diff(inside))) if inside.size > 1 else 60.0 / mean_rr
    return SimulatedECG(
        signal=signal.astype(np.float32),
        conditions=conditions,
        report_lines=_report_lines(rng, conditions, measured_rate, axis_degrees, conduction),
        heart_rate_bpm=measured_rate,
        qrs_duration_ms=real_beat.qrs_duration_ms if real_beat is not None else morphology.qrs_duration_ms,
        qrs_axis_degrees=axis_degrees,
        r_peaks_s=inside,
        has_p_waves=has_p_waves,
        lead_normalised=lead_normalised,
        real_beat_record=real_beat.record_id if real_beat is not None else None,
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


@functools.lru_cache(maxsize=1)
def simulator_fingerprint() -> str:
    """SHA-256 (first 16 hex digits) of the simulator's code: this module and the real-record loader
    its beat library reads through. A demo corpus records it, so that a corpus written by another
    simulator (another beat share, noise model or rhythm mix) is refused instead of trained on as
    if it were this one's. Byte-level, so an edited comment also asks for a rewrite (about a minute)."""
    import hashlib

    from dbeta.train.demo import real_ecg

    digest = hashlib.sha256()
    for source in (Path(__file__), Path(real_ecg.__file__)):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


#: Studies per worker task in `make_demo_corpus(num_proc > 1)`.
STUDIES_PER_TASK = 100


def make_demo_corpus(
    out_dir: str | os.PathLike,
    num_records: int = 2000,
    num_subjects: int | None = None,
    seed: int = 0,
    num_corrupt_records: int = 0,
    num_proc: int = 1,
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
        num_proc: Worker processes that simulate and write the studies. Each study draws from its
            own generator, keyed by (seed, index), so the files are the same for any count.
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
    studies = [
        (index, int(record_subjects[index]), int(study_ids[index]), str(ecg_times[index]).replace("T", " "))
        for index in range(total)
    ]
    # Contiguous blocks of studies per task, in order: the rows come back in study order.
    block = STUDIES_PER_TASK
    tasks = [(str(out_dir), seed, num_records, studies[i : i + block]) for i in range(0, total, block)]
    real_beat_library()  # computed once here; forked workers inherit it
    results = list(map_in_workers(_write_studies, tasks, num_proc))

    record_rows, measurement_rows, label_rows, corrupt_rows = [], [], [], []
    for rows in results:
        for record, measurement, label, corrupt in rows:
            record_rows.append(record)
            measurement_rows.append(measurement)
            if label is not None:
                label_rows.append(label)
            if corrupt is not None:
                corrupt_rows.append(corrupt)
    _write_csv(out_dir / "record_list.csv", record_rows)
    _write_csv(out_dir / "machine_measurements.csv", measurement_rows)
    _write_csv(out_dir / "demo_labels.csv", label_rows, fieldnames=["study_id", *LABEL_COLUMNS])
    if corrupt_rows:
        _write_csv(out_dir / "corrupt_records.csv", corrupt_rows)
    return out_dir


def _write_studies(task: tuple[str, int, int, list[tuple[int, int, int, str]]]) -> list[tuple]:
    """Simulate and write one block of studies; returns their (record_list row, machine_measurements
    row, label row or None, corrupt_records row or None), in order."""
    out_dir, seed, num_records, studies = task
    out_dir = Path(out_dir)
    corrupt_kinds = list(CORRUPT_RECORD_KINDS)
    rows = []
    for index, subject_id, study_id, ecg_time in studies:
        record_rng = np.random.default_rng([seed, 1, index])
        simulated = simulate_ecg(record_rng)
        relative = mimic_relative_path(subject_id, study_id)
        record_dir = out_dir / Path(relative).parent
        record_name = str(study_id)
        report_lines = simulated.report_lines

        kind = corrupt_kinds[(index - num_records) % len(corrupt_kinds)] if index >= num_records else None
        signal, lead_names, write_files = simulated.signal, list(MIMIC_LEAD_ORDER), True
        corrupt = None
        if kind is not None:
            signal, lead_names, write_files = _corrupt(kind, signal)
            corrupt = {"study_id": study_id, "kind": kind, "expected_reason": CORRUPT_RECORD_KINDS[kind]}
            if kind == "missing_report":
                report_lines = []
        if write_files:
            _write_wfdb(record_dir, record_name, signal, lead_names)
            if kind is not None:
                _damage_files(kind, record_dir, record_name)

        record = {"subject_id": subject_id, "study_id": study_id, "file_name": record_name, "ecg_time": ecg_time, "path": relative}
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
        label = None if kind is not None else {"study_id": study_id, **{key: int(key in simulated.conditions) for key in LABEL_COLUMNS}}
        rows.append((record, measurement, label, corrupt))
    return rows


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
    parser.add_argument("--num_proc", type=int, default=1, help="Worker processes (the files do not depend on it).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    root = make_demo_corpus(args.output_dir, args.num_records, args.num_subjects, args.seed, args.num_corrupt_records, args.num_proc)
    logger.info("Wrote %d simulated studies to %s in %.1f s", args.num_records, root, time.perf_counter() - started)


if __name__ == "__main__":
    main()
