"""Hostile input to sliding windows (external review, part B): `score_windows` / `window="sliding"`
and `iter_ecg_windows` follow the plain call's rules and settings, cover the tail, and refuse
strides and `top_k` values that would silently give wrong or unbounded results.

Records are real (LUDB fixtures, joined into a 19.9 s record); hostile files are made in `tmp_path`.
"""
import math
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline

from pipeline_dbeta import TASK
from processing_dbeta import (
    MAX_WINDOWS,
    STANDARD_LEAD_NAMES,
    ECGRecord,
    iter_ecg_windows,
    read_wfdb_record,
)


FIXTURES = Path(__file__).resolve().parent / "fixtures"
LUDB = FIXTURES / "ludb"
LABELS = ["AFIB", "sinus rhythm", "LBBB"]
INDEPENDENT = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1-V6 in the standard order


@pytest.fixture(scope="module")
def classifier(model_folder):
    return pipeline(TASK, model=str(model_folder), trust_remote_code=True, device="cpu")


def write_record(folder: Path, name: str, signal_mv: np.ndarray, rate: int = 500) -> Path:
    """A 12-lead WFDB format-16 record at 1000 adu/mV (1 uV steps) of `signal_mv`."""
    digital = np.round(signal_mv * 1000).astype("<i2")
    digital.T.tofile(folder / f"{name}.dat")
    lines = [f"{name} 12 {rate} {signal_mv.shape[1]}"]
    lines += [f"{name}.dat 16 1000/mV 16 0 0 0 0 {lead}" for lead in STANDARD_LEAD_NAMES]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    return folder / name


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Real LUDB data: `joined` is record 1 then the first 9.9 s of record 2 (19.9 s); `twenty` is 20 s."""
    folder = tmp_path_factory.mktemp("records")
    first, second = read_wfdb_record(LUDB / "1").signal, read_wfdb_record(LUDB / "2").signal
    write_record(folder, "joined", np.concatenate([first, second[:, :4950]], axis=1))
    write_record(folder, "twenty", np.concatenate([first, second], axis=1))
    return folder


def scores(result):
    return {item["label"]: item["score"] for item in result}


def assert_same_scores(got, expected, abs=1e-6):
    assert [item["label"] for item in got] == [item["label"] for item in expected]
    for a, b in zip(got, expected):
        assert a["score"] == pytest.approx(b["score"], abs=abs)


def assert_same_windows(got, expected, abs=1e-6):
    assert [window["start"] for window in got] == [window["start"] for window in expected]
    for a, b in zip(got, expected):
        assert a["scores"] == pytest.approx(b["scores"], abs=abs)


def error_of(function):
    with pytest.raises(Exception) as caught:
        function()
    return caught.value


# ------------------------------------------------------------------------------------------------
# 4. Construction-time settings: one path for `__call__` and `score_windows`
# ------------------------------------------------------------------------------------------------


SETTINGS = {
    "hypothesis_template": "ECG showing {}.",
    "multi_label": False,
    "labels_are_codes": False,
    "normalize_text": False,
    "top_k": 2,
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_construction_time_setting_changes_windows_as_it_changes_plain_calls(model_folder, classifier, name):
    configured = pipeline(
        TASK, model=str(model_folder), trust_remote_code=True, device="cpu", candidate_labels=LABELS,
        **{name: SETTINGS[name]},
    )
    path = str(LUDB / "1")  # 10 s: one window, which is the plain call's input
    plain = configured(path)
    windowed = configured(path, window="sliding")
    assert_same_scores(windowed, plain)
    default = classifier(path, candidate_labels=LABELS)
    if name == "top_k":
        assert len(windowed) == 2 and len(default) == 3
    else:  # the setting changes the scores, and changes them identically
        assert scores(plain) != pytest.approx(scores(default), abs=1e-6)
        assert_same_scores(classifier(path, candidate_labels=LABELS, window="sliding"), default)


def test_all_construction_time_settings_on_every_window(model_folder, records):
    configured = pipeline(
        TASK, model=str(model_folder), trust_remote_code=True, device="cpu", candidate_labels=LABELS, **SETTINGS
    )
    path = str(records / "joined")
    result = configured(path, window="sliding", return_windows=True)
    assert [window["start"] for window in result["windows"]] == [0.0, 9.9]
    for window, (start, record) in zip(result["windows"], iter_ecg_windows(path)):
        expected = configured(record, top_k=3)  # every label, the other settings from construction
        assert window["start"] == start
        assert window["scores"] == pytest.approx(scores(expected), abs=1e-6)
        assert sum(window["scores"].values()) == pytest.approx(1.0, abs=1e-5)  # multi_label=False: a softmax
    assert len(result["scores"]) == 2  # top_k=2 from construction
    # Call-time settings override construction-time ones, in both paths alike.
    overridden = configured(path, window="sliding", multi_label=True, top_k=3, return_windows=True)
    for window, (start, record) in zip(overridden["windows"], iter_ecg_windows(path)):
        assert window["scores"] == pytest.approx(scores(configured(record, multi_label=True, top_k=3)), abs=1e-6)
    # The explicit keywords the CLI passes give the same as construction-time settings.
    explicit = configured.score_windows(path, LABELS, return_windows=True, **SETTINGS)
    assert_same_windows(explicit["windows"], result["windows"])
    assert_same_scores(explicit["scores"], result["scores"])


def test_labels_are_required_in_both_paths(classifier):
    for call in (lambda: classifier(str(LUDB / "1")), lambda: classifier(str(LUDB / "1"), window="sliding")):
        assert "`candidate_labels` is required" in str(error_of(call))


# ------------------------------------------------------------------------------------------------
# 5. The lead rules of the plain call
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [[1], INDEPENDENT, list(range(11))])
def test_unnamed_reduced_lead_sets_are_refused_like_plain_calls(classifier, rows):
    record = read_wfdb_record(LUDB / "1")
    leads = record.signal[rows]
    plain = error_of(lambda: classifier(leads, candidate_labels=LABELS, sampling_rate=500))
    windowed = error_of(lambda: classifier(leads, candidate_labels=LABELS, sampling_rate=500, window="sliding"))
    assert type(plain) is type(windowed) is ValueError
    assert str(plain) == str(windowed)
    assert f"Got {len(rows)} leads without `lead_names`" in str(windowed)
    assert str(error_of(lambda: iter_ecg_windows(leads, sampling_rate=500))) == str(plain)
    # Named, they are scored, window by window as in a plain call.
    names = [record.lead_names[row] for row in rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_scores(
            classifier(leads, candidate_labels=LABELS, sampling_rate=500, lead_names=names, window="sliding"),
            classifier(leads, candidate_labels=LABELS, sampling_rate=500, lead_names=names),
        )


def test_array_lead_name_errors_match(classifier):
    leads = read_wfdb_record(LUDB / "1").signal[:2]
    for names in (["I", "I"], ["I", "V7"], "II", ["I", "II", "III"]):
        kwargs = dict(candidate_labels=LABELS, sampling_rate=500, lead_names=names)
        assert str(error_of(lambda: classifier(leads, **kwargs))) == str(
            error_of(lambda: classifier(leads, window="sliding", **kwargs))
        )


def test_array_rate_follows_the_plain_rule(classifier):
    signal = read_wfdb_record(LUDB / "1").signal
    # Exactly the model's length: its rate is assumed, in both paths.
    assert_same_scores(
        classifier(signal, candidate_labels=LABELS, window="sliding"), classifier(signal, candidate_labels=LABELS)
    )
    longer = np.concatenate([signal, signal], axis=1)
    plain = error_of(lambda: classifier(longer, candidate_labels=LABELS))
    windowed = error_of(lambda: classifier(longer, candidate_labels=LABELS, window="sliding"))
    assert str(plain) == str(windowed) and "sampling_rate is required" in str(plain)
    for rate in (True, "500", 20.0):
        assert str(error_of(lambda: classifier(longer, candidate_labels=LABELS, sampling_rate=rate))) == str(
            error_of(lambda: classifier(longer, candidate_labels=LABELS, sampling_rate=rate, window="sliding"))
        )


# ------------------------------------------------------------------------------------------------
# 6. A file or record describes itself
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampling_rate": 250}, "sampling_rate=250 contradicts the record's rate 500.0"),
        ({"lead_names": list(reversed(STANDARD_LEAD_NAMES))}, "contradicts the record's leads"),
        ({"lead_names": list(STANDARD_LEAD_NAMES[:6])}, "contradicts the record's leads"),
        ({"units": "uV"}, "units='uV' contradicts the record, whose signal is in millivolts"),
    ],
)
def test_contradicting_a_file_or_record_is_refused_in_both_paths(classifier, records, kwargs, message):
    path = str(records / "joined")
    record = read_wfdb_record(path)
    for ecg in (path, record, {"signal": path, **kwargs}):
        call_kwargs = {} if isinstance(ecg, dict) else kwargs
        plain = error_of(lambda: classifier(ecg, candidate_labels=LABELS, **call_kwargs))
        windowed = error_of(lambda: classifier(ecg, candidate_labels=LABELS, window="sliding", **call_kwargs))
        assert isinstance(plain, ValueError) and str(plain) == str(windowed)
        assert message in str(windowed)
        assert (path in str(windowed)) if not isinstance(ecg, ECGRecord) else ("record joined" in str(windowed))
    assert message in str(error_of(lambda: iter_ecg_windows(path, **kwargs)))


def test_confirming_a_file_is_fine(classifier, records):
    path = str(records / "joined")
    confirmed = classifier(path, candidate_labels=LABELS, window="sliding", sampling_rate=500.0,
                           lead_names=[name.lower() for name in STANDARD_LEAD_NAMES], units="mV")
    assert_same_scores(confirmed, classifier(path, candidate_labels=LABELS, window="sliding"))


# ------------------------------------------------------------------------------------------------
# 7. The tail is covered by a window ending with the recording
# ------------------------------------------------------------------------------------------------


def test_tail_window_is_aligned_to_the_end(records):
    path = records / "joined"
    record = read_wfdb_record(path)
    assert record.num_samples == 9950
    for stride, starts in ((None, [0.0, 9.9]), (4.0, [0.0, 4.0, 8.0, 9.9]), (9.9, [0.0, 9.9]), (2.5, [0.0, 2.5, 5.0, 7.5, 9.9])):
        for source, kwargs in ((path, {}), (record, {}), (record.signal, {"sampling_rate": 500})):
            windows = list(iter_ecg_windows(source, 10.0, stride, **kwargs))
            assert [start for start, _ in windows] == starts
            for start, window in windows:
                first = round(start * 500)
                assert window.metadata.get("window_start_s", start) == start
                np.testing.assert_array_equal(window.signal, record.signal[:, first : first + 5000])
            assert windows[-1][1].signal.shape == (12, 5000)  # the last window is full and ends the record
    twenty = list(iter_ecg_windows(records / "twenty", 10.0))
    assert [start for start, _ in twenty] == [0.0, 10.0]  # no extra window when the tail is covered


def test_starts_are_real_times_with_strides_of_fractional_samples():
    signal = read_wfdb_record(LUDB / "1").signal[:, :3000]  # 12 s of real data read as 250 Hz
    windows = list(iter_ecg_windows(signal, 2.0, 0.333, sampling_rate=250))
    starts = [start for start, _ in windows]
    assert starts[:3] == [0.0, 83 / 250, 166 / 250]  # 0.333 s = 83.25 samples, rounded to 83
    assert starts[-1] == (3000 - 500) / 250 and all(w.metadata["window_start_s"] == s for s, w in windows)
    assert len(windows) == 31 + 1  # 31 strided windows (the last at 2490), then the one ending the record


def test_pipeline_scores_the_tail_window(classifier, records):
    path = str(records / "joined")
    result = classifier(path, candidate_labels=LABELS, window="sliding", return_windows=True)
    assert [window["start"] for window in result["windows"]] == [0.0, 9.9]
    record = read_wfdb_record(path)
    tail = ECGRecord(record.signal[:, -5000:], record.lead_names, 500.0, {"name": "tail"})
    assert result["windows"][1]["scores"] == pytest.approx(scores(classifier(tail, candidate_labels=LABELS)), abs=1e-6)
    mean = {label: np.mean([window["scores"][label] for window in result["windows"]]) for label in LABELS}
    assert scores(result["scores"]) == pytest.approx(mean, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# 8. top_k: one validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [-1, 0, 1.5, True, "2", np.float64(2.0)])
def test_bad_top_k_is_refused_in_both_paths(classifier, model_folder, top_k):
    path = str(LUDB / "1")
    plain = error_of(lambda: classifier(path, candidate_labels=LABELS, top_k=top_k))
    windowed = error_of(lambda: classifier(path, candidate_labels=LABELS, top_k=top_k, window="sliding"))
    assert isinstance(plain, ValueError) and str(plain) == str(windowed)
    assert "`top_k` must be a positive integer" in str(plain)
    with pytest.raises(ValueError, match="`top_k` must be a positive integer"):
        pipeline(TASK, model=str(model_folder), trust_remote_code=True, device="cpu", top_k=top_k)


def test_numpy_integer_top_k(classifier):
    path = str(LUDB / "1")
    plain = classifier(path, candidate_labels=LABELS, top_k=np.int64(2))
    assert len(plain) == 2
    assert_same_scores(classifier(path, candidate_labels=LABELS, top_k=np.int64(2), window="sliding"), plain)
    assert len(classifier(path, candidate_labels=LABELS, top_k=10, window="sliding")) == 3


# ------------------------------------------------------------------------------------------------
# 9. Strides and window counts are checked before reading
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def day_long(tmp_path_factory):
    """24 hours of 12 leads at 500 Hz (a sparse .dat): LUDB record 1, then a hole."""
    folder = tmp_path_factory.mktemp("holter")
    samples = 24 * 3600 * 500
    digital = np.round(read_wfdb_record(LUDB / "1").signal * 1000).astype("<i2")
    with open(folder / "day.dat", "wb") as handle:
        handle.write(digital.T.tobytes())
        handle.truncate(12 * 2 * samples)
    lines = [f"day 12 500 {samples}"] + [f"day.dat 16 1000/mV 16 0 0 0 0 {lead}" for lead in STANDARD_LEAD_NAMES]
    (folder / "day.hea").write_text("\n".join(lines) + "\n")
    return folder / "day"


def refused_quickly(function, match):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as caught:
            function()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"{peak / 2**20:.0f} MiB traced before refusing"
    return caught.value


@pytest.mark.parametrize("stride", [1e-9, 0.001, 0.0019])
def test_stride_below_one_sample_is_refused_before_reading(classifier, day_long, stride):
    error = refused_quickly(lambda: iter_ecg_windows(day_long, 10.0, stride), "is less than one sample at 500 Hz")
    assert f"stride_seconds={stride!r}" in str(error) and "day.hea" in str(error)
    refused_quickly(
        lambda: classifier(str(day_long), candidate_labels=LABELS, window="sliding", window_stride=stride),
        "less than one sample",
    )
    signal = read_wfdb_record(LUDB / "1").signal
    refused_quickly(lambda: iter_ecg_windows(signal, 10.0, stride, sampling_rate=500), "less than one sample")


def test_too_many_windows_are_refused_before_reading(classifier, day_long):
    error = refused_quickly(lambda: iter_ecg_windows(day_long, 10.0, 0.5), "more than MAX_WINDOWS")
    assert f"172781 windows of 5000 samples every 250 samples, more than MAX_WINDOWS ({MAX_WINDOWS})" in str(error)
    refused_quickly(
        lambda: classifier(str(day_long), candidate_labels=LABELS, window="sliding", window_stride=0.002),
        "more than MAX_WINDOWS",
    )
    # A stride of exactly one sample is allowed where the count stays bounded.
    first = read_wfdb_record(LUDB / "1").signal
    signal = np.concatenate([first, first[:, :100]], axis=1)  # 10.2 s
    assert [round(start * 500) for start, _ in iter_ecg_windows(signal, 10.0, 0.002, sampling_rate=500)] == list(range(101))


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "5", None])
def test_bad_window_lengths_and_strides(classifier, bad):
    signal = read_wfdb_record(LUDB / "1").signal
    with pytest.raises(ValueError, match="window_seconds must be a positive number"):
        iter_ecg_windows(signal, bad, sampling_rate=500)
    if bad is not None:
        with pytest.raises(ValueError, match="stride_seconds must be a positive number"):
            iter_ecg_windows(signal, 10.0, bad, sampling_rate=500)
        with pytest.raises(ValueError, match="stride_seconds must be a positive number"):
            classifier(str(LUDB / "1"), candidate_labels=LABELS, window="sliding", window_stride=bad)


def test_windows_longer_than_the_model_input_are_refused(classifier):
    with pytest.raises(ValueError, match="at most the model's input of 10 s"):
        classifier(str(LUDB / "1"), candidate_labels=LABELS, window="sliding", window_seconds=20)
    with pytest.raises(ValueError, match="less than one sample"):
        iter_ecg_windows(str(LUDB / "1"), 1e-9)


# ------------------------------------------------------------------------------------------------
# Own sweep: other settings, inputs and windows
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, value",
    [("multi_label", "False"), ("multi_label", 0), ("normalize_text", "no"), ("labels_are_codes", "yes")],
)
def test_non_boolean_flags_are_refused_in_both_paths(classifier, setting, value):
    path = str(LUDB / "1")
    plain = error_of(lambda: classifier(path, candidate_labels=LABELS, **{setting: value}))
    windowed = error_of(lambda: classifier(path, candidate_labels=LABELS, window="sliding", **{setting: value}))
    assert isinstance(plain, ValueError) and str(plain) == str(windowed) and f"`{setting}` must be" in str(plain)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"return_windows": "yes"}, "return_windows must be True or False"),
        ({"aggregation": "median"}, "aggregation must be 'mean' or 'max'"),
        ({"num_workers": 2}, "Unexpected arguments"),
    ],
)
def test_bad_window_options(classifier, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        classifier(str(LUDB / "1"), candidate_labels=LABELS, window="sliding", **kwargs)


def test_nan_and_flat_windows_name_the_window(classifier, records, tmp_path):
    record = read_wfdb_record(records / "joined")
    signal = record.signal.copy()
    signal[3, 7000] = np.nan
    with pytest.raises(ValueError, match="window at 9.9 s: .*contains NaN"):
        classifier(signal, candidate_labels=LABELS, sampling_rate=500, window="sliding")
    flat = np.concatenate([record.signal[:, :5000], np.zeros((12, 5000), np.float32)], axis=1)
    path = write_record(tmp_path, "half_flat", flat)
    error = error_of(lambda: classifier(str(path), candidate_labels=LABELS, window="sliding"))
    assert isinstance(error, ValueError)
    assert f"ECG ('{path}'): window at 10 s: record half_flat: every lead is flat" in str(error)
    # The plain call reads only the first 10 s, which are not flat.
    assert len(classifier(str(path), candidate_labels=LABELS)) == 3


def test_units_of_an_array_apply_to_every_window(classifier, records):
    signal = read_wfdb_record(records / "joined").signal
    in_mv = classifier(signal, candidate_labels=LABELS, sampling_rate=500, window="sliding", return_windows=True)
    in_uv = classifier(signal * 1000, candidate_labels=LABELS, sampling_rate=500, units="uV", window="sliding",
                       return_windows=True)
    assert_same_windows(in_uv["windows"], in_mv["windows"])
    tensor = classifier(torch.from_numpy(signal), candidate_labels=LABELS, sampling_rate=500, window="sliding")
    assert_same_scores(tensor, in_mv["scores"])


def test_batches_and_odd_inputs(classifier, records, tmp_path):
    path = str(records / "joined")
    single = classifier(path, candidate_labels=LABELS, window="sliding")
    both = classifier([path, str(LUDB / "1")], candidate_labels=LABELS, window="sliding", batch_size=1)
    assert len(both) == 2
    assert_same_scores(both[0], single)
    assert_same_scores(both[1], classifier(str(LUDB / "1"), candidate_labels=LABELS))
    signal = read_wfdb_record(path).signal
    with pytest.raises(ValueError, match="An ECG must be 2-D"):
        classifier.score_windows(signal[None], LABELS, sampling_rate=500)
    with pytest.raises(TypeError, match="must be real numbers"):
        iter_ecg_windows(signal.astype(np.complex64), sampling_rate=500)
    with pytest.raises(TypeError, match="must be real numbers"):
        iter_ecg_windows(signal > 0, sampling_rate=500)
    (tmp_path / "x.hdf5").write_bytes(b"\x89HDF")
    with pytest.raises(ValueError, match="HDF5 file of many ECGs: use read_code_hdf5"):
        classifier(str(tmp_path / "x.hdf5"), candidate_labels=LABELS, window="sliding")
    with pytest.raises(ValueError, match="No ECG record at"):
        classifier(str(tmp_path / "missing"), candidate_labels=LABELS, window="sliding")
