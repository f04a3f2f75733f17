"""Hospital exports: DICOM waveform, GE MUSE XML, Philips XML, HL7 aECG, SCP-ECG, EDF, ISHNE.

Every format is read from a file written by a vendor's system or an independent tool (provenance
and licences: tests/fixtures/clinical/README.md), by content whatever its name, and checked against
an independent decoding of the same file: raw samples and gains decoded here from the file's own
fields, another library's decoder, or the real record the file was written from. Then through the
four surfaces (processor, pipeline, `dbeta embed/classify/report`, evaluation) and against damaged
or unsupported variants, which must fail with one line naming the file.
"""

import base64
import csv
import datetime
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from zero_shot_utils import LUDB_FIXTURES

from processing_dbeta import (
    MIMIC_LEAD_NAMES,
    DBetaFeatureExtractor,
    canonical_lead_name,
    ecg_file_format,
    iter_ecg_windows,
    read_ecg_file,
    read_wfdb_record,
)

pydicom = pytest.importorskip("pydicom")
edfio = pytest.importorskip("edfio")
pytest.importorskip("ecgdatakit")

CLINICAL = Path(__file__).resolve().parent / "fixtures" / "clinical"
MUSE = CLINICAL / "muse_braveheart_example1.xml"
PHILIPS = CLINICAL / "philips_sierra_129DYPRG.xml"
PHILIPS_WITH_BEATS = CLINICAL / "philips_sierra_repbeats_example.xml"
AECG = CLINICAL / "hl7_aecg_fda_subject1_0.xml"
SCP = CLINICAL / "scp_ecgtoolkit_example.scp"
DICOM = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))  # shipped inside pydicom's wheel
HUB_FILES = ("configuration_dbeta.py", "modeling_dbeta.py", "processing_dbeta.py", "pipeline_dbeta.py")
REPOSITORY = Path(__file__).resolve().parents[1]
LUDB_RECORD = LUDB_FIXTURES / "1"
EDF_LABELS = ["ECG I", "ECG II", "ECG III", "ECG aVR", "ECG aVL", "ECG aVF"] + [f"ECG V{n}" for n in range(1, 7)]


# --------------------------------------------------------------------------------------------
# Files written by independent tools from a real record (LUDB 1)
# --------------------------------------------------------------------------------------------


def write_edf(path: Path, labels=EDF_LABELS, extra_channels=(("Resp", "Ohm"),)) -> Path:
    """LUDB record 1 written by edfio (microvolts), with a non-ECG channel beside the 12 leads."""
    record = read_wfdb_record(LUDB_RECORD)
    signals = [
        edfio.EdfSignal(record.signal[index].astype(np.float64) * 1000, 500, label=label, physical_dimension="uV",
                        physical_range=(-10_000, 10_000))
        for index, label in enumerate(labels)
    ]
    for label, unit in extra_channels:
        signals.append(edfio.EdfSignal(np.sin(np.arange(5000) / 50.0), 500, label=label, physical_dimension=unit))
    edf = edfio.Edf(
        signals,
        patient=edfio.Patient(sex="F"),
        recording=edfio.Recording(startdate=datetime.date(2020, 1, 2), equipment_code="Holter-7"),
        starttime=datetime.time(10, 11, 12),
    )
    edf.write(path)
    return path


def write_ishne(path: Path) -> Path:
    """LUDB record 1 written by ishneholterlib (1 uV per stored unit). The library writes only headers it
    loaded from a file, so its header fields are set here, as its `write_file` documents."""
    ishne = pytest.importorskip("ishneholterlib")
    record = read_wfdb_record(LUDB_RECORD)
    codes = {"I": 5, "II": 6, "III": 7, "aVR": 8, "aVL": 9, "aVF": 10, "V1": 11, "V2": 12, "V3": 13, "V4": 14, "V5": 15, "V6": 16}
    holter = ishne.Holter.__new__(ishne.Holter)
    holter.filename, holter.is_annfile, holter.beat_anns = str(path), False, []
    holter.file_version, holter.first_name, holter.last_name, holter.id = 1, "", "", "ludb-1"
    holter.sex, holter.race, holter.birth_date = 2, 0, None
    holter.record_date, holter.start_time = datetime.date(2020, 1, 2), datetime.time(10, 11, 12)
    holter.pm, holter.recorder_type, holter.sr = -9, b"digital", 500
    holter.proprietary = holter.copyright = holter.reserved = holter.var_block = ""
    holter.lead = []
    for index, name in enumerate(record.lead_names):
        lead = ishne.Lead(codes[canonical_lead_name(name)], 1, 1000)  # resolution 1000 nV
        lead.data = record.signal[index].astype(np.float64).copy()
        holter.lead.append(lead)
    holter.write_file()
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("written")
    return {"edf": write_edf(folder / "ludb1.edf"), "ishne": write_ishne(folder / "ludb1.ecg")}


def path_of(name, written):
    return {"dicom": DICOM, "muse": MUSE, "philips": PHILIPS, "aecg": AECG, "scp": SCP}.get(name) or written[name]


# name -> (format key, lead names as read, sampling rate, samples, metadata that must be there)
EXPECTED = {
    "dicom": ("dicom", list(("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")), 1000.0, 10000,
              {"device": "Mortara Instrument, Inc. el250", "acquisition_time": "2013-01-25T10:59:19", "age": 42, "sex": "F",
               "skipped": ["MEDIAN BEAT (12 channels x 1200 samples at 1000 Hz)"], "waveform": "RHYTHM"}),
    "muse": ("ge_muse_xml", ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"], 500.0, 5000,
             {"derived_leads": ["III", "aVR", "aVL", "aVF"], "skipped": ["median beats (8 leads x 600 samples)"]}),
    "philips": ("philips_xml", ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"], 500.0, 5500,
                {"device": "HeartstartMRx", "acquisition_time": "2011-12-01T07:27:34", "age": 50, "sex": "M"}),
    "aecg": ("hl7_aecg", ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6", "III", "aVR", "aVL", "aVF"], 500.0, 5000,
             {"device": "Mortara Instrument, Inc. ELI250", "acquisition_time": "2002-11-22T09:10:00", "sex": "M",
              "skipped": ["median beats (12 leads x 599 samples)"]}),
    "scp": ("scp_ecg", ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6", "III", "aVR", "aVL", "aVF"], 500.0, 5000,
            {"acquisition_time": "2002-11-22T09:10:00", "sex": "M", "skipped": ["median beats (12 leads x 599 samples)"]}),
    "edf": ("edf", list(("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")), 500.0, 5000,
            {"acquisition_time": "2020-01-02T10:11:12", "device": "Holter-7", "sex": "F",
             "skipped": ["channel 'Resp' (not an ECG lead)"]}),
    "ishne": ("ishne", list(("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")), 500.0, 5000,
              {"acquisition_time": "2020-01-02T10:11:12", "sex": "F"}),
}
FORMATS = list(EXPECTED)


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_is_read_by_content_with_its_leads_rate_and_metadata(name, written, tmp_path):
    key, leads, rate, samples, metadata = EXPECTED[name]
    path = path_of(name, written)
    record = read_ecg_file(path)
    assert ecg_file_format(path) == key
    assert record.lead_names == leads and record.sampling_rate == rate
    assert record.signal.shape == (len(leads), samples) and record.signal.dtype == np.float32
    assert record.metadata["total_samples"] == samples and record.metadata["duration_s"] == samples / rate
    assert record.metadata["units"] == ["mV"] * len(leads)
    for field, value in metadata.items():
        assert record.metadata[field] == value, field
    assert "derived_leads" in metadata or "derived_leads" not in record.metadata
    # By content, not by name: a misleading extension and none at all read the same.
    for alias in ("record.txt.bin", "record"):
        copy = tmp_path / alias
        shutil.copy(path, copy)
        again = read_ecg_file(copy)
        np.testing.assert_array_equal(again.signal, record.signal)
        assert again.lead_names == record.lead_names and again.metadata["format"] == record.metadata["format"]


# --------------------------------------------------------------------------------------------
# Millivolts against an independent decoding of each file
# --------------------------------------------------------------------------------------------


def test_dicom_millivolts_match_the_raw_samples_times_the_channel_sensitivity():
    dataset = pydicom.dcmread(DICOM)
    group = dataset.WaveformSequence[0]
    raw = np.frombuffer(group.WaveformData, dtype="<i2").reshape(group.NumberOfWaveformSamples, group.NumberOfWaveformChannels)
    sensitivity = np.array([float(channel.ChannelSensitivity) * float(channel.ChannelSensitivityCorrectionFactor)
                            for channel in group.ChannelDefinitionSequence])
    baseline = np.array([float(channel.ChannelBaseline) for channel in group.ChannelDefinitionSequence])
    assert {channel.ChannelSensitivityUnitsSequence[0].CodeValue for channel in group.ChannelDefinitionSequence} == {"uV"}
    expected = ((raw + baseline) * sensitivity / 1000.0).T  # microvolts -> millivolts
    np.testing.assert_allclose(read_ecg_file(DICOM).signal, expected, atol=1e-6)


def test_muse_millivolts_match_the_base64_samples_times_units_per_bit():
    text = MUSE.read_text(encoding="latin-1")
    rhythm = text[text.index("<WaveformType>Rhythm</WaveformType>"):]
    record = read_ecg_file(MUSE)
    for block in re.findall(r"<LeadData>(.*?)</LeadData>", rhythm, re.DOTALL):
        lead = re.search(r"<LeadID>(\w+)</LeadID>", block).group(1)
        units_per_bit = float(re.search(r"<LeadAmplitudeUnitsPerBit>([\d.]+)<", block).group(1))
        assert re.search(r"<LeadAmplitudeUnits>MICROVOLTS<", block)
        samples = np.frombuffer(base64.b64decode(re.search(r"<WaveFormData>(.*?)</WaveFormData>", block, re.DOTALL).group(1)), "<i2")
        np.testing.assert_allclose(record.signal[record.lead_names.index(lead)], samples * units_per_bit / 1000, atol=1e-6)


@pytest.mark.parametrize("path", [PHILIPS, PHILIPS_WITH_BEATS], ids=["1.03", "1.03-repbeats"])
def test_philips_xli_millivolts_match_sierraecg(path):
    sierraecg = pytest.importorskip("sierraecg")  # the reference XLI decoder, by the format's reverse engineer
    resolution_uv = float(re.search(r"<signalresolution>([\d.]+)<", path.read_text()).group(1))
    record = read_ecg_file(path)
    decoded = sierraecg.read_file(str(path))
    assert [lead.label for lead in decoded.leads] == record.lead_names
    for lead in decoded.leads:
        assert lead.sampling_freq == record.sampling_rate
        np.testing.assert_allclose(record.signal[record.lead_names.index(lead.label)],
                                   np.asarray(lead.samples) * resolution_uv / 1000, atol=1e-6)


def test_philips_representative_beats_are_skipped_and_said_so():
    record = read_ecg_file(PHILIPS_WITH_BEATS)
    assert record.signal.shape == (12, 5500)  # the 11 s rhythm, not the 1200-sample beats
    assert record.metadata["skipped"] == ["median beats (12 leads x 1200 samples)"]
    np.testing.assert_array_equal(record.signal, read_ecg_file(PHILIPS).signal)  # the same ECG, without beats


def test_aecg_millivolts_match_digits_times_scale_plus_origin():
    from defusedxml import ElementTree

    root = ElementTree.parse(AECG).getroot()
    local = lambda element: element.tag.split("}")[-1]  # noqa: E731
    record = read_ecg_file(AECG)
    rhythm = next(element for element in root.iter() if local(element) == "series")  # the first series is the rhythm
    # Its own sequences: component/sequenceSet/component/sequence (median beats sit under derivation/).
    sequences = [
        sequence
        for component in rhythm if local(component) == "component"
        for sequence_set in component if local(sequence_set) == "sequenceSet"
        for entry in sequence_set if local(entry) == "component"
        for sequence in entry if local(sequence) == "sequence"
    ]
    checked = 0
    for sequence in sequences:
        code = next(child for child in sequence if local(child) == "code").get("code")
        if not code.startswith("MDC_ECG_LEAD_"):
            continue
        value = next(child for child in sequence if local(child) == "value")
        parts = {local(child): child for child in value}
        assert parts["scale"].get("unit") == "uV" and parts["origin"].get("unit") == "uV"
        digits = np.array(parts["digits"].text.split(), dtype=np.float64)
        expected = (digits * float(parts["scale"].get("value")) + float(parts["origin"].get("value"))) / 1000
        name = canonical_lead_name(code.removeprefix("MDC_ECG_LEAD_"))
        np.testing.assert_allclose(record.signal[record.lead_names.index(name)], expected, atol=1e-6)
        checked += 1
    assert checked == 12


def test_scp_huffman_second_differences_decode_to_the_aecg_it_was_converted_from():
    # C# ECG Toolkit's Example.scp is the HL7 aECG example converted (Huffman-coded second
    # differences, 2.5 uV units): two independent encodings of one ECG must agree.
    scp, aecg = read_ecg_file(SCP), read_ecg_file(AECG)
    assert scp.lead_names == aecg.lead_names
    np.testing.assert_allclose(scp.signal, aecg.signal, atol=1e-6)


@pytest.mark.parametrize("name, tolerance_mv", [("edf", 20 / 65535 + 1e-6), ("ishne", 1e-3 + 1e-6)])
def test_edf_and_ishne_give_back_the_real_record_they_were_written_from(name, tolerance_mv, written):
    # EDF: 16-bit over +-10 mV (one step is 0.3 uV); ISHNE: 1 uV steps (the writer truncates).
    original = read_wfdb_record(LUDB_RECORD)
    record = read_ecg_file(written[name])
    assert np.abs(record.signal - original.signal).max() <= tolerance_mv


def test_edf_is_read_in_parts_by_windows(written):
    whole = read_ecg_file(written["edf"]).signal
    windows = list(iter_ecg_windows(written["edf"], window_seconds=4.0, stride_seconds=3.0))
    assert [start for start, _ in windows] == [0.0, 3.0, 6.0]
    for start, window in windows:
        first = int(start * 500)
        np.testing.assert_array_equal(window.signal, whole[:, first : first + 2000])


# --------------------------------------------------------------------------------------------
# The four surfaces
# --------------------------------------------------------------------------------------------


def test_processor_call_on_each_path_puts_leads_in_the_model_order(written):
    extractor = DBetaFeatureExtractor()
    for name in FORMATS:
        path = path_of(name, written)
        record = read_ecg_file(path)
        values = extractor(str(path))["input_values"][0]
        assert values.shape == (12, 5000) and np.isfinite(values).all()
        for index, lead in enumerate(MIMIC_LEAD_NAMES):
            if lead in record.lead_names and record.sampling_rate == 500:
                np.testing.assert_allclose(values[index], record.signal[record.lead_names.index(lead)][:5000], atol=1e-6)
    # MUSE stores I, II, V1-V6: the limb leads are derived (Einthoven, Goldberger), as its metadata says.
    muse = extractor(str(MUSE))["input_values"][0]
    lead = {name: muse[index] for index, name in enumerate(MIMIC_LEAD_NAMES)}
    np.testing.assert_allclose(lead["III"], lead["II"] - lead["I"], atol=1e-6)
    np.testing.assert_allclose(lead["aVR"], -(lead["I"] + lead["II"]) / 2, atol=1e-6)


@pytest.fixture(scope="module")
def export_folder(written, tmp_path_factory):
    """A hospital's export folder: every format, names as archives give them (UIDs, no extension)."""
    folder = tmp_path_factory.mktemp("exports")
    names = {
        "dicom": "1.2.840.113619.2.1.1", "muse": "MUSE_20200923_093504.XML", "philips": "philips.xml",
        "aecg": "trial/subject1.xml", "scp": "cart/ECG0001", "edf": "holter.edf", "ishne": "holter.ecg",
    }
    for name, target in names.items():
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path_of(name, written), folder / target)
    (folder / "notes.txt").write_text("not an ECG")
    (folder / "pom.cfg").write_text("<project><name>not an ECG</name></project>")
    return folder, names


def test_dbeta_embed_and_classify_find_and_read_every_format(model_folder, export_folder, tmp_path):
    from dbeta.cli import find_records, main

    folder, names = export_folder
    assert sorted(ref.record_id for ref in find_records(folder)) == sorted(names.values())
    embeddings, scores = tmp_path / "embeddings.parquet", tmp_path / "scores.csv"
    assert main(["embed", str(folder), "--model", str(model_folder), "--output", str(embeddings)]) == 0
    import pandas as pd

    table = pd.read_parquet(embeddings)
    assert sorted(table["record"]) == sorted(names.values())
    assert main(["classify", str(folder), "--model", str(model_folder), "--labels", "AFIB", "sinus rhythm",
                 "--output", str(scores)]) == 0
    with open(scores, newline="") as handle:
        assert sorted(row["record"] for row in csv.DictReader(handle)) == sorted(names.values())


def test_pipeline_scores_each_format(model_folder, written):
    from transformers import pipeline

    from pipeline_dbeta import TASK

    classifier = pipeline(TASK, model=str(model_folder), trust_remote_code=True, device="cpu")
    for name in FORMATS:
        result = classifier(str(path_of(name, written)), candidate_labels=["AFIB", "sinus rhythm"])
        assert sorted(item["label"] for item in result) == ["AFIB", "sinus rhythm"]
        assert all(0.0 <= item["score"] <= 1.0 for item in result)


def test_report_shows_format_device_derived_and_skipped(model_folder, tmp_path, capsys):
    from dbeta.cli import main
    from dbeta.report import record_metadata

    page = tmp_path / "report.html"
    assert main(["report", str(MUSE), "--model", str(model_folder), "--labels", "AFIB", "sinus rhythm",
                 "--output", str(tmp_path / "report.png"), "--html", str(page), "--device", "cpu"]) == 0
    html = page.read_text()
    assert "GE MUSE XML (read with ecgdatakit" in html and "median beats (8 leads x 600 samples)" in html
    assert "III, aVR, aVL, aVF" in html
    metadata = record_metadata(read_ecg_file(DICOM), str(DICOM), "tiny")
    assert metadata["device"] == "Mortara Instrument, Inc. el250" and metadata["acquired"] == "2013-01-25T10:59:19"
    assert metadata["skipped in file"] == ["MEDIAN BEAT (12 channels x 1200 samples at 1000 Hz)"]


def test_evaluation_on_a_labeled_folder_of_exports(model_folder, export_folder, tmp_path):
    from dbeta.train.evaluation import downstream
    from dbeta.train.evaluation.evaluate import main

    source, names = export_folder
    folder = tmp_path / "labeled"
    shutil.copytree(source, folder)
    labels = {"dicom": "SR", "muse": "SB", "philips": "SR", "aecg": "SR", "scp": "SR", "edf": "SB", "ishne": "SB"}
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record", "labels"])
        for name, record_id in names.items():
            writer.writerow([record_id, labels[name]])
    dataset = downstream.load_labeled_folder(folder)
    assert len(dataset) == 7 and dataset.label_names == ["SB", "SR"]
    assert dataset.read(dataset.record_ids.index(names["muse"])).metadata["format"] == "GE MUSE XML"
    results = main(["--model", str(model_folder), "--dataset", f"folder={folder}", "--tasks", "zero_shot",
                    "--output_dir", str(tmp_path / "eval"), "--no_progress"])
    entry = results["datasets"]["folder"]
    assert entry["counts"]["test"] == 7 and entry["failed_records"] == {}
    assert 0.0 <= entry["zero_shot"]["macro_auroc"] <= 1.0


def test_a_saved_model_folder_loaded_as_remote_code_reads_a_dicom_file(model_folder, tmp_path):
    # A fresh process, outside the repository, that has not imported the package: the folder's own
    # processing_dbeta.py (remote code) must read the file.
    script = (
        "import sys; from transformers import AutoProcessor\n"
        f"processor = AutoProcessor.from_pretrained({str(model_folder)!r}, trust_remote_code=True)\n"
        "assert type(processor).__module__.startswith('transformers_modules'), type(processor).__module__\n"
        f"values = processor(ecg={str(DICOM)!r}, return_tensors='np')['input_values']\n"
        "print(values.shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(1, 12, 5000)"


def test_hub_files_import_only_what_loading_a_model_installs():
    # transformers' check_imports requires every package a hub file imports outside try/except.
    from transformers.dynamic_module_utils import get_imports

    allowed = {"torch", "numpy", "scipy", "transformers", "packaging"}
    for name in HUB_FILES:
        third_party = {module for module in get_imports(str(REPOSITORY / name)) if module not in sys.stdlib_module_names}
        assert third_party <= allowed, (name, third_party - allowed)


# --------------------------------------------------------------------------------------------
# Damaged and unsupported files: one line naming the file
# --------------------------------------------------------------------------------------------


def assert_one_line_error(path, *fragments):
    with pytest.raises(ValueError) as raised:
        read_ecg_file(path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("name", FORMATS)
def test_a_truncated_file_is_refused(name, written, tmp_path):
    data = path_of(name, written).read_bytes()
    path = tmp_path / f"truncated-{name}"
    path.write_bytes(data[: len(data) // 3])
    assert_one_line_error(path)


def test_an_entity_expansion_bomb_is_refused_not_expanded(tmp_path):
    lol = "".join(f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10))
    path = tmp_path / "bomb.xml"
    path.write_text(f'<?xml version="1.0"?><!DOCTYPE RestingECG [<!ENTITY lol0 "lol">{lol}]><RestingECG>&lol9;</RestingECG>')
    assert_one_line_error(path, "entit")
    # Behind our own check, the library's parser (defusedxml) refuses it as well.
    from ecgdatakit.parsing.parsers.ge_muse_xml import GEMuseXMLParser

    with pytest.raises(Exception, match="(?i)entit"):
        GEMuseXMLParser().parse(path)


def test_a_dicom_file_without_a_waveform_is_refused():
    image = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    assert_one_line_error(image, "without a waveform")


def test_a_dicom_file_with_only_median_beats_is_refused(tmp_path):
    dataset = pydicom.dcmread(DICOM)
    del dataset.WaveformSequence[0]
    path = tmp_path / "median-only.dcm"
    dataset.save_as(path)
    assert_one_line_error(path, "only median", "no rhythm waveform")


def test_a_dicom_file_with_several_rhythm_groups_reads_the_longest_and_lists_the_others(tmp_path):
    dataset = pydicom.dcmread(DICOM)
    short = pydicom.Dataset()
    short.update(dataset.WaveformSequence[0])
    short.NumberOfWaveformSamples = 5000
    short.WaveformData = bytes(dataset.WaveformSequence[0].WaveformData)[: 5000 * 12 * 2]
    short.MultiplexGroupLabel = "RHYTHM 2"
    dataset.WaveformSequence.insert(0, short)  # first in the file, but shorter
    path = tmp_path / "two-ecgs.dcm"
    dataset.save_as(path)
    record = read_ecg_file(path)
    np.testing.assert_array_equal(record.signal, read_ecg_file(DICOM).signal)
    assert record.metadata["waveform"] == "RHYTHM"
    assert record.metadata["skipped"] == [
        "RHYTHM 2 (12 channels x 5000 samples at 1000 Hz)", "MEDIAN BEAT (12 channels x 1200 samples at 1000 Hz)"
    ]


def test_an_aecg_with_two_rhythm_series_reads_the_first_and_says_so(tmp_path):
    text = AECG.read_text(encoding="utf-8")
    start = text.index("  <component>\n    <series>")
    end = text.index("</series>", start) + len("</series>\n  </component>\n")
    path = tmp_path / "two-series.xml"
    path.write_text(text[:end] + text[start:end] + text[end:], encoding="utf-8")
    record = read_ecg_file(path)
    np.testing.assert_array_equal(record.signal, read_ecg_file(AECG).signal)
    assert any("2 rhythm series found; only the first is read" in note for note in record.metadata["notes"])


def test_an_edf_without_an_ecg_channel_is_refused(tmp_path):
    path = tmp_path / "sleep.edf"
    edf = edfio.Edf([edfio.EdfSignal(np.zeros(1000), 100, label="EEG Fpz-Cz", physical_dimension="uV", physical_range=(-1, 1))])
    edf.write(path)
    assert_one_line_error(path, "no ECG channel", "EEG Fpz-Cz")


def test_a_muse_file_with_only_median_beats_is_refused(tmp_path):
    text = MUSE.read_text(encoding="latin-1")
    start = text.index("<Waveform>", text.index("<WaveformType>Rhythm</WaveformType>") - 200)
    path = tmp_path / "median-only.xml"
    path.write_text(text[:start] + text[text.index("</Waveform>", start) + len("</Waveform>"):], encoding="latin-1")
    assert_one_line_error(path, "GE MUSE XML", "rhythm")


def test_an_xml_file_of_another_kind_names_the_roots_read(tmp_path):
    path = tmp_path / "other.xml"
    path.write_text('<?xml version="1.0"?><!-- export --><PatientList><Patient/></PatientList>')
    assert_one_line_error(path, "<PatientList>", "RestingECG")


def test_an_edf_with_a_non_voltage_ecg_channel_is_refused(tmp_path):
    path = write_edf(tmp_path / "counts.edf", extra_channels=())
    text = path.read_bytes()
    # The physical dimension of the first channel (8 bytes per channel after the labels etc.) set to "mmHg".
    count = len(EDF_LABELS)
    offset = 256 + count * (16 + 80)
    path.write_bytes(text[:offset] + b"mmHg    " + text[offset + 8 :])
    assert_one_line_error(path, "'ECG I'", "not a voltage")


def test_the_cli_reports_a_damaged_export_and_scores_the_others(model_folder, tmp_path, capsys):
    from dbeta.cli import main

    folder = tmp_path / "exports"
    folder.mkdir()
    shutil.copy(MUSE, folder / "good.xml")
    (folder / "broken.xml").write_bytes(MUSE.read_bytes()[:5000])
    errors = tmp_path / "errors.csv"
    status = main(["embed", str(folder), "--model", str(model_folder), "--output", str(tmp_path / "e.parquet"),
                   "--errors", str(errors)])
    assert status == 1
    assert "broken.xml" in errors.read_text() and "good.xml" not in errors.read_text()
    assert "broken.xml" in capsys.readouterr().err
