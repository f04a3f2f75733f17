"""`dbeta.cli.read_ahead`: the reader thread of `--num_workers 0` (order, errors, early stop)."""

import threading
import time

import pytest

from dbeta.cli import read_ahead


def test_items_come_in_order():
    assert list(read_ahead(iter(range(50)), depth=2)) == list(range(50))
    assert list(read_ahead([])) == []


def test_an_error_of_the_reader_is_raised_in_the_consumer():
    def failing():
        yield 1
        raise OSError("disk gone")

    stream = read_ahead(failing())
    assert next(stream) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(stream)


def test_stopping_early_ends_the_thread():
    produced = []

    def endless():
        number = 0
        while True:
            produced.append(number)
            yield number
            number += 1

    stream = read_ahead(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    deadline = time.monotonic() + 10
    while any(thread.name == "dbeta-read-ahead" for thread in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(thread.name == "dbeta-read-ahead" for thread in threading.enumerate())
    assert len(produced) <= 3 + 2 + 2  # consumed + queued + one in hand
