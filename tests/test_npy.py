"""geoseg.io.npy: block files read from many threads (numpy parses their headers with ast)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from geoseg.io.npy import _HEADER, load_npz, map_npy


def test_readers_return_the_arrays_and_map_lazily(tmp_path: Path) -> None:
    a, b = np.arange(12, dtype=np.float16).reshape(3, 4), np.array([True, False])
    np.savez(tmp_path / "x.npz", a=a, b=b)
    np.save(tmp_path / "p.npy", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))

    def read(_: int) -> tuple[np.ndarray, ...]:
        return (*load_npz(tmp_path / "x.npz", "a", "b"), map_npy(tmp_path / "p.npy")[1, 2])

    with ThreadPoolExecutor(8) as pool:
        for ga, gb, row in pool.map(read, range(200)):
            assert ga.dtype == np.float16 and np.array_equal(ga, a) and np.array_equal(gb, b)
            assert row.tolist() == [20, 21, 22, 23]
    mapped = map_npy(tmp_path / "p.npy")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert not _HEADER.locked()  # released after each read
