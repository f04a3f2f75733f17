"""`dbeta report`: the 12-lead ECG on standard paper with label scores, from real fixture records."""

import numpy as np
import pytest
from zero_shot_utils import CINC_FIXTURES, FIXTURES, save_tiny_zero_shot_folder

from dbeta.cli import main
from dbeta.report import GAIN_MM_PER_MV, PAPER_SPEED_MM_PER_S, render_report

LABELS = ["AFIB", "LBBB", "RBBB", "sinus rhythm", "SBRAD"]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_tiny_zero_shot_folder(tmp_path_factory.mktemp("dbeta-tiny"))


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
