"""`benchmarks/data_loading.py --quick` runs and prints the loader/step table for 0 and 2 workers."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_data_loading_benchmark_quick(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data_loading.py"), "--quick", "--work_dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("| demo")]
    assert len(lines) == 2, result.stdout
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert sorted(row[1] for row in rows) == ["0", "2"]  # num_workers
    for row in rows:
        records_per_s, step_per_s, ratio = float(row[5]), float(row[6]), float(row[7])
        assert records_per_s > 0 and step_per_s > 0
        assert abs(ratio - records_per_s / step_per_s) <= 0.05 * ratio + 0.1
    assert "lowest ratio loader/step" in result.stdout
    assert (tmp_path / "prepared" / "dataset_dict.json").is_file()
