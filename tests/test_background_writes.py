"""io/background.py: layer files written while the next layer is compressed."""

import pytest

from llava_fa.io.background import BackgroundWrites


def test_writes_run_in_order_and_at_most_depth_wait():
    done, writes = [], BackgroundWrites(depth=1)
    for i in range(5):
        writes.submit(done.append, i)
        assert done[:i] == list(range(i)) and len(done) <= i + 1  # submitting waited for the write before
    writes.drain()
    assert done == list(range(5))


def test_a_failed_write_is_raised_in_the_caller():
    def full_disk(_):
        raise OSError(28, "No space left on device")

    writes = BackgroundWrites(depth=2)
    writes.submit(full_disk, 0)
    with pytest.raises(OSError, match="No space"):
        writes.drain()
    writes.drain()  # reported once
