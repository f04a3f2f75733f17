"""benchmarks/archive_embedding.py builds a mixed-rate WFDB archive that `dbeta embed` reads and resamples."""

import sys
from pathlib import Path

import numpy as np
import wfdb
from zero_shot_utils import LUDB_FIXTURES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from archive_embedding import source_records, write_archive  # noqa: E402

from dbeta.cli import find_records, read_record  # noqa: E402
from processing_dbeta import DBetaFeatureExtractor  # noqa: E402


def test_archive_has_three_rates_and_reads_back_at_500_hz(tmp_path):
    sources = source_records([LUDB_FIXTURES])
    assert sources
    per_rate = write_archive(sources, tmp_path / "archive", 7)
    assert per_rate == {500: 3, 250: 2, 360: 2}
    refs = find_records(tmp_path / "archive")
    assert len(refs) == 7
    rates = sorted(wfdb.rdheader(str(ref.path)).fs for ref in refs)
    assert rates == [250, 250, 360, 360, 500, 500, 500]
    extractor = DBetaFeatureExtractor()
    for ref in refs:
        values = extractor(read_record(ref, extractor))["input_values"][0]
        assert values.shape == (12, 5000) and np.isfinite(values).all()
    # Record 1 is a 250 Hz copy: 10 s in 2500 samples on disk, 5000 after the reader resamples it.
    down = wfdb.rdrecord(str(refs[1].path))
    assert down.fs == 250 and down.sig_len == 2500
