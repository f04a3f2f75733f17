"""Downstream loaders: labels, splits, shapes and lead identity, on fixtures in each dataset's format."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

wfdb = pytest.importorskip("wfdb")

from dbeta.train.evaluation.downstream import (  # noqa: E402
    CODE_TEST_LABELS,
    load_cinc_wfdb,
    load_code_test,
    load_cpsc2018,
    load_ludb,
    load_ptbxl,
    seeded_splits,
)

FIXTURES = __import__("pathlib").Path(__file__).resolve().parent / "fixtures"
PTBXL_LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _write_wfdb(folder, name, signal, leads, fs=500, comments=None):
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name, fs=fs, units=["mV"] * len(leads), sig_name=leads, p_signal=signal.T.astype(np.float64),
        fmt=["16"] * len(leads), adc_gain=[1000.0] * len(leads), baseline=[0] * len(leads),
        comments=comments or [], write_dir=str(folder),
    )


def _lead_coded_signal(num_samples=5000, num_leads=12):
    """Each lead is a ramp offset by its index, so a wrong lead shows up in the values."""
    return (np.arange(num_leads)[:, None] + 0.001 * np.arange(num_samples)[None] % 1).astype(np.float32)


@pytest.fixture(scope="module")
def ptbxl_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptbxl")
    statements = pd.DataFrame(
        {
            "description": ["normal", "inferior MI", "complete LBBB", "sinus rhythm", "atrial fibrillation", "low voltage"],
            "diagnostic": [1, 1, 1, np.nan, np.nan, np.nan],
            "form": [np.nan, np.nan, np.nan, np.nan, np.nan, 1],
            "rhythm": [np.nan, np.nan, np.nan, 1, 1, np.nan],
            "diagnostic_class": ["NORM", "MI", "CD", None, None, None],
            "diagnostic_subclass": ["NORM", "IMI", "CLBBB", None, None, None],
        },
        index=["NORM", "IMI", "CLBBB", "SR", "AFIB", "LVOLT"],
    )
    statements.to_csv(root / "scp_statements.csv")
    scp = [
        {"NORM": 100.0, "SR": 0.0},
        {"IMI": 50.0, "CLBBB": 100.0, "AFIB": 0.0},
        {"LVOLT": 100.0, "SR": 0.0},
        {"NORM": 80.0, "SR": 0.0},
        {"IMI": 100.0, "LVOLT": 0.0, "AFIB": 0.0},
    ]
    rows = []
    for index, codes in enumerate(scp):
        ecg_id = index + 1
        _write_wfdb(root / "records500" / "00000", f"{ecg_id:05d}_hr", _lead_coded_signal() * (1 + ecg_id / 10), PTBXL_LEADS)
        rows.append(
            {"ecg_id": ecg_id, "patient_id": 100 + index, "scp_codes": repr(codes), "strat_fold": [1, 8, 9, 10, 3][index],
             "filename_lr": f"records100/00000/{ecg_id:05d}_lr", "filename_hr": f"records500/00000/{ecg_id:05d}_hr"}
        )
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    return root


def test_ptbxl_label_sets_and_folds(ptbxl_root):
    superclass = load_ptbxl(ptbxl_root, "superdiagnostic")
    assert superclass.label_names == ["CD", "MI", "NORM"]
    assert superclass.record_ids == ["1", "2", "4", "5"]  # record 3 has no diagnostic statement
    np.testing.assert_array_equal(superclass.labels, [[0, 0, 1], [1, 1, 0], [0, 0, 1], [0, 1, 0]])
    assert list(superclass.splits) == ["train", "train", "test", "train"]
    sub = load_ptbxl(ptbxl_root, "subdiagnostic")
    assert sub.label_names == ["CLBBB", "IMI", "NORM"]
    rhythm = load_ptbxl(ptbxl_root, "rhythm")
    assert rhythm.label_names == ["AFIB", "SR"] and rhythm.record_ids == ["1", "2", "3", "4", "5"]
    assert list(rhythm.splits) == ["train", "train", "validation", "test", "train"]
    form = load_ptbxl(ptbxl_root, "form")
    assert form.label_names == ["LVOLT"] and form.record_ids == ["3", "5"]
    record = superclass.split("test").read(0)  # ecg_id 4
    assert record.signal.shape == (12, 5000) and record.sampling_rate == 500
    assert record.lead_names == PTBXL_LEADS
    np.testing.assert_allclose(record.signal[PTBXL_LEADS.index("AVL")], 1.4 * _lead_coded_signal()[4], atol=1e-3)
    with pytest.raises(ValueError):
        load_ptbxl(ptbxl_root, "nonsense")


def test_cpsc2018_original_mat_and_reference(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    references = [("A0001", 1, None), ("A0002", 2, 5), ("A0003", 9, None)]
    for name, _, _ in references:
        data = _lead_coded_signal(6000).astype(np.float64)
        scipy_io.savemat(tmp_path / f"{name}.mat", {"ECG": {"sex": "Male", "age": 60, "data": data}})
    with open(tmp_path / "REFERENCE.csv", "w") as handle:
        handle.write("Recording,First_label,Second_label,Third_label\n")
        for name, first, second in references:
            handle.write(f"{name},{first},{second or ''},\n")
    dataset = load_cpsc2018(tmp_path)
    assert dataset.label_names == ["NORM", "AFIB", "1AVB", "CLBBB", "CRBBB", "PAC", "VPC", "STD", "STE"]
    assert dataset.record_ids == ["A0001", "A0002", "A0003"]
    assert dataset.labels[1].tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0]
    assert dataset.labels[2, dataset.label_names.index("STE")] == 1
    record = dataset.read(1)
    assert record.signal.shape == (12, 6000) and record.lead_names[4] == "aVL"
    np.testing.assert_allclose(record.signal[4], _lead_coded_signal(6000)[4], atol=1e-6)


def test_cpsc2018_real_mat_files(tmp_path):
    labels = pd.read_csv(FIXTURES / "cpsc2018" / "labels.csv")
    labels = labels[[(FIXTURES / "cpsc2018" / f"{name}.mat").is_file() for name in labels["record"]]].reset_index(drop=True)
    assert len(labels) >= 2
    class_numbers = {"NSR": 1, "AF": 2, "IAVB": 3, "LBBB": 4, "RBBB": 5, "PAC": 6, "PVC": 7, "STD": 8, "STE": 9}
    for record in labels["record"]:
        (tmp_path / f"{record}.mat").write_bytes((FIXTURES / "cpsc2018" / f"{record}.mat").read_bytes())
    reference = pd.DataFrame({"Recording": labels["record"], "First_label": labels["dx_abbrev"].map(class_numbers)})
    reference.to_csv(tmp_path / "REFERENCE.csv", index=False)
    dataset = load_cpsc2018(tmp_path)
    expected = {"PAC": "PAC", "STD": "STD", "IAVB": "1AVB", "NSR": "NORM", "RBBB": "CRBBB", "AF": "AFIB"}
    for index, abbreviation in enumerate(labels["dx_abbrev"]):
        assert dataset.label_names[int(np.argmax(dataset.labels[index]))] == expected[abbreviation]
        record = dataset.read(index)
        assert record.signal.shape == (12, int(labels["n_samples"][index])) and record.sampling_rate == 500


def test_cpsc2018_cinc_wfdb_repackaging(tmp_path):
    _write_wfdb(tmp_path / "g1", "A0001", _lead_coded_signal(), ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"],
                comments=["Age: 50", "Sex: Female", "Dx: 164889003,713427006", "Rx: Unknown"])
    dataset = load_cpsc2018(tmp_path)
    assert [name for name, flag in zip(dataset.label_names, dataset.labels[0]) if flag] == ["AFIB", "CRBBB"]


def test_cinc2021_real_records_have_their_dx_codes():
    dataset = load_cinc_wfdb(FIXTURES / "cinc2021")
    expected = pd.read_csv(FIXTURES / "cinc2021" / "labels.csv").set_index("record")
    for index, record_id in enumerate(dataset.record_ids):
        if record_id not in expected.index:
            continue
        names = {name for name, flag in zip(dataset.label_names, dataset.labels[index]) if flag}
        assert names == set(expected.loc[record_id, "dx_abbrev"].split(",")), record_id
    record = dataset.read(0)
    assert record.signal.shape == (12, 5000) and record.sampling_rate == 500
    assert set(dataset.splits) <= {"train", "validation", "test"}


def test_code_test_hdf5_and_annotations(tmp_path):
    h5py = pytest.importorskip("h5py")
    tracings = np.zeros((3, 4096, 12), dtype=np.float32)
    tracings[:] = np.arange(12)[None, None, :] + np.arange(3)[:, None, None] * 100
    with h5py.File(tmp_path / "ecg_tracings.hdf5", "w") as handle:
        handle.create_dataset("tracings", data=tracings)
    (tmp_path / "annotations").mkdir()
    annotations = pd.DataFrame(np.eye(3, 6, dtype=int), columns=list(CODE_TEST_LABELS))
    annotations.to_csv(tmp_path / "annotations" / "gold_standard.csv", index=False)
    dataset = load_code_test(tmp_path)
    assert dataset.label_names == list(CODE_TEST_LABELS) and dataset.labels.shape == (3, 6)
    assert dataset.labels[1].tolist() == [0, 1, 0, 0, 0, 0] and set(dataset.splits) == {"test"}
    record = dataset.read(2)
    assert record.signal.shape == (12, 4096) and record.sampling_rate == 400
    assert record.signal[record.lead_names.index("aVL"), 0] == 204  # exam 2, column 4 of the file


def test_ludb_reports_and_rhythms():
    dataset = load_ludb(FIXTURES / "ludb")
    table = pd.read_csv(FIXTURES / "ludb" / "ludb.csv").set_index("ID")
    assert dataset.reports is not None and len(dataset.reports) == len(dataset) == 6
    assert dataset.reports[0].startswith("Rhythm: Sinus bradycardia.") and "Left ventricular hypertrophy." in dataset.reports[0]
    for index, record_id in enumerate(dataset.record_ids):
        rhythm = dataset.label_names[int(np.argmax(dataset.labels[index]))]
        assert rhythm == table.loc[int(record_id), "Rhythms"].strip().splitlines()[0].strip()
    record = dataset.read(0)
    assert record.signal.shape == (12, 5000) and record.lead_names[0] == "i"


def test_seeded_splits_and_split_file(tmp_path):
    ids = [f"r{i}" for i in range(100)]
    splits = seeded_splits(ids, seed=1)
    assert list(splits) == list(seeded_splits(ids, seed=1))
    assert (splits == "train").sum() == 72 and (splits == "validation").sum() == 8 and (splits == "test").sum() == 20
    (tmp_path / "split.csv").write_text("record,split\nr0,test\nr1,train\n")
    assert list(seeded_splits(["r0", "r1"], split_file=tmp_path / "split.csv")) == ["test", "train"]
    with pytest.raises(ValueError):
        seeded_splits(["r0", "r2"], split_file=tmp_path / "split.csv")


# PTB-XL's own rows for statements and classes whose names it pads with underscores.
PADDED_STATEMENTS = pd.DataFrame(
    {
        "description": ["normal ECG", "first degree AV block", "non-specific ischemic", "non-specific ST changes",
                        "non-specific ST depression", "non-specific ST elevation", "non-specific T-wave changes",
                        "T-wave abnormality", "left atrial overload/enlargement", "sinus rhythm"],
        "diagnostic": [1, 1, 1, 1, np.nan, np.nan, np.nan, np.nan, 1, np.nan],
        "form": [np.nan, np.nan, np.nan, 1, 1, 1, 1, 1, np.nan, np.nan],
        "rhythm": [np.nan] * 9 + [1],
        "diagnostic_class": ["NORM", "CD", "STTC", "STTC", None, None, None, None, "HYP", None],
        "diagnostic_subclass": ["NORM", "_AVB", "ISC_", "NST_", None, None, None, None, "LAO/LAE", None],
    },
    index=["NORM", "1AVB", "ISC_", "NST_", "STD_", "STE_", "NT_", "TAB_", "LAO/LAE", "SR"],
)


@pytest.fixture(scope="module")
def ptbxl_padded_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptbxl-padded")
    PADDED_STATEMENTS.to_csv(root / "scp_statements.csv")
    scp = [
        {"NORM": 100.0, "SR": 0.0},
        {"1AVB": 100.0, "NST_": 50.0, "STD_": 0.0},
        {"ISC_": 80.0, "TAB_": 0.0, "SR": 0.0},
        {"NST_": 100.0, "STE_": 0.0, "NT_": 0.0},
        {"LAO/LAE": 100.0, "NT_": 0.0, "SR": 0.0},
        {"NORM": 100.0, "STD_": 0.0, "TAB_": 0.0},
    ]
    rows = []
    for index, codes in enumerate(scp):
        ecg_id = index + 1
        _write_wfdb(root / "records500" / "00000", f"{ecg_id:05d}_hr", _lead_coded_signal() * (1 + ecg_id / 10), PTBXL_LEADS)
        rows.append(
            {"ecg_id": ecg_id, "patient_id": 200 + index, "scp_codes": repr(codes), "strat_fold": [10, 10, 10, 10, 10, 1][index],
             "filename_lr": f"records100/00000/{ecg_id:05d}_lr", "filename_hr": f"records500/00000/{ecg_id:05d}_hr"}
        )
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    return root


def test_ptbxl_padded_codes_get_the_paper_names_and_descriptions(ptbxl_padded_root):
    import json
    from pathlib import Path

    descriptions = json.loads((Path(__file__).resolve().parents[1] / "dbeta" / "label_descriptions.json").read_text())
    sub = load_ptbxl(ptbxl_padded_root, "subdiagnostic")
    assert sub.label_names == ["AVB", "ISC", "LAO/LAE", "NORM", "NST"]
    assert sub.labels[sub.record_ids.index("2")].tolist() == [1, 0, 0, 0, 1]  # 1AVB -> AVB, NST_ -> NST
    form = load_ptbxl(ptbxl_padded_root, "form")
    assert form.label_names == ["NST", "NT", "STD", "STE", "TAB"]
    assert form.record_ids == ["2", "3", "4", "5", "6"]
    for dataset in (sub, form, load_ptbxl(ptbxl_padded_root, "superdiagnostic")):
        assert [name for name in dataset.label_names if name not in descriptions] == [], dataset.name


def test_ptbxl_labels_that_differ_only_by_padding_are_an_error(tmp_path, ptbxl_padded_root):
    statements = pd.concat([PADDED_STATEMENTS, PADDED_STATEMENTS.loc[["STD_"]].rename(index={"STD_": "STD"})])
    statements.to_csv(tmp_path / "scp_statements.csv")
    (tmp_path / "ptbxl_database.csv").write_bytes((ptbxl_padded_root / "ptbxl_database.csv").read_bytes())
    with pytest.raises(ValueError, match="differ only by padding"):
        load_ptbxl(tmp_path, "form")


def test_evaluate_scores_every_ptbxl_label_by_its_description(ptbxl_padded_root, tmp_path):
    import json

    from zero_shot_utils import save_tiny_zero_shot_folder

    from dbeta.train.evaluation.evaluate import main as evaluate_main

    folder = save_tiny_zero_shot_folder(tmp_path / "model")
    arguments = ["--model", str(folder), "--dataset", f"ptbxl-sub={ptbxl_padded_root}", "--dataset", f"ptbxl-form={ptbxl_padded_root}",
                 "--tasks", "zero_shot", "--no_progress"]
    results = evaluate_main(arguments + ["--output_dir", str(tmp_path / "eval")])
    descriptions = json.loads((folder / "label_descriptions.json").read_text())
    for name in ("ptbxl-sub", "ptbxl-form"):
        zero_shot = results["datasets"][name]["zero_shot"]
        assert zero_shot["labels_without_description"] == []
        assert zero_shot["prompts"] == {label: descriptions[label] for label in results["datasets"][name]["label_names"]}
    assert json.loads((tmp_path / "eval" / "results.json").read_text()) == results

    # A label whose description is missing is listed (and scored as its name).
    partial = {code: text for code, text in descriptions.items() if code != "TAB"}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    arguments = ["--model", str(folder), "--dataset", f"ptbxl-form={ptbxl_padded_root}", "--tasks", "zero_shot", "--no_progress",
                 "--label_descriptions", str(tmp_path / "partial.json"), "--output_dir", str(tmp_path / "eval-partial")]
    zero_shot = evaluate_main(arguments)["datasets"]["ptbxl-form"]["zero_shot"]
    assert zero_shot["labels_without_description"] == ["TAB"] and zero_shot["prompts"]["TAB"] == "TAB"
