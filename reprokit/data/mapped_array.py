"""A `.npy` file mapped into memory that travels to worker processes as its path, not its bytes.

Training data larger than one DataFrame (`reprokit.data.mapped`) lives in `.npy` files; every
array of it is a :class:`MappedArray`: a copy-on-write `numpy.memmap` of the whole file (so
torch can wrap it without a copy and without a read-only warning, and nothing ever writes the
file). Pickling it (spawned workers of the process engine, Ray tasks) sends the path, and the
worker maps the same file: the OS page cache holds the data once for every process on the machine.
A slice or any array derived from it pickles as ordinary data.

`release()` drops the mapped pages from this process's resident memory (``MADV_DONTNEED``; the
page cache keeps them, so the next read is a memory copy, not a disk read). The training engines
call it every few hundred steps through `EncodedData.release_pages`, so a long epoch over a large
file does not leave the whole file resident in the process.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np

from reprokit.errors import ReprokitError


class MappedArray(np.memmap):
    """A whole `.npy` file, mapped copy-on-write (see the module docstring)."""

    npy_path: str | None = None

    def __array_finalize__(self, obj: Any) -> None:
        super().__array_finalize__(obj)
        self.npy_path = None  # derived arrays (slices, views) are not the whole file

    def __reduce__(self) -> Any:
        if self.npy_path is None:
            return np.asarray(self).__reduce__()
        return (open_mapped, (self.npy_path,))

    def release(self) -> None:
        """Drop this mapping's resident pages (a no-op where the OS has no ``madvise``)."""
        release(self)


def open_mapped(path: str | Path) -> MappedArray:
    """Map the `.npy` file at `path` (written by `numpy.lib.format.open_memmap` or `numpy.save`)."""
    try:
        base = np.load(path, mmap_mode="c")
    except FileNotFoundError:
        raise ReprokitError(
            f"the memory-mapped training data {path} is gone (or is not on this machine: "
            "workers on other machines need REPROKIT_CACHE_DIR on a shared filesystem)"
        ) from None
    if base.size == 0:  # numpy cannot map an empty file region: an ordinary empty array
        return base  # type: ignore[return-value]
    arr = base.view(MappedArray)
    arr.npy_path = str(path)
    return arr


def release(*arrays: Any) -> None:
    """Drop the resident pages of those of `arrays` that are memory maps (`numpy.memmap`, so
    files being written too: their pages stay in the page cache and reach the file)."""
    for arr in arrays:
        handle = getattr(arr, "_mmap", None) if isinstance(arr, np.memmap) else None
        if handle is not None and hasattr(handle, "madvise"):
            handle.madvise(mmap.MADV_DONTNEED)
