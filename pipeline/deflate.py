"""Arrays compressed into HDF5 gzip chunks by the workers, written unchanged by the client.

The per-image stages (``resail distort``, ``resail compose``) run their images in worker processes
and one client writes one HDF5 file. Compressing the chunks there was the client's largest serial
cost (measured: ~0.2–0.6 s CPU per full-resolution Cityscapes image, so one client saturated at ~5
compose workers). The workers therefore deflate each chunk themselves and the client copies the
bytes into the file (``write_direct_chunk``); what crosses the network is the compressed chunks.
Readers see an ordinary gzip-filtered dataset.

The deflate streams come from Intel ISA-L (the ``isal`` package, a zlib-format encoder ~4× faster
than zlib at level 1 with the same ratio on these images) when it is installed, else from
``zlib``. Both are deterministic, so a file's bytes depend only on its arrays and on
:data:`DEFLATE_IMPL` (recorded by the stages): not on ``--jobs``, the backend or the order.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import h5py
import numpy as np

try:  # ISA-L: zlib-compatible streams, several times faster (a hard dependency in setup.cfg)
    from isal import isal_zlib as _impl
    from isal import __version__ as _impl_version

    DEFLATE_IMPL = f"isal-{_impl_version}"
except ImportError:  # pragma: no cover - exercised where isal is absent
    _impl = zlib
    DEFLATE_IMPL = f"zlib-{zlib.ZLIB_VERSION}"

#: Compression level of the chunks (the fastest; the images are mostly black or noisy anyway).
LEVEL = 1

__all__ = ["DEFLATE_IMPL", "LEVEL", "deflate", "CompressedArray"]


def deflate(data: bytes | memoryview) -> bytes:
    """A zlib-format deflate stream of ``data`` (what HDF5's gzip filter stores per chunk)."""
    return _impl.compress(data, LEVEL)


@dataclass
class CompressedArray:
    """An array as its HDF5 gzip chunks, one per leading index, compressed where it was made."""

    shape: tuple[int, ...]
    dtype: str
    chunks: list[bytes]
    whole_chunk: bool = False  # one chunk of the whole shape (else one per leading index)

    @classmethod
    def of(cls, arr: np.ndarray) -> "CompressedArray":
        """One chunk per leading index (``[K, H, W, …]`` variants: a reader takes one variant)."""
        return cls(tuple(arr.shape), arr.dtype.str, [deflate(np.ascontiguousarray(a).data) for a in arr])

    @classmethod
    def whole(cls, arr: np.ndarray) -> "CompressedArray":
        """The whole array as one chunk (an image that readers always read whole)."""
        return cls(tuple(arr.shape), arr.dtype.str, [deflate(np.ascontiguousarray(arr).data)], True)

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks)

    def write(self, f: h5py.File, key: str) -> h5py.Dataset:
        """Create ``key`` (gzip, one chunk per leading index, no timestamps) and copy the chunks in."""
        chunks = self.shape if self.whole_chunk else (1, *self.shape[1:])
        ds = f.create_dataset(key, shape=self.shape, dtype=np.dtype(self.dtype), chunks=chunks,
                              compression="gzip", compression_opts=LEVEL, track_times=False)
        if self.whole_chunk:
            ds.id.write_direct_chunk((0,) * len(self.shape), self.chunks[0])
            return ds
        zero = (0,) * (len(self.shape) - 1)
        for i, c in enumerate(self.chunks):
            ds.id.write_direct_chunk((i, *zero), c)
        return ds
