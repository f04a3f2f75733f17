"""`dbeta.files`: the one atomic file writer and the staged folder writers."""

import os
import stat
import threading

import pytest

from dbeta.files import AtomicOutput, staged_files, staged_folder, write_text


def test_atomic_output_replaces_a_regular_file_only_on_commit(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old\n")
    with AtomicOutput(target) as output:
        output.temporary.write_text("half")
        # not committed: the block ends (as an exception or an interrupt would end it)
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]
    write_text(target, "new\n")
    assert target.read_text() == "new\n"


def test_atomic_output_writes_through_a_symlink_and_keeps_it(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    write_text(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"


def test_atomic_output_writes_a_fifo_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo).read()))
    reader.start()
    write_text(fifo, "through the pipe\n")
    reader.join(timeout=30)
    assert received == ["through the pipe\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the FIFO, not a file renamed over it


def test_atomic_output_writes_a_character_device_in_place(tmp_path):
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # our own /dev/null node
    except (PermissionError, OSError) as error:
        pytest.skip(f"cannot make a device node here ({error})")
    write_text(device, "discarded\n")
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert list(tmp_path.iterdir()) == [device]


def test_atomic_output_refuses_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError):
        AtomicOutput(tmp_path)


def test_staged_folder_leaves_the_old_folder_whole_on_failure(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(target, overwrite=True) as staging:
            (staging / "weights").write_text("new")
            raise RuntimeError("export failed")
    assert (target / "weights").read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]
    with staged_folder(target, overwrite=True) as staging:
        (staging / "weights").write_text("new")
    assert [path.name for path in target.iterdir()] == ["weights"] and (target / "weights").read_text() == "new"


def test_staged_folder_refuses_to_replace_what_it_did_not_write(tmp_path):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_text("x")
    with pytest.raises(FileExistsError):
        with staged_folder(target, overwrite=True, replaceable=lambda folder: (folder / "meta.json").is_file()):
            pass
    assert (target / "holiday.jpg").is_file()


def test_staged_files_moves_the_new_files_in_and_keeps_the_rest(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_10").mkdir(parents=True)
    (run / "model.safetensors").write_text("step 10")
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "old.json").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with staged_files(run) as staging:
            (staging / "model.safetensors").write_text("step 20")
            raise KeyboardInterrupt
    assert (run / "model.safetensors").read_text() == "step 10"
    assert sorted(path.name for path in run.iterdir()) == ["checkpoints", "model.safetensors", "tokenizer"]
    with staged_files(run) as staging:
        (staging / "model.safetensors").write_text("step 20")
        (staging / "tokenizer").mkdir()
        (staging / "tokenizer" / "new.json").write_text("new")
    assert (run / "model.safetensors").read_text() == "step 20"
    assert [path.name for path in (run / "tokenizer").iterdir()] == ["new.json"]
    assert sorted(path.name for path in run.iterdir()) == ["checkpoints", "model.safetensors", "tokenizer"]
