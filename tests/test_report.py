"""`dbeta report`: the 12-lead ECG on standard paper with label scores, from real fixture records."""

import numpy as np
from zero_shot_utils import CINC_FIXTURES, FIXTURES

from dbeta.cli import main
from dbeta.report import GAIN_MM_PER_MV, PAPER_SPEED_MM_PER_S, render_report

LABELS = ["AFIB", "LBBB", "RBBB", "sinus rhythm", "SBRAD"]


def read_png(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))[..., :3]  # RGB floats in [0, 1]


def test_report_renders_a_real_record_with_scores_png_and_html(model_folder, tmp_path, capsys):
    output, page = tmp_path / "report.png", tmp_path / "report.html"
    status = main(
        [
            "report",
            str(CINC_FIXTURES / "HR06000"),
            "--model",
            str(model_folder),
            "--labels",
            *LABELS,
            "--top_k",
            "4",
            "--output",
            str(output),
            "--html",
            str(page),
            "--device",
            "cpu",
        ]
    )
    assert status == 0 and "wrote" in capsys.readouterr().err
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = read_png(output)
    height, width, _ = pixels.shape
    assert width > 1500 and 600 < height < width  # landscape, printable size at 150 dpi
    dark = (pixels.max(axis=-1) < 0.25).mean()  # black traces and text
    pink = ((pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.85) & (pixels[..., 2] < 0.85)).mean()  # grid
    assert 0.005 < dark < 0.2 and pink > 0.05
    assert (pixels.min(axis=-1) > 0.98).mean() > 0.1  # white margins and score panel, not a smeared image

    text = page.read_text()
    assert "data:image/png;base64," in text and "HR06000" in text
    assert text.count("<tr><td>") == 4  # top_k rows
    assert "Female" in text and "500 Hz" in text  # header metadata


def test_grid_is_at_true_scale_and_absent_leads_are_marked(tmp_path):
    # A 6-lead record: the precordial leads are absent (zero) and labelled so.
    rng = np.random.default_rng(0)
    names = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
    signal = np.zeros((12, 5000), dtype=np.float32)
    signal[:6] = 0.3 * rng.standard_normal((6, 5000))
    dpi = 100
    png = render_report(
        signal,
        names,
        500.0,
        [{"label": "AFIB", "score": 0.9}],
        {"record": "synthetic"},
        tmp_path / "six.png",
        absent=names[6:],
        dpi=dpi,
    )
    assert png == (tmp_path / "six.png").read_bytes()
    pixels = read_png(tmp_path / "six.png")
    # 10 mm per mV and 25 mm per s on paper: at `dpi` the figure is (paper mm / 25.4 * dpi) pixels.
    assert GAIN_MM_PER_MV == 10 and PAPER_SPEED_MM_PER_S == 25
    from dbeta.report import COLUMN_SECONDS, LEFT_MARGIN_MM, ROW_HEIGHT_MM, TOP_MARGIN_MM

    ecg_width_mm = LEFT_MARGIN_MM + 4 * COLUMN_SECONDS * PAPER_SPEED_MM_PER_S
    expected_width = (6 + ecg_width_mm + 6 + 95 + 6) / 25.4 * dpi
    expected_height = (10 + TOP_MARGIN_MM + 4 * ROW_HEIGHT_MM + 6) / 25.4 * dpi
    assert abs(pixels.shape[1] - expected_width) <= 2 and abs(pixels.shape[0] - expected_height) <= 2


def test_report_reads_a_cpsc_mat_file(model_folder, tmp_path):
    from dbeta.report import report

    scores = report(
        str(FIXTURES / "cpsc2018" / "A1980.mat"), str(model_folder), LABELS, tmp_path / "cpsc.png", top_k=3
    )
    assert len(scores) == 3 and scores[0]["score"] >= scores[-1]["score"]
    assert read_png(tmp_path / "cpsc.png").shape[1] > 1500


def test_dollar_signs_in_labels_and_comments_are_drawn_as_text(tmp_path):
    """`$...$` from a label or a header comment is not typeset: an unbalanced TeX expression would
    make matplotlib's mathtext fail, and a balanced one would be drawn as a formula."""
    signal = np.zeros((12, 5000), dtype=np.float32)
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    scores = [{"label": r"$\frac{1}{$ broken", "score": 0.7}, {"label": "$x^2$ costs $5", "score": 0.2}]
    png = render_report(signal, leads, 500.0, scores, {"comments": r"price: $\alpha$"}, tmp_path / "r.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib

    assert matplotlib.rcParams["text.parse_math"] is True  # the setting is restored afterwards


def test_derived_limb_leads_of_an_8_lead_record_are_marked_derived(model_folder, tmp_path, monkeypatch):
    import wfdb

    import dbeta.report as report

    record = wfdb.rdrecord(str(FIXTURES / "ludb" / "1"))
    keep = [record.sig_name.index(name) for name in ("i", "ii", "v1", "v2", "v3", "v4", "v5", "v6")]
    wfdb.wrsamp(
        "eight", fs=500, units=["mV"] * 8, sig_name=[record.sig_name[i] for i in keep],
        p_signal=record.p_signal[:, keep], fmt=["16"] * 8, write_dir=str(tmp_path),
    )  # fmt: skip
    seen = {}
    original = report.render_report

    def capture(*args, **kwargs):
        seen.update(absent=kwargs["absent"], derived=kwargs["derived"])
        return original(*args, **kwargs)

    monkeypatch.setattr(report, "render_report", capture)
    status = main(
        ["report", str(tmp_path / "eight"), "--model", str(model_folder), "--labels", "AFIB",
         "--output", str(tmp_path / "eight.png"), "--device", "cpu"]
    )  # fmt: skip
    assert status == 0
    assert seen == {"absent": [], "derived": ["III", "aVR", "aVF", "aVL"]} or (
        seen["absent"] == [] and sorted(seen["derived"]) == ["III", "aVF", "aVL", "aVR"]
    )
