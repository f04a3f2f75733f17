"""`dbeta embed` / `dbeta classify` split into shards: `--num_shards/--shard_index` (SLURM arrays) and
`RANK`/`WORLD_SIZE` (torchrun, accelerate launch), merged by rank 0, resumable."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from zero_shot_utils import (
    CINC_FIXTURES,
    LUDB_FIXTURES,
    copy_records,
    save_tiny_zero_shot_folder,
)

from dbeta import sharding
from dbeta.cli import find_records, main
from tests.launch_helpers import accelerate_launch

REPO = Path(__file__).resolve().parents[1]
LABELS = ["AFIB", "LBBB", "sinus rhythm"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    copy_records(LUDB_FIXTURES, root / "ludb", ["1", "2", "3"])
    copy_records(CINC_FIXTURES, root / "cinc", ["E07501", "HR06000", "JS00666"])
    # A corrupt record (a header whose signal file was cut short): one shard reports it and goes on.
    header = (LUDB_FIXTURES / "4.hea").read_text().replace("4.dat", "broken.dat").replace("4 12", "broken 12", 1)
    (root / "ludb" / "broken.hea").write_text(header)
    (root / "ludb" / "broken.dat").write_bytes((LUDB_FIXTURES / "4.dat").read_bytes()[:1000])
    return root


def embed_args(records, model_folder, output, *extra):
    return [
        "embed",
        str(records),
        "--model",
        str(model_folder),
        "--output",
        str(output),
        "--no_progress",
        "--batch_size",
        "2",
        *extra,
    ]


def classify_args(records, model_folder, output, *extra):
    return [
        "classify",
        str(records),
        "--model",
        str(model_folder),
        "--labels",
        *LABELS,
        "--output",
        str(output),
        "--no_progress",
        "--batch_size",
        "2",
        *extra,
    ]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def assert_same_tables(merged: pa.Table, single: pa.Table):
    assert merged.column_names == single.column_names
    assert merged.column("record").to_pylist() == single.column("record").to_pylist()
    for name in merged.column_names:
        if name == "embedding":
            np.testing.assert_allclose(
                np.stack(merged.column(name).to_numpy(zero_copy_only=False)),
                np.stack(single.column(name).to_numpy(zero_copy_only=False)),
                rtol=1e-5,
                atol=1e-6,
            )
        else:
            assert merged.column(name).to_pylist() == single.column(name).to_pylist()


def assert_same_csv(merged_rows, single_rows, numeric_from: int):
    assert merged_rows[0] == single_rows[0]
    assert [row[0] for row in merged_rows] == [row[0] for row in single_rows]
    for got, want in zip(merged_rows[1:], single_rows[1:]):
        assert got[:numeric_from] == want[:numeric_from]
        np.testing.assert_allclose(
            [float(x) for x in got[numeric_from:]],
            [float(x) for x in want[numeric_from:]],
            rtol=1e-4,
            atol=1e-6,
        )


# -- the rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [0, 1, 2, 5, 7, 16, 100])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 16])
def test_shards_are_disjoint_contiguous_and_cover_the_list(total, count):
    items = list(range(total))
    shards = [sharding.shard_items(items, count, index) for index in range(count)]
    assert [item for shard in shards for item in shard] == items  # union in order = the list, each item once
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_file_names():
    assert sharding.shard_path("out/emb.parquet", 3, 16) == Path("out/emb.shard-00003-of-00016.parquet")
    assert sharding.shard_path("scores", 0, 2) == Path("scores.shard-00000-of-00002")
    assert sharding.marker_path("emb.parquet", 1, 2) == Path("emb.shard-00001-of-00002.parquet.done.json")


def test_environment_gives_the_shard():
    assert sharding.resolve_shard(None, None, {}) is None
    assert sharding.resolve_shard(None, None, {"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert sharding.resolve_shard(None, None, {"WORLD_SIZE": "4", "RANK": "2"}) == sharding.Shard(2, 4, True)
    # Explicit options win over the launcher's variables (and are not merged).
    assert sharding.resolve_shard(3, 1, {"WORLD_SIZE": "4", "RANK": "2"}) == sharding.Shard(1, 3, False)
    assert sharding.resolve_shard(1, 0, {}) is None
    for environ in (
        {"WORLD_SIZE": "two", "RANK": "0"},
        {"WORLD_SIZE": "2"},
        {"WORLD_SIZE": "2", "RANK": "2"},
    ):
        with pytest.raises(sharding.ShardError):
            sharding.resolve_shard(None, None, environ)


# -- (a) shards together = one process ----------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_embed_shards_together_are_the_one_process_rows(model_folder, records, tmp_path, count):
    single = tmp_path / "single.parquet"
    assert main(embed_args(records, model_folder, single)) == 1  # the broken record is skipped
    output = tmp_path / "emb.parquet"
    statuses = [
        main(
            embed_args(
                records,
                model_folder,
                output,
                "--num_shards",
                str(count),
                "--shard_index",
                str(index),
            )
        )
        for index in range(count)
    ]
    assert not output.exists()  # explicit shards are not merged: each writes its own file
    parts = [sharding.shard_path(output, index, count) for index in range(count)]
    assert all(part.is_file() for part in parts)
    tables = [pq.read_table(part) for part in parts]
    ids = [table.column("record").to_pylist() for table in tables]
    flat = [name for part in ids for name in part]
    assert len(flat) == len(set(flat))  # disjoint
    assert_same_tables(pa.concat_tables(tables), pq.read_table(single))
    all_ids = [ref.record_id for ref in find_records(records)]
    assert sorted(flat + ["ludb/broken"]) == sorted(all_ids)
    assert max(statuses) == 1 and statuses.count(1) == 1  # one shard holds the broken record
    for index in range(count):
        marker = json.loads(sharding.marker_path(output, index, count).read_text())
        assert marker["shard_index"] == index and marker["num_shards"] == count


@pytest.mark.parametrize("count", [2, 3])
def test_classify_shards_together_are_the_one_process_rows(model_folder, records, tmp_path, count):
    single = tmp_path / "single.csv"
    assert main(classify_args(records, model_folder, single)) == 1
    output = tmp_path / "scores.csv"
    for index in range(count):
        main(
            classify_args(
                records,
                model_folder,
                output,
                "--num_shards",
                str(count),
                "--shard_index",
                str(index),
            )
        )
    parts = [read_csv(sharding.shard_path(output, index, count)) for index in range(count)]
    assert all(part[0] == ["record", *LABELS] for part in parts)
    merged = [parts[0][0]] + [row for part in parts for row in part[1:]]
    names = [row[0] for row in merged[1:]]
    assert len(names) == len(set(names))
    assert_same_csv(merged, read_csv(single), numeric_from=1)


def test_windowed_shards_together_are_the_one_process_rows(model_folder, records, tmp_path):
    single, per_window_single = tmp_path / "single.csv", tmp_path / "single_windows.csv"
    window_options = ["--window", "sliding", "--window_stride", "5"]
    main(
        classify_args(
            records,
            model_folder,
            single,
            *window_options,
            "--per_window",
            str(per_window_single),
        )
    )
    output, per_window = tmp_path / "scores.csv", tmp_path / "windows.csv"
    for index in range(2):
        main(
            classify_args(
                records,
                model_folder,
                output,
                *window_options,
                "--per_window",
                str(per_window),
                "--num_shards",
                "2",
                "--shard_index",
                str(index),
            )
        )
    merged = read_csv(sharding.shard_path(output, 0, 2)) + read_csv(sharding.shard_path(output, 1, 2))[1:]
    assert_same_csv(merged, read_csv(single), numeric_from=2)
    windows = read_csv(sharding.shard_path(per_window, 0, 2)) + read_csv(sharding.shard_path(per_window, 1, 2))[1:]
    assert_same_csv(windows, read_csv(per_window_single), numeric_from=2)

    embed_single = tmp_path / "windows_single.parquet"
    main(embed_args(records, model_folder, embed_single, "--windows"))
    embed_output = tmp_path / "windows.parquet"
    for index in range(2):
        main(
            embed_args(
                records,
                model_folder,
                embed_output,
                "--windows",
                "--num_shards",
                "2",
                "--shard_index",
                str(index),
            )
        )
    tables = [pq.read_table(sharding.shard_path(embed_output, index, 2)) for index in range(2)]
    assert_same_tables(pa.concat_tables(tables), pq.read_table(embed_single))


def test_more_shards_than_records_leaves_empty_shards(model_folder, records, tmp_path, capsys):
    output = tmp_path / "emb.parquet"
    count = len(find_records(records)) + 2
    statuses = [
        main(
            embed_args(
                records,
                model_folder,
                output,
                "--num_shards",
                str(count),
                "--shard_index",
                str(index),
            )
        )
        for index in range(count)
    ]
    assert statuses.count(0) == count - 1 and statuses.count(1) == 0 and statuses.count(2) == 1  # the broken one
    assert "has no records" in capsys.readouterr().err
    rows = sum(pq.read_table(path).num_rows for path in tmp_path.glob("emb.shard-*.parquet"))
    assert rows == len(find_records(records)) - 1


# -- (b) bad shard arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (["--num_shards", "0", "--shard_index", "0"], "--num_shards must be >= 1"),
        (["--num_shards", "-2", "--shard_index", "0"], "--num_shards must be >= 1"),
        (
            ["--num_shards", "2", "--shard_index", "2"],
            "--shard_index must be between 0 and 1",
        ),
        (
            ["--num_shards", "2", "--shard_index", "-1"],
            "--shard_index must be between 0 and 1",
        ),
        (["--num_shards", "2"], "--num_shards 2 needs --shard_index"),
        (["--shard_index", "0"], "--shard_index needs --num_shards"),
        (["--num_shards", "1.5", "--shard_index", "0"], "invalid int value"),
        (["--num_shards", "2", "--shard_index", "one"], "invalid int value"),
    ],
)
@pytest.mark.parametrize("command", ["embed", "classify"])
def test_bad_shard_arguments_are_usage_errors(model_folder, records, tmp_path, capsys, command, options, message):
    build = embed_args if command == "embed" else classify_args
    try:
        status = main(build(records, model_folder, tmp_path / "out.csv", *options))
    except SystemExit as exit:  # argparse: not an integer
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(message in line for line in err), err
    assert list(tmp_path.iterdir()) == []


def test_bad_launcher_environment_is_a_usage_error(model_folder, records, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    assert main(embed_args(records, model_folder, tmp_path / "out.parquet")) == 2
    assert "RANK=5 must be between 0 and 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- (c) RANK / WORLD_SIZE: rank 0 merges -------------------------------------------------------


def _launch(argv, rank, world_size, **extra_env):
    env = {
        **os.environ,
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        **extra_env,
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "dbeta.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("command", ["embed", "classify"])
def test_ranks_from_the_environment_are_merged_by_rank_0(model_folder, records, tmp_path, command):
    if command == "embed":
        single, output, errors = (
            tmp_path / "single.parquet",
            tmp_path / "emb.parquet",
            tmp_path / "errors.csv",
        )
        build = embed_args
    else:
        single, output, errors = (
            tmp_path / "single.csv",
            tmp_path / "scores.csv",
            tmp_path / "errors.csv",
        )
        build = classify_args
    assert (
        main(
            build(
                records,
                model_folder,
                single,
                "--errors",
                str(tmp_path / "single_errors.csv"),
            )
        )
        == 1
    )
    argv = build(records, model_folder, output, "--errors", str(errors), "--device", "cpu")
    processes = [_launch(argv, rank, 2) for rank in (0, 1)]
    results = [(process.wait(timeout=300), process.stdout.read(), process.stderr.read()) for process in processes]
    assert results[0][0] == 1, results[0][2]  # the merged run skipped the broken record
    assert results[1][0] == 0, results[1][2]  # other ranks leave the status to rank 0
    assert "merged 2 shards" in results[0][2]
    if command == "embed":
        assert_same_tables(pq.read_table(output), pq.read_table(single))
    else:
        assert_same_csv(read_csv(output), read_csv(single), numeric_from=1)
    assert read_csv(errors) == read_csv(tmp_path / "single_errors.csv")
    leftovers = sorted(path.name for path in tmp_path.iterdir() if ".shard-" in path.name or path.suffix == ".partial")
    assert leftovers == []


def test_rank_0_gives_up_after_merge_timeout(model_folder, records, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    output = tmp_path / "emb.parquet"
    assert main(embed_args(records, model_folder, output, "--merge_timeout", "1")) == 2
    err = capsys.readouterr().err
    assert "shards [1] of 2 did not complete" in err
    assert not output.exists()
    # Its own shard is complete, so the next try reuses it.
    assert sharding.marker_path(output, 0, 2).is_file()


# -- (d) resume ----------------------------------------------------------------------------------


def test_complete_shard_is_reused_and_stale_one_recomputed(model_folder, records, tmp_path, capsys):
    output = tmp_path / "emb.parquet"
    argv = embed_args(records, model_folder, output, "--num_shards", "2", "--shard_index", "0")
    assert main(argv) == 0
    part, marker = sharding.shard_path(output, 0, 2), sharding.marker_path(output, 0, 2)
    before = (part.stat().st_mtime_ns, marker.read_text())
    capsys.readouterr()

    # Same run (another batch size does not change rows): reused, nothing rewritten.
    assert main(argv[:-4] + ["--batch_size", "3", "--num_shards", "2", "--shard_index", "0"]) == 0
    assert "reused, not recomputed" in capsys.readouterr().err
    assert (part.stat().st_mtime_ns, marker.read_text()) == before

    # Another run (other options, here --windows) writing the same file names: recomputed.
    assert main(argv + ["--windows"]) == 0
    assert "reused, not recomputed" not in capsys.readouterr().err
    assert "window_start_s" in pq.read_table(part).column_names
    assert json.loads(marker.read_text())["key"] != json.loads(before[1])["key"]

    # A marker whose data file is gone, or a different model: recomputed.
    assert main(argv) == 0
    capsys.readouterr()
    part.unlink()
    assert main(argv) == 0
    assert "reused, not recomputed" not in capsys.readouterr().err and part.is_file()
    other_model = save_tiny_zero_shot_folder(tmp_path / "other-model", seed=1)
    before = pq.read_table(part)
    assert main(embed_args(records, other_model, output, "--num_shards", "2", "--shard_index", "0")) == 0
    assert "reused, not recomputed" not in capsys.readouterr().err
    assert not np.allclose(
        np.stack(before.column("embedding").to_numpy(zero_copy_only=False)),
        np.stack(pq.read_table(part).column("embedding").to_numpy(zero_copy_only=False)),
    )


def test_launcher_rerun_reuses_the_complete_shards(model_folder, records, tmp_path, monkeypatch, capsys):
    """Rank 1 finished in an earlier, crashed run; rank 0 alone on the re-run reuses it and merges."""
    output = tmp_path / "emb.parquet"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(embed_args(records, model_folder, output)) == 0
    mtime = sharding.shard_path(output, 1, 2).stat().st_mtime_ns
    assert not output.exists()
    capsys.readouterr()
    # Rank 1 again (the whole job restarted): reused.
    assert main(embed_args(records, model_folder, output)) == 0
    assert "reused, not recomputed" in capsys.readouterr().err
    assert sharding.shard_path(output, 1, 2).stat().st_mtime_ns == mtime
    monkeypatch.setenv("RANK", "0")
    assert main(embed_args(records, model_folder, output)) == 1
    single = tmp_path / "single.parquet"
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    main(embed_args(records, model_folder, single))
    assert_same_tables(pq.read_table(output), pq.read_table(single))
    assert not list(tmp_path.glob("*.shard-*"))


# -- accelerate launch ---------------------------------------------------------------------------


def test_accelerate_launch_two_processes(model_folder, records, tmp_path):
    pytest.importorskip("accelerate")
    single, output = tmp_path / "single.parquet", tmp_path / "emb.parquet"
    main(embed_args(records, model_folder, single))
    result = accelerate_launch(tmp_path, "-m", "dbeta.cli", *embed_args(records, model_folder, output, "--device", "cpu"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "merged 2 shards" in result.stderr
    assert_same_tables(pq.read_table(output), pq.read_table(single))
    assert not list(tmp_path.glob("*.shard-*"))
