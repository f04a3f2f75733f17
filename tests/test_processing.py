"""DBetaFeatureExtractor, DBetaProcessor and the demo tokenizer."""
import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from dbeta.train.demo.build_demo_tokenizer import DEMO_TOKENIZER_DIR, SENTINEL_TOKENS, load_demo_tokenizer
from processing_dbeta import (
    MIMIC_LEAD_NAMES,
    STANDARD_LEAD_NAMES,
    DBetaFeatureExtractor,
    DBetaProcessor,
    read_ecg_file,
)


FS = 500
LENGTH = 5000


@pytest.fixture(scope="module")
def feature_extractor():
    return DBetaFeatureExtractor()


@pytest.fixture(scope="module")
def tokenizer():
    return load_demo_tokenizer()


@pytest.fixture(scope="module")
def processor(feature_extractor, tokenizer):
    return DBetaProcessor(feature_extractor, tokenizer)


def random_ecg(*shape, seed=0):
    return np.random.default_rng(seed).normal(scale=0.3, size=shape).astype(np.float32)


def lead_index_ecg(num_leads=12, length=LENGTH):
    """Lead k starts at the value k + 1, so the output rows' first samples say where each lead went.

    A 0.1 mV, 1 Hz sine (0 at the first sample) rides on each lead: constant leads are flat, and an
    ECG whose every lead is flat is refused.
    """
    wave = 0.1 * np.sin(2 * np.pi * np.arange(length) / FS)
    return (np.arange(1, num_leads + 1)[:, None] + wave[None]).astype(np.float32)


def values(feature_extractor, ecg, **kwargs):
    return feature_extractor(ecg, **kwargs)["input_values"]


# -- defaults and output format ------------------------------------------------------------------


def test_defaults_and_output(feature_extractor):
    assert feature_extractor.feature_size == 12
    assert feature_extractor.sampling_rate == 500 and feature_extractor.num_samples == 5000
    assert feature_extractor.lead_names == list(MIMIC_LEAD_NAMES)
    assert feature_extractor.padding_value == 0.0 and feature_extractor.normalize is None
    assert feature_extractor.model_input_names == ["input_values"]

    output = feature_extractor(random_ecg(12, LENGTH), sampling_rate=FS)
    assert list(output.keys()) == ["input_values"]
    assert isinstance(output["input_values"], np.ndarray)
    assert output["input_values"].shape == (1, 12, LENGTH) and output["input_values"].dtype == np.float32
    tensor = feature_extractor(random_ecg(12, LENGTH), sampling_rate=FS, return_tensors="pt")["input_values"]
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.shape == (1, 12, LENGTH)


def test_millivolts_pass_through_unchanged(feature_extractor):
    ecg = random_ecg(12, LENGTH)
    output = values(feature_extractor, ecg, sampling_rate=FS, lead_names=list(MIMIC_LEAD_NAMES))
    np.testing.assert_array_equal(output[0], ecg)


# -- lead order ---------------------------------------------------------------------------------


def test_standard_order_is_reordered_to_mimic(feature_extractor):
    output = values(feature_extractor, lead_index_ecg(), sampling_rate=FS)[0]
    # Standard order I II III aVR aVL aVF ...: aVL (5) and aVF (6) swap rows.
    np.testing.assert_array_equal(output[:, 0], [1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11, 12])


def test_named_leads_any_order_case_insensitive(feature_extractor):
    shuffled = ["v6", "AVF", "V2", "i", "avl", "V4", "III", "aVR", "v1", "II", "V5", "v3"]
    ecg = lead_index_ecg()  # row k of the input is lead shuffled[k]
    output = values(feature_extractor, ecg, sampling_rate=FS, lead_names=shuffled)[0]
    lower = [name.lower() for name in shuffled]
    expected = [lower.index(name.lower()) + 1 for name in MIMIC_LEAD_NAMES]
    np.testing.assert_array_equal(output[:, 0], expected)


def test_extractor_with_standard_model_order():
    feature_extractor = DBetaFeatureExtractor(lead_names=list(STANDARD_LEAD_NAMES))
    output = values(feature_extractor, lead_index_ecg(), sampling_rate=FS)[0]
    np.testing.assert_array_equal(output[:, 0], np.arange(1, 13))


def test_more_than_12_named_leads_keeps_the_standard_12(feature_extractor):
    names = list(STANDARD_LEAD_NAMES) + ["vx", "vy", "vz"]
    ecg = lead_index_ecg(15)
    output = values(feature_extractor, ecg, sampling_rate=FS, lead_names=names)
    np.testing.assert_array_equal(output, values(feature_extractor, ecg[:12], sampling_rate=FS))


def test_eight_independent_leads_derive_the_other_four(feature_extractor):
    ecg = random_ecg(8, LENGTH).astype(np.float64)
    names = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    output = values(feature_extractor, ecg, sampling_rate=FS, lead_names=names)[0]
    lead = {name: output[index] for index, name in enumerate(MIMIC_LEAD_NAMES)}
    lead_i, lead_ii = ecg[0], ecg[1]
    np.testing.assert_allclose(lead["I"], lead_i, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lead["III"], lead_ii - lead_i, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lead["aVR"], -(lead_i + lead_ii) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lead["aVL"], lead_i - lead_ii / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lead["aVF"], lead_ii - lead_i / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(output[6:], ecg[2:], rtol=1e-6, atol=1e-7)


def test_derived_leads_match_a_real_recording(feature_extractor, fixtures_dir):
    """On a real CinC record (µV integers), the derived limb leads equal the recorded ones within 4 µV."""
    record = read_ecg_file(fixtures_dir / "cinc2021" / "E07501.hea")
    full = values(feature_extractor, record)
    keep = [0, 1, 6, 7, 8, 9, 10, 11]
    derived = values(
        feature_extractor, record.signal[keep], sampling_rate=500, lead_names=[record.lead_names[k] for k in keep]
    )
    np.testing.assert_allclose(derived, full, atol=4e-3)


@pytest.mark.parametrize(
    "names",
    [["I", "II", "III", "aVR", "aVL", "aVF"], ["I", "II", "V2"], ["I", "II"], ["II"]],
    ids=["6-lead", "3-lead", "2-lead", "1-lead"],
)
def test_reduced_lead_sets_are_zero_filled(feature_extractor, names):
    ecg = random_ecg(len(names), LENGTH) + 1.0  # no exact zeros
    output = values(feature_extractor, ecg, sampling_rate=FS, lead_names=names)[0]
    for row, name in enumerate(MIMIC_LEAD_NAMES):
        if name in names:
            np.testing.assert_array_equal(output[row], ecg[names.index(name)])
        else:
            assert not output[row].any(), name


def test_reduced_lead_set_with_limb_lead_extra(feature_extractor):
    """I, II, III, V1-V6: only aVR, aVL, aVF are derived; the recorded III is kept as is."""
    names = ["I", "II", "III", "V1", "V2", "V3", "V4", "V5", "V6"]
    ecg = random_ecg(9, LENGTH)
    output = values(feature_extractor, ecg, sampling_rate=FS, lead_names=names)[0]
    np.testing.assert_array_equal(output[2], ecg[2])
    np.testing.assert_allclose(output[3], -(ecg[0] + ecg[1]) / 2, rtol=1e-5, atol=1e-6)


# -- units, resampling, length --------------------------------------------------------------------


def test_units(feature_extractor):
    ecg = random_ecg(12, LENGTH)
    expected = values(feature_extractor, ecg, sampling_rate=FS)
    np.testing.assert_allclose(values(feature_extractor, ecg * 1000, sampling_rate=FS, units="uV"), expected, rtol=1e-6)
    np.testing.assert_allclose(values(feature_extractor, ecg * 1000, sampling_rate=FS, units="µV"), expected, rtol=1e-6)
    np.testing.assert_allclose(values(feature_extractor, ecg / 1000, sampling_rate=FS, units="V"), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="units"):
        feature_extractor(ecg, sampling_rate=FS, units="mmHg")


def _peak_frequency(trace, sampling_rate):
    spectrum = np.abs(np.fft.rfft(trace))
    return np.fft.rfftfreq(trace.size, d=1 / sampling_rate)[spectrum.argmax()]


@pytest.mark.parametrize("input_rate", [250, 400, 1000, 360])
def test_resampling_keeps_a_sine_frequency(feature_extractor, input_rate):
    time = np.arange(int(10 * input_rate)) / input_rate
    sine = np.sin(2 * np.pi * 10.0 * time)
    ecg = np.tile(sine, (12, 1))
    output = values(feature_extractor, ecg, sampling_rate=input_rate)[0]
    assert output.shape == (12, LENGTH)
    assert _peak_frequency(output[0], FS) == pytest.approx(10.0, abs=0.1)
    # Amplitude and phase too: away from the edges it is the same sine sampled at 500 Hz.
    expected = np.sin(2 * np.pi * 10.0 * np.arange(LENGTH) / FS)
    np.testing.assert_allclose(output[0, 250:-250], expected[250:-250], atol=0.02)


def test_longer_input_keeps_the_first_10_seconds(feature_extractor):
    ecg = random_ecg(12, 6500)
    output = values(feature_extractor, ecg, sampling_rate=FS, lead_names=list(MIMIC_LEAD_NAMES))
    np.testing.assert_array_equal(output[0], ecg[:, :LENGTH])


def test_shorter_input_is_zero_padded_with_a_warning(feature_extractor):
    ecg = random_ecg(12, 3000) + 1.0
    with pytest.warns(UserWarning, match="zero-padded"):
        output = values(feature_extractor, ecg, sampling_rate=FS, lead_names=list(MIMIC_LEAD_NAMES))
    assert output.shape == (1, 12, LENGTH)
    np.testing.assert_array_equal(output[0, :, :3000], ecg)
    assert not output[0, :, 3000:].any()
    # No warning for a full-length input.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feature_extractor(random_ecg(12, LENGTH), sampling_rate=FS)


def test_sampling_rate_may_be_omitted_only_for_model_length_input(feature_extractor):
    ecg = random_ecg(12, LENGTH)
    np.testing.assert_array_equal(values(feature_extractor, ecg), values(feature_extractor, ecg, sampling_rate=FS))
    with pytest.raises(ValueError, match="sampling_rate is required"):
        feature_extractor(random_ecg(12, 4000))


# -- batches and input types ---------------------------------------------------------------------


def test_batch_equals_singles(feature_extractor):
    batch = random_ecg(3, 12, LENGTH)
    together = values(feature_extractor, batch, sampling_rate=FS)
    assert together.shape == (3, 12, LENGTH)
    for index in range(3):
        np.testing.assert_array_equal(together[index], values(feature_extractor, batch[index], sampling_rate=FS)[0])


def test_list_of_different_lengths(feature_extractor):
    short, long = random_ecg(12, 3000, seed=1), random_ecg(12, 6000, seed=2)  # 7.5 s and 15 s at 400 Hz
    with pytest.warns(UserWarning, match="zero-padded"):
        together = values(feature_extractor, [short, long], sampling_rate=400)
    with pytest.warns(UserWarning, match="zero-padded"):
        first = values(feature_extractor, short, sampling_rate=400)
    assert together.shape == (2, 12, LENGTH)
    np.testing.assert_array_equal(together[0], first[0])
    np.testing.assert_array_equal(together[1], values(feature_extractor, long, sampling_rate=400)[0])


def test_numpy_torch_and_list_inputs_agree(feature_extractor):
    ecg = random_ecg(2, 12, 2500)
    reference = values(feature_extractor, ecg, sampling_rate=250)
    np.testing.assert_array_equal(values(feature_extractor, torch.from_numpy(ecg), sampling_rate=250), reference)
    np.testing.assert_array_equal(values(feature_extractor, ecg.tolist(), sampling_rate=250), reference)
    np.testing.assert_array_equal(values(feature_extractor, list(ecg), sampling_rate=250), reference)
    one_trace_per_lead = [torch.from_numpy(trace) for trace in ecg[0]]
    np.testing.assert_array_equal(values(feature_extractor, one_trace_per_lead, sampling_rate=250), reference[:1])
    np.testing.assert_allclose(values(feature_extractor, ecg.astype(np.float64), sampling_rate=250), reference)
    integers = (ecg * 1000).round().astype(np.int16)
    np.testing.assert_allclose(
        values(feature_extractor, integers, sampling_rate=250, units="uV"),
        values(feature_extractor, integers.astype(np.float64) / 1000, sampling_rate=250),
        rtol=1e-6,
    )


def test_records_and_paths(feature_extractor, fixtures_dir):
    path = fixtures_dir / "ludb" / "1.hea"
    record = read_ecg_file(path)
    expected = values(feature_extractor, record.signal, sampling_rate=500, lead_names=record.lead_names)
    np.testing.assert_array_equal(values(feature_extractor, record), expected)
    np.testing.assert_array_equal(values(feature_extractor, str(path)), expected)
    both = values(feature_extractor, [path, fixtures_dir / "cpsc2018" / "A1980.mat"])
    assert both.shape == (2, 12, LENGTH)
    np.testing.assert_array_equal(both[0], expected[0])
    with pytest.raises(ValueError, match="contradicts"):
        feature_extractor(record, sampling_rate=250)


def test_normalize_options():
    ecg = random_ecg(12, LENGTH) * 2 + 0.5
    zscore = values(DBetaFeatureExtractor(normalize="zscore"), ecg, sampling_rate=FS)[0]
    np.testing.assert_allclose(zscore.mean(axis=-1), 0, atol=1e-5)
    np.testing.assert_allclose(zscore.std(axis=-1), 1, atol=1e-4)
    minmax = values(DBetaFeatureExtractor(), ecg, sampling_rate=FS, normalize="minmax")[0]
    assert minmax.min() == pytest.approx(0) and minmax.max() == pytest.approx(1)
    reduced = values(DBetaFeatureExtractor(normalize="zscore"), ecg[:2], sampling_rate=FS, lead_names=["I", "II"])[0]
    assert not reduced[2:].any()  # zero-filled leads stay zero
    with pytest.raises(ValueError, match="normalize"):
        DBetaFeatureExtractor(normalize="robust")


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ecg, kwargs, match",
    [
        (random_ecg(11, LENGTH), {}, "11 leads without `lead_names`"),
        (random_ecg(15, LENGTH), {}, "15 leads without `lead_names`"),
        (random_ecg(8, LENGTH), {}, "8 leads without `lead_names`"),
        (random_ecg(12, LENGTH), {"lead_names": ["I", "II"]}, "2 entries but the ECG has 12 leads"),
        (random_ecg(3, LENGTH), {"lead_names": ["I", "II", "MLII"]}, "Unknown lead names \\['MLII'\\]"),
        (random_ecg(2, LENGTH), {"lead_names": ["I", "V7"]}, "Unknown lead names"),
        (random_ecg(2, LENGTH), {"lead_names": ["vx", "vy"]}, "Unknown lead names"),
        (random_ecg(2, LENGTH), {"lead_names": ["I", "i"]}, "Repeated lead names"),
        (np.zeros((12, 0), np.float32), {}, "Empty"),
        (np.zeros((0, 12, LENGTH), np.float32), {}, "Empty"),
        ([], {}, "Empty"),
        (random_ecg(12, 400), {}, "at least 1 s"),
        (random_ecg(12, 4000), {"sampling_rate": None}, "sampling_rate is required"),
        (random_ecg(12, LENGTH), {"sampling_rate": 0}, "positive"),
        (random_ecg(12, LENGTH), {"sampling_rate": float("nan")}, "positive"),
        (random_ecg(LENGTH), {}, "shape \\(leads, samples\\)"),
        (random_ecg(1, 2, 12, LENGTH), {}, "shape \\(leads, samples\\)"),
    ],
)
def test_value_errors(feature_extractor, ecg, kwargs, match):
    kwargs = {"sampling_rate": FS, **kwargs}
    with pytest.raises(ValueError, match=match):
        feature_extractor(ecg, **kwargs)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(feature_extractor, bad_value):
    ecg = random_ecg(12, LENGTH)
    ecg[4, 100] = bad_value
    with pytest.raises(ValueError, match="NaN or infinite"):
        feature_extractor(ecg, sampling_rate=FS)


@pytest.mark.parametrize(
    "ecg",
    [
        random_ecg(12, LENGTH).astype(np.complex64),
        np.zeros((12, LENGTH), dtype=bool),
        np.full((12, LENGTH), "0.1"),
        np.empty((12, LENGTH), dtype=object),
        torch.zeros(12, LENGTH, dtype=torch.complex64),
        torch.zeros(12, LENGTH, dtype=torch.bool),
        [["a"] * LENGTH] * 12,
    ],
    ids=["complex", "bool", "str", "object", "torch-complex", "torch-bool", "list-of-str"],
)
def test_bad_dtypes(feature_extractor, ecg):
    with pytest.raises(TypeError, match="real numbers"):
        feature_extractor(ecg, sampling_rate=FS)


def test_bad_sampling_rate_type(feature_extractor):
    with pytest.raises(TypeError, match="sampling_rate"):
        feature_extractor(random_ecg(12, LENGTH), sampling_rate="500")


def test_bad_model_lead_names():
    with pytest.raises(ValueError, match="lead_names"):
        DBetaFeatureExtractor(lead_names=["I", "II"])
    with pytest.raises(ValueError, match="lead_names"):
        DBetaFeatureExtractor(lead_names=list(STANDARD_LEAD_NAMES[:11]) + ["I"])


# -- processor ------------------------------------------------------------------------------


def test_processor_ecg_and_text(processor, tokenizer):
    ecg = random_ecg(2, 12, LENGTH)
    texts = ["Sinus rhythm", "Atrial fibrillation with rapid ventricular response. Abnormal ECG"]
    output = processor(ecg=ecg, text=texts, sampling_rate=FS, return_tensors="pt")
    assert set(output.keys()) == {"input_values", "input_ids", "attention_mask"}
    assert output["input_values"].shape == (2, 12, LENGTH)
    np.testing.assert_array_equal(output["input_values"].numpy(), values(processor.feature_extractor, ecg, sampling_rate=FS))
    # Padded to the longest text, with </s> appended and <pad> = 0.
    lengths = [len(tokenizer(text)["input_ids"]) for text in texts]
    assert output["input_ids"].shape == (2, max(lengths))
    assert output["attention_mask"].sum(dim=1).tolist() == lengths
    assert output["input_ids"][0, lengths[0] - 1] == tokenizer.eos_token_id == 1
    assert (output["input_ids"][0, lengths[0]:] == 0).all()
    assert processor.model_input_names == ["input_values", "input_ids", "attention_mask"]


def test_processor_single_modalities_and_truncation(processor):
    ecg_only = processor(ecg=random_ecg(12, LENGTH), sampling_rate=FS)
    assert list(ecg_only.keys()) == ["input_values"]
    text_only = processor(text="Sinus bradycardia")
    assert set(text_only.keys()) == {"input_ids", "attention_mask"}
    long_text = " ".join(["Left ventricular hypertrophy with repolarization abnormality"] * 200)
    truncated = processor(text=[long_text, "Normal ECG"], return_tensors="np")
    assert truncated["input_ids"].shape == (2, 254)
    assert truncated["input_ids"][0, -1] == 1
    assert processor(text=long_text, max_length=32)["input_ids"].__len__() == 32
    with pytest.raises(ValueError, match="Provide"):
        processor()
    with pytest.raises(TypeError, match="text"):
        processor(text=[1, 2])


def test_processor_passes_ecg_options(processor):
    ecg = random_ecg(2, 2000)
    output = processor(ecg=ecg * 1000, sampling_rate=200, lead_names=["ii", "i"], units="uV")
    np.testing.assert_allclose(
        output["input_values"], values(processor.feature_extractor, ecg, sampling_rate=200, lead_names=["II", "I"]),
        rtol=1e-5, atol=1e-6,
    )


def test_processor_round_trip_in_a_fresh_process(processor, tmp_path):
    """Saved folder -> AutoProcessor/AutoFeatureExtractor with trust_remote_code in a process that
    never imported the package: the classes come from the folder's copy of processing_dbeta.py."""
    folder = tmp_path / "processor"
    processor.save_pretrained(folder)
    assert (folder / "processing_dbeta.py").is_file()
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_dbeta.DBetaProcessor"
    assert config["feature_extractor"]["auto_map"]["AutoFeatureExtractor"] == "processing_dbeta.DBetaFeatureExtractor"

    ecg = random_ecg(2, 12, 3600, seed=3)
    np.save(tmp_path / "ecg.npy", ecg)
    texts = ["Sinus rhythm. Normal ECG", "Left bundle branch block"]
    expected = processor(ecg=ecg, text=texts, sampling_rate=360, return_tensors="np")

    script = textwrap.dedent(
        f"""
        import sys, warnings
        import numpy as np
        from transformers import AutoFeatureExtractor, AutoProcessor
        assert "processing_dbeta" not in sys.modules and "dbeta" not in sys.modules
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        feature_extractor = AutoFeatureExtractor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "DBetaProcessor", type(processor)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        assert type(feature_extractor).__name__ == "DBetaFeatureExtractor"
        ecg = np.load({str(tmp_path / "ecg.npy")!r})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = processor(ecg=ecg, text={texts!r}, sampling_rate=360, return_tensors="np")
            alone = feature_extractor(ecg, sampling_rate=360)["input_values"]
        np.savez({str(tmp_path / "out.npz")!r}, alone=alone, **dict(output))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = np.load(tmp_path / "out.npz")
    for key in ("input_values", "input_ids", "attention_mask"):
        np.testing.assert_array_equal(reloaded[key], expected[key])
    np.testing.assert_array_equal(reloaded["alone"], expected["input_values"])


# -- demo tokenizer -------------------------------------------------------------------------


def test_demo_tokenizer_special_tokens(tokenizer):
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1 and tokenizer.unk_token_id == 2
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    sentinel_ids = tokenizer.convert_tokens_to_ids(SENTINEL_TOKENS)
    assert sentinel_ids[0] == len(tokenizer) - 1  # <extra_id_0> is the last id, as in T5
    assert sentinel_ids == list(range(len(tokenizer) - 1, len(tokenizer) - 11, -1))
    assert 500 <= len(tokenizer) <= 1100
    encoded = tokenizer("Sinus rhythm <extra_id_0> block")["input_ids"]
    assert encoded[-1] == 1 and sentinel_ids[0] in encoded
    assert tokenizer.unk_token_id not in tokenizer("QTc 480 ms; ST-T changes (V1-V3) & 1st degree A-V block")["input_ids"]


def test_demo_tokenizer_round_trip(tokenizer, tmp_path):
    texts = [
        "Sinus bradycardia. Left axis deviation. Abnormal ECG",
        "atrial fibrillation with rapid ventricular response",
        "Low QRS voltages in limb leads",
        "unseen words: Takotsubo cardiomyopathy",
    ]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in texts:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert reloaded.decode(reloaded(text)["input_ids"], skip_special_tokens=True) == text
    assert (DEMO_TOKENIZER_DIR / "tokenizer.json").is_file()
