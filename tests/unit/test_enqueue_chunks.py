"""The producer registers and sends frames in chunks that start small (workers start sooner) and
grow to CHUNK (one transaction per 256 frames on long runs); no frame is lost or repeated."""

from __future__ import annotations

import pytest

from sa2va_queue.producer.enqueue import CHUNK, FIRST_CHUNK, _chunks


@pytest.mark.parametrize("n", [0, 1, FIRST_CHUNK, FIRST_CHUNK + 1, 1000, 5000])
def test_chunks_grow_from_the_first_and_keep_every_item_in_order(n: int) -> None:
    parts = list(_chunks(iter(range(n)), CHUNK))
    assert [x for p in parts for x in p] == list(range(n))
    sizes = [len(p) for p in parts]
    full = sizes[:-1]  # the last chunk holds what is left
    expected = [min(FIRST_CHUNK * 2**i, CHUNK) for i in range(len(full))]
    assert full == expected
    assert all(0 < s <= CHUNK for s in sizes)


def test_a_smaller_limit_than_the_first_chunk_is_kept() -> None:
    assert [len(p) for p in _chunks(iter(range(10)), 4)] == [4, 4, 2]
