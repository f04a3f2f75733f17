"""The web demo (`dbeta demo`, dbeta/web_demo.py).

Without a browser: the request handler (scores, errors as one line, uploads deleted, limits), the
page's limits (queue, concurrency) and the Space folder. With a browser: headless Chromium (Debian's
`chromium` + `chromium-driver`, driven by Selenium) uses the running app like a person would.

The browser test runs where `chromium` and `chromedriver` are on PATH (CI installs them with apt, see
`.ci/run`); elsewhere it is skipped with the reason printed. Run it alone with

    python -m pytest -q -rs tests/test_web_demo.py

Screenshots go to pytest's temporary folder; with DBETA_SCREENSHOTS_DIR=docs they are also saved,
reduced to a palette PNG, as docs/web_demo_*.png (how the ones in docs/ were made).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the tests (offline CI)
pytest.importorskip("gradio")

from dbeta.web_demo import (  # noqa: E402
    DemoApp,
    DemoLimits,
    build_blocks,
    parse_labels,
    remove_uploads,
    result_html,
    write_space,
)

LUDB = Path(__file__).resolve().parent / "fixtures" / "ludb"


@pytest.fixture(scope="module")
def app(model_folder):
    return DemoApp(str(model_folder), DemoLimits(max_upload_bytes=1_000_000, max_duration_s=60.0))


def _uploads(folder: Path, record: str = "1") -> list[str]:
    """The record's files as Gradio hands them over: copies in an upload cache folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".hea", ".dat"):
        shutil.copyfile(LUDB / f"{record}{suffix}", folder / f"{record}{suffix}")
    return [str(folder / f"{record}.hea"), str(folder / f"{record}.dat")]


def test_scores_a_real_record_and_deletes_the_uploads(app, tmp_path):
    uploads = _uploads(tmp_path / "cache")
    result = app.analyse(uploads, None, ["AFIB"], "sinus rhythm", "{}", True)
    assert result.error is None
    assert {item["label"] for item in result.scores} == {"AFIB", "sinus rhythm"}
    assert all(0.0 <= item["score"] <= 1.0 for item in result.scores)
    assert result.picture_png.startswith(b"\x89PNG")
    assert result.label_texts["AFIB"] != "AFIB"  # the code was expanded to its shipped description
    assert any("500 Hz" in note for note in result.notes)
    assert not any(Path(path).exists() for path in uploads)  # nothing kept after the request
    assert not any(app.work_root.iterdir())  # the request's staging folder is gone too
    error, picture, table, _, notes = result_html(result)
    assert error == "" and "data:image/png;base64," in picture and "sinus rhythm" in table and "<li>" in notes


def test_zip_of_a_record_folder_and_resampling_note(app, tmp_path):
    import numpy as np
    import wfdb

    # A real LUDB record written at 250 Hz: the processor resamples it, and the page says so.
    record = wfdb.rdrecord(str(LUDB / "2"))
    folder = tmp_path / "record"
    folder.mkdir()
    wfdb.wrsamp("r250", fs=250, units=record.units, sig_name=record.sig_name, p_signal=record.p_signal[::2],
                fmt=["16"] * 12, write_dir=str(folder))
    archive = tmp_path / "cache" / "record.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as handle:
        for path in folder.iterdir():
            handle.write(path, f"record/{path.name}")
    result = app.analyse([str(archive)], None, [], "sinus rhythm", "ECG showing {}.", False)
    assert result.error is None, result.error
    assert any("Resampled from 250 Hz" in note for note in result.notes)
    assert np.isclose(result.scores[0]["score"], 1.0)  # one label, softmax
    assert not archive.exists()


def test_long_record_gets_a_timeline(app, tmp_path):
    import numpy as np
    import wfdb

    record = wfdb.rdrecord(str(LUDB / "3"))
    folder = tmp_path / "cache"
    folder.mkdir()
    signal = np.concatenate([record.p_signal] * 3)  # 30 s
    wfdb.wrsamp("long", fs=500, units=record.units, sig_name=record.sig_name, p_signal=signal,
                fmt=["16"] * 12, write_dir=str(folder))
    result = app.analyse([str(folder / "long.hea"), str(folder / "long.dat")], None, ["AFIB"], "sinus rhythm")
    assert result.error is None, result.error
    assert [window["start"] for window in result.windows] == [0.0, 10.0, 20.0]
    assert result.timeline_png.startswith(b"\x89PNG")
    assert any("3 windows" in note for note in result.notes)


def test_errors_are_one_readable_line(app, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    shutil.copyfile(LUDB / "2.hea", damaged / "2.hea")
    (damaged / "2.dat").write_bytes(b"\x00" * 100)  # truncated signal file
    (damaged / "notes.txt").write_text("not an ECG")
    cases = {
        "truncated": ([str(damaged / "2.hea"), str(damaged / "2.dat")], "header disagrees with the data"),
        "unknown format": ([str(damaged / "notes.txt")], "Unsupported ECG file notes.txt"),
        "nothing": ([], "Upload an ECG file"),
    }
    for name, (uploads, expected) in cases.items():
        result = app.analyse(uploads, None, [], "AFIB")
        assert result.error is not None and expected in result.error, (name, result.error)
        assert "\n" not in result.error and "Traceback" not in result.error
        assert str(damaged) not in result.error  # the server's folders are not shown
        error, picture, *_ = result_html(result)
        assert "dbeta-error" in error and picture == ""
    assert "Name at least one label" in app.analyse(_uploads(tmp_path / "c1"), None, [], " ; ").error


def test_limits_size_and_duration(model_folder, tmp_path):
    small = DemoApp(str(model_folder), DemoLimits(max_upload_bytes=50_000, max_duration_s=5.0), examples=False)
    result = small.analyse(_uploads(tmp_path / "a"), None, [], "AFIB")
    assert "this demo accepts at most 0.0477 MB" in result.error
    roomy = DemoApp(str(model_folder), DemoLimits(max_upload_bytes=1_000_000, max_duration_s=5.0), examples=False)
    result = roomy.analyse(_uploads(tmp_path / "b"), None, [], "AFIB")
    assert "10 s long; this demo scores at most 5 s" in result.error
    zip_bomb = tmp_path / "c" / "big.zip"
    zip_bomb.parent.mkdir()
    with zipfile.ZipFile(zip_bomb, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("big.dat", b"\x00" * 2_000_000)  # 2 MB unpacked from a few kB
    assert "unpacks to more than" in roomy.analyse([str(zip_bomb)], None, [], "AFIB").error
    assert not any(roomy.work_root.iterdir())


def test_page_queue_and_concurrency_limits(app):
    package = Path(sys.modules["dbeta.web_demo"].__file__).parent
    before = sorted(package.iterdir())
    blocks = build_blocks(app)
    assert sorted(package.iterdir()) == before  # nothing written beside the code (e.g. Gradio .pyi stubs)
    assert blocks._queue.max_size == app.limits.queue_size
    score = [fn for fn in blocks.fns.values() if fn.api_name == "score"]
    assert len(score) == 1 and score[0].concurrency_limit == app.limits.concurrency_limit == 1


def test_label_parsing_and_picker(app):
    assert parse_labels(["AFIB", "LBBB"], "sinus rhythm; AFIB\nleft axis deviation") == [
        "AFIB", "LBBB", "sinus rhythm", "left axis deviation"]
    codes = dict((code, text) for text, code in app.label_choices())
    assert "AFIB" in codes and codes["AFIB"].startswith("AFIB - ")


def test_remove_uploads_keeps_folders_outside_the_upload_cache(tmp_path, monkeypatch):
    cache = tmp_path / "gradio"
    (cache / "abc").mkdir(parents=True)
    (cache / "abc" / "x.hea").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "y.hea").write_text("y")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    remove_uploads([str(cache / "abc" / "x.hea"), str(tmp_path / "mine" / "y.hea")])
    assert not (cache / "abc").exists() and cache.is_dir() and (tmp_path / "mine").is_dir()


def test_missing_default_model_is_one_clear_message(tmp_path, monkeypatch, capsys):
    from dbeta.cli import main

    monkeypatch.chdir(tmp_path)  # no outputs/dbeta-demo here
    assert main(["demo"]) == 2
    assert "README command 1" in capsys.readouterr().err


def test_space_folder(model_folder, tmp_path):
    space = write_space(str(model_folder), tmp_path / "space")
    readme = (space / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    requirements = (space / "requirements.txt").read_text().split()
    assert any(line.startswith("gradio") for line in requirements) and any(line.startswith("wfdb") for line in requirements)
    assert (space / "model" / "config.json").is_file() and not any(path.is_dir() for path in (space / "model").iterdir())
    # app.py is dbeta demo's own module, copied beside it, not a second app.
    assert (space / "dbeta" / "web_demo.py").read_bytes() == Path(sys.modules["dbeta.web_demo"].__file__).read_bytes()
    check = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, '.'); import dbeta.web_demo as w; "
         "print(w.__file__); print(len(w.example_records(2)))"],
        cwd=space, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
    )
    assert check.returncode == 0, check.stderr
    assert str(space) in check.stdout.splitlines()[0] and check.stdout.splitlines()[1] == "2"


# --------------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------------


def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("DBETA_REQUIRE_BROWSER"):
            pytest.fail("DBETA_REQUIRE_BROWSER is set but chromium/chromedriver are not on PATH")
        reason = "no chromium/chromedriver on PATH (apt-get install chromium chromium-driver; CI's .ci/run does)"
        print(f"test_web_demo: browser test skipped: {reason}")
        pytest.skip(reason)
    pytest.importorskip("selenium")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _save_screenshot(driver, path: Path) -> None:
    from PIL import Image

    driver.save_screenshot(str(path))
    target = os.environ.get("DBETA_SCREENSHOTS_DIR")
    if target:  # a palette PNG: sharp text and grid, a fraction of the size
        image = Image.open(path).convert("RGB").quantize(colors=64)
        image.save(Path(target) / f"web_demo_{path.stem}.png", optimize=True)


def test_in_a_browser(model_folder, tmp_path, shared_real_data_dir):
    chromium, chromedriver = _browser_or_skip()
    # DBETA_DEMO_MODEL=outputs/dbeta-demo serves a trained model (for the screenshots in docs/).
    model = os.environ.get("DBETA_DEMO_MODEL") or str(model_folder)
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    # The server's temporary folder (uploads, staging) lives here, so the test can see it emptied.
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "dbeta.cli", "demo", "--model", model, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(server_tmp)},
    )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1900"):
        options.add_argument(argument)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the demo did not start:\n{server.stdout.read() if server.poll() is not None else ''}")
                time.sleep(0.5)
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)
        wait = WebDriverWait(driver, 90)

        def use_page(files: list[Path], labels: str) -> None:
            driver.get(url)
            upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#ecg-upload input[type=file]"))
            upload.send_keys("\n".join(str(path) for path in files))
            # Gradio lists each file with a download link (⇣) once its upload is complete.
            wait.until(lambda d: d.find_element(By.ID, "ecg-upload").text.count("\u21e3") == len(files))
            driver.find_element(By.CSS_SELECTOR, "#free-labels textarea").send_keys(labels)
            driver.find_element(By.ID, "score-button").click()

        # A real LUDB record (.hea + .dat), two typed labels.
        use_page([LUDB / "1.hea", LUDB / "1.dat"], "atrial fibrillation; sinus rhythm")
        picture = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ecg-picture img"))[0]
        wait.until(lambda d: picture.get_attribute("naturalWidth") not in (None, "0"))
        table = driver.find_element(By.ID, "scores").text
        assert "atrial fibrillation" in table and "sinus rhythm" in table
        scores = [float(cell.text) for cell in driver.find_elements(By.CSS_SELECTOR, "#scores td.dbeta-score")]
        assert len(scores) == 2 and all(0.0 <= value <= 1.0 for value in scores)
        assert "500 Hz" in driver.find_element(By.ID, "notes").text
        assert driver.find_element(By.ID, "demo-error").text.strip() == ""
        _save_screenshot(driver, tmp_path / "scores.png")

        # A damaged upload: the header's signal file is truncated.
        damaged = tmp_path / "damaged"
        damaged.mkdir()
        shutil.copyfile(LUDB / "2.hea", damaged / "2.hea")
        (damaged / "2.dat").write_bytes((LUDB / "2.dat").read_bytes()[:1000])
        use_page([damaged / "2.hea", damaged / "2.dat"], "AFIB")
        # The message box itself (while the request runs, Gradio shows a timer in the same place).
        message = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#demo-error .dbeta-error"))[0].text.strip()
        assert "header disagrees with the data" in message, message
        assert "Traceback" not in driver.page_source
        assert len(message.splitlines()) == 1
        assert not driver.find_elements(By.CSS_SELECTOR, "#ecg-picture img")
        _save_screenshot(driver, tmp_path / "error.png")

        # A record longer than the model's 10 s: scored in windows, with a timeline. A real PTB-DB
        # record (38.4 s, 1000 Hz, 15 leads) where the shared data is; else three copies of a LUDB record.
        ptb = shared_real_data_dir / "ptbdb" / "records" / "s0010_re.hea" if shared_real_data_dir else None
        if ptb is not None and ptb.is_file():
            files, windows = [ptb, ptb.with_suffix(".dat"), ptb.with_suffix(".xyz")], "4 windows"
        else:
            import wfdb

            record = wfdb.rdrecord(str(LUDB / "4"))
            wfdb.wrsamp("ludb4x3", fs=500, units=record.units, sig_name=record.sig_name,
                        p_signal=np.concatenate([record.p_signal] * 3), fmt=["16"] * 12, write_dir=str(tmp_path))
            files, windows = [tmp_path / "ludb4x3.hea", tmp_path / "ludb4x3.dat"], "3 windows"
        use_page(files, "sinus rhythm; atrial fibrillation; sinus bradycardia")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline img"))
        assert windows in driver.find_element(By.ID, "notes").text
        assert len(driver.find_elements(By.CSS_SELECTOR, "#scores td.dbeta-score")) == 3
        _save_screenshot(driver, tmp_path / "timeline.png")
        # A vendored LUDB example and two codes found by typing in the searchable picker.
        from selenium.webdriver.common.keys import Keys

        driver.get(url)
        example = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#example input"))
        example.click()
        example.send_keys("LUDB 3", Keys.ENTER, Keys.ESCAPE)
        codes = driver.find_element(By.CSS_SELECTOR, "#label-codes input")
        codes.click()
        for search in ("left bundle", "atrial fib"):
            codes.send_keys(search)
            time.sleep(0.5)  # the list filters as one types
            codes.send_keys(Keys.ENTER)
        codes.send_keys(Keys.ESCAPE)
        driver.find_element(By.ID, "score-button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ecg-picture img"))
        assert len(driver.find_elements(By.CSS_SELECTOR, "#scores td.dbeta-score")) == 2
        assert "LUDB 3" in driver.find_element(By.ID, "notes").text
        _save_screenshot(driver, tmp_path / "example.png")

        kept = [path for path in server_tmp.rglob("*") if path.is_file()]
        assert not kept, f"files kept after the requests: {kept}"
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    assert not any(server_tmp.iterdir()), list(server_tmp.iterdir())  # the temporary folders go at exit
