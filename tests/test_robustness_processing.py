"""Hostile and damaged input to the feature extractor (issue 10): clear errors, no memory bombs.

The bad inputs are built here: implausible sampling rates, Holter-length arrays, values that
overflow float32, microvolts or ADC counts passed as millivolts, and batches with one bad item.
"""
import tracemalloc
import warnings
from fractions import Fraction

import numpy as np
import pytest
import scipy.signal
import torch

from processing_dbeta import (
    IMPLAUSIBLE_PEAK_TO_PEAK_MV,
    MAX_SAMPLING_RATE,
    MIN_SAMPLING_RATE,
    STANDARD_LEAD_NAMES,
    DBetaFeatureExtractor,
    ECGRecord,
)


FS = 500
LENGTH = 5000


@pytest.fixture(scope="module")
def feature_extractor():
    return DBetaFeatureExtractor()


def ecg_mv(num_leads=12, length=LENGTH, rate=FS, seed=0):
    """A plausible ECG in millivolts: about 1.2 mV peak-to-peak per lead."""
    time = np.arange(length) / rate
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * 1.2 * time)[None] + rng.normal(scale=0.03, size=(num_leads, length)))


def values(feature_extractor, ecg, **kwargs):
    return feature_extractor(ecg, **kwargs)["input_values"]


def peak_traced_bytes(function):
    tracemalloc.start()
    try:
        result = function()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# -- 2 and 14. sampling rates: a plausible range, no memory or CPU bombs ---------------------------


@pytest.mark.parametrize("rate", [0.05, 1e-9, 49.9, 10_000.5, 1e12, float("inf"), float("nan"), 0, -500])
def test_implausible_sampling_rates_are_clear_errors(feature_extractor, rate):
    ecg = np.zeros((12, LENGTH))
    with pytest.raises(ValueError, match="not a plausible ECG sampling rate.*from 50 to 10000"):
        feature_extractor(ecg, sampling_rate=rate)
    # Nothing big is allocated on the way to the error.
    raised, peak = peak_traced_bytes(lambda: _raises(feature_extractor, ecg, rate))
    assert raised and peak < 20 * 2**20


def _raises(feature_extractor, ecg, rate):
    try:
        feature_extractor(ecg, sampling_rate=rate)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("rate", [MIN_SAMPLING_RATE, MAX_SAMPLING_RATE])
def test_range_bounds_are_accepted(feature_extractor, rate):
    ecg = ecg_mv(length=int(11 * rate), rate=rate)
    assert values(feature_extractor, ecg, sampling_rate=rate).shape == (1, 12, LENGTH)


@pytest.mark.parametrize("rate", [50, 128, 257, 360, 400, 499.9, 1000, 1024, 4096, 10_000])
def test_cutting_before_resampling_matches_resampling_everything(feature_extractor, rate):
    """Only the window's input (plus the filter margin) is resampled, with the same result."""
    ecg = np.random.default_rng(1).normal(scale=0.3, size=(12, int(25 * rate)))
    output = values(feature_extractor, ecg, sampling_rate=rate)[0]
    ratio = (Fraction(FS) / Fraction(rate)).limit_denominator(10_000)
    expected = scipy.signal.resample_poly(ecg, ratio.numerator, ratio.denominator, axis=-1)[:, :LENGTH]
    order = [STANDARD_LEAD_NAMES.index(name) for name in feature_extractor.lead_names]
    np.testing.assert_array_equal(output, expected[order].astype(np.float32))


HOLTER_HOURS = 24


def file_backed_trace(folder, length, dtype, rate, scale=1.0):
    """A 1-D trace of `length` samples backed by a sparse file: an ECG for its first 11 s, then a
    hole. No memory of its own (an all-constant Holter would now be refused as flat)."""
    path = folder / f"trace-{np.dtype(dtype).name}-{rate}.raw"
    head = (ecg_mv(num_leads=1, length=int(11 * rate), rate=rate)[0] * scale).astype(dtype)
    with open(path, "wb") as handle:
        handle.write(head.tobytes())
        handle.truncate(length * np.dtype(dtype).itemsize)
    return path, np.memmap(path, dtype=dtype, mode="r", shape=(length,))


@pytest.mark.parametrize("rate, dtype", [(500, np.float32), (1000, np.float64), (250, np.int16)])
def test_holter_length_array_stays_small(feature_extractor, tmp_path, rate, dtype):
    """A 24-hour 12-lead recording (a view of a file-backed trace: no memory of its own) costs a 10 s ECG."""
    length = HOLTER_HOURS * 3600 * rate
    _, trace = file_backed_trace(tmp_path, length, dtype, rate, scale=1000 if dtype is np.int16 else 1)
    holter = np.broadcast_to(trace, (12, length))  # int16: microvolts
    units = "uV" if dtype is np.int16 else "mV"
    output, peak = peak_traced_bytes(lambda: values(feature_extractor, holter, sampling_rate=rate, units=units))
    assert output.shape == (1, 12, LENGTH)
    assert peak < 100 * 2**20  # the whole input in float64 would be 4-16 GiB


def test_holter_length_tensor_and_lead_traces(feature_extractor, tmp_path):
    length = HOLTER_HOURS * 3600 * FS
    # bfloat16 (converted after the cut), memory-mapped from a sparse file: an ECG, then a hole.
    path = tmp_path / "trace.bf16"
    head = torch.from_numpy(ecg_mv(num_leads=1, length=11 * FS)[0].astype(np.float32)).to(torch.bfloat16)
    with open(path, "wb") as handle:
        handle.write(head.view(torch.int16).numpy().tobytes())
        handle.truncate(length * 2)
    trace = torch.from_file(str(path), shared=True, size=length, dtype=torch.bfloat16)
    _, peak = peak_traced_bytes(
        lambda: values(feature_extractor, [trace] * 12, sampling_rate=FS)
    )
    assert peak < 100 * 2**20
    _, peak = peak_traced_bytes(
        lambda: values(feature_extractor, trace.expand(12, length), sampling_rate=FS)
    )
    assert peak < 100 * 2**20


def test_long_record_is_cut_with_the_duration_of_the_whole(feature_extractor):
    # The record is 12 s long: it must not be reported short, nor padded.
    record = ECGRecord(ecg_mv(length=6000).astype(np.float32), list(STANDARD_LEAD_NAMES), 500.0, {"name": "r"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output = values(feature_extractor, record)
    assert output.shape == (1, 12, LENGTH)


# -- 3. finite input that overflows --------------------------------------------------------------


@pytest.mark.parametrize(
    "value, units", [(1e300, "mV"), (-1e300, "mV"), (1e39, "mV"), (1e37, "V"), (np.finfo(np.float64).max, "uV")]
)
def test_finite_input_that_overflows_is_an_error(feature_extractor, value, units):
    ecg = ecg_mv()
    ecg[3, 1234] = value
    with pytest.raises(ValueError, match="overflows after conversion to float32 millivolts"):
        feature_extractor(ecg, sampling_rate=FS, units=units)


def test_overflow_in_a_batch_names_the_item(feature_extractor):
    batch = np.stack([ecg_mv(), ecg_mv(), ecg_mv()])
    batch[2, 0, 10] = 1e300
    with pytest.raises(ValueError, match="ECG 2 of the batch overflows"):
        feature_extractor(batch, sampling_rate=FS)


def test_large_but_representable_values_pass_the_overflow_check(feature_extractor):
    ecg = ecg_mv()
    ecg[0, 0] = 1e30  # finite in float32; one sample does not move the median amplitude
    output = values(feature_extractor, ecg, sampling_rate=FS)
    assert np.isfinite(output).all()


# -- 4. implausible amplitudes: a warning naming the record, never a silent rescale ----------------


def test_microvolts_passed_as_millivolts_warn(feature_extractor):
    ecg = ecg_mv() * 1000  # microvolts
    with pytest.warns(UserWarning, match="The ECG: implausible amplitude.*microvolts passed as millivolts") as record:
        output = values(feature_extractor, ecg, sampling_rate=FS)
    assert "Not rescaled" in str(record[0].message)
    np.testing.assert_allclose(output[0, 0], ecg[0].astype(np.float32))  # unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values(feature_extractor, ecg, sampling_rate=FS, units="uV")


def test_raw_adc_counts_warn_naming_the_record(feature_extractor):
    counts = np.round(ecg_mv() * 1000).astype(np.int16)  # ADC counts at 1000 adu/mV
    record = ECGRecord(counts, list(STANDARD_LEAD_NAMES), 500.0, {"name": "HR00042"})
    with pytest.warns(UserWarning, match="record HR00042: implausible amplitude.*raw ADC counts"):
        feature_extractor(record)


def test_amplitude_threshold(feature_extractor):
    unit = ecg_mv()
    unit = unit / np.ptp(unit, axis=-1, keepdims=True)  # 1 mV peak-to-peak per lead
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values(feature_extractor, unit * (IMPLAUSIBLE_PEAK_TO_PEAK_MV * 0.95), sampling_rate=FS)
        # One lead with a huge artefact does not move the median.
        spiky = unit.copy()
        spiky[4, 100] = 500.0
        values(feature_extractor, spiky, sampling_rate=FS)
    with pytest.warns(UserWarning, match="implausible amplitude"):
        values(feature_extractor, unit * (IMPLAUSIBLE_PEAK_TO_PEAK_MV * 1.05), sampling_rate=FS)


def test_amplitude_warning_in_a_batch_names_the_items(feature_extractor):
    batch = [ecg_mv(), ecg_mv() * 1000, ecg_mv()]
    with pytest.warns(UserWarning, match="ECG 1 of the batch: implausible amplitude"):
        feature_extractor(batch, sampling_rate=FS)
    stacked = np.stack([ecg_mv(), ecg_mv(), ecg_mv() * 1000, ecg_mv() * 1000])
    with pytest.warns(UserWarning, match="ECG 2 of the batch, ECG 3 of the batch: implausible"):
        feature_extractor(stacked, sampling_rate=FS)


def test_zero_filled_leads_do_not_lower_the_median(feature_extractor):
    # Two leads in microvolts, the other ten zero-filled: still flagged.
    with pytest.warns(UserWarning, match="implausible amplitude"):
        feature_extractor(ecg_mv(2) * 1000, sampling_rate=FS, lead_names=["I", "II"])


# -- 10. a batch with one bad record names it ------------------------------------------------------


def test_nan_in_a_list_names_the_index(feature_extractor):
    bad = ecg_mv()
    bad[5, 300] = np.nan
    with pytest.raises(ValueError, match="ECG 1 of the batch contains NaN or infinite values"):
        feature_extractor([ecg_mv(), bad, ecg_mv()], sampling_rate=FS)


def test_nan_in_a_3d_batch_names_the_index(feature_extractor):
    batch = np.stack([ecg_mv()] * 4)
    batch[3, 0, 0] = np.inf
    with pytest.raises(ValueError, match="ECG 3 of the batch contains NaN or infinite values"):
        feature_extractor(batch, sampling_rate=FS)


def test_nan_outside_the_window_is_not_read(feature_extractor):
    ecg = ecg_mv(length=20 * FS)
    ecg[:, 15 * FS:] = np.nan  # after the 10 s the model reads
    assert np.isfinite(values(feature_extractor, ecg, sampling_rate=FS)).all()


def test_eleven_lead_record_in_a_list_names_the_index(feature_extractor):
    with pytest.raises(ValueError, match="ECG 2 of the batch: Got 11 leads without `lead_names`"):
        feature_extractor([ecg_mv(), ecg_mv(), ecg_mv(11)], sampling_rate=FS)


def test_bad_records_in_a_list_name_index_and_record(feature_extractor, tmp_path):
    good = ECGRecord(ecg_mv().astype(np.float32), list(STANDARD_LEAD_NAMES), 500.0, {"name": "good"})
    nan_signal = ecg_mv().astype(np.float32)
    nan_signal[0, 0] = np.nan
    bad = ECGRecord(nan_signal, list(STANDARD_LEAD_NAMES), 500.0, {"name": "JS00042"})
    with pytest.raises(ValueError, match="ECG 1 of the batch \\(record JS00042\\) contains NaN"):
        feature_extractor([good, bad])
    # A file that cannot be read: the index, and the reader names the file.
    missing = tmp_path / "missing.hea"
    header = tmp_path / "short.hea"
    header.write_text("short 12 500 100\n" + "".join(f"short.dat 16 1000/mV 16 0 0 0 0 {n}\n" for n in STANDARD_LEAD_NAMES))
    (np.zeros((100, 12), "<i2")).tofile(tmp_path / "short.dat")
    with pytest.raises(ValueError, match="ECG 1 of the batch: WFDB header not found: .*missing.hea"):
        feature_extractor([good, missing])
    with pytest.raises(ValueError, match=f"ECG 0 of the batch \\({header}\\): The ECG is 0.2 s long"):
        feature_extractor([header, good])


def test_bad_item_of_a_list_with_a_wrong_shape(feature_extractor):
    with pytest.raises(ValueError, match="ECG 1 of the batch: each ECG of a list must be 2-D"):
        feature_extractor([ecg_mv(), np.zeros((2, 12, LENGTH)), ecg_mv()], sampling_rate=FS)
    with pytest.raises(TypeError, match="ECG 1 of the batch: ECG values must be real numbers"):
        feature_extractor([ecg_mv(), np.full((12, LENGTH), "x")], sampling_rate=FS)


# -- 14. lead_names given as a string -------------------------------------------------------------


@pytest.mark.parametrize("names", ["I", "II", "I II III aVR aVL aVF V1 V2 V3 V4 V5 V6"])
def test_lead_names_string_is_an_error(feature_extractor, names):
    with pytest.raises(ValueError, match="lead_names must be a list of lead names.*got the string"):
        feature_extractor(ecg_mv(1), sampling_rate=FS, lead_names=names)


def test_lead_names_other_types(feature_extractor):
    with pytest.raises(TypeError, match="lead_names must be strings, got int"):
        feature_extractor(ecg_mv(2), sampling_rate=FS, lead_names=["I", 2])
    with pytest.raises(TypeError, match="lead_names must be a list of strings, got int"):
        feature_extractor(ecg_mv(2), sampling_rate=FS, lead_names=7)
    # Tuples and numpy arrays of names are fine.
    a = values(feature_extractor, ecg_mv(2), sampling_rate=FS, lead_names=("I", "II"))
    b = values(feature_extractor, ecg_mv(2), sampling_rate=FS, lead_names=np.array(["I", "II"]))
    np.testing.assert_array_equal(a, b)
