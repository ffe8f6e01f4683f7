"""Keep long-running commands' resident memory near what they use.

Measured, not guessed: with Arrow's default pool (mimalloc) the memory freed by
each block or batch stays mapped, and glibc's self-tuning trim threshold does
the same for the system heap.

* `k2 load` (bench/ingest_bench.py, 2M rows) ended near 530 MB. The system pool
  with a fixed 1 MiB trim threshold hands freed buffers back. Fixing the trim
  threshold also pins glibc's mmap threshold at 128 KiB, so every column buffer
  was a fresh mmap, page-faulted in and unmapped again (a fifth of the reading
  thread's time went to the kernel); buffers up to 4 MiB now come from the
  heap: 13% less CPU preparing a block, about 20 MB more at peak.
* `k2 consume` (bench/stream_bench.py, 2M rows, 20k-row batches) peaked near
  740-790 MB: 490 MB with the system pool, 440 MB with glibc limited to 2
  arenas as well (its threads: librdkafka's, DuckDB's, the Parquet writers';
  each arena keeps its own free memory). Throughput did not change.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameter numbers


def bound_allocator_memory(*, arenas: int | None = None) -> None:
    """Arrow on the system allocator; glibc trims above 1 MiB, maps only above 4 MiB, at most ``arenas``.

    Call before pyarrow is first imported, if possible: Arrow's C++ code (Parquet writing,
    compute kernels) allocates from the pool ``ARROW_DEFAULT_MEMORY_POOL`` names when it
    loads; :func:`pyarrow.set_memory_pool` only changes the pool of pyarrow's Python calls
    (`k2 consume` measured: 650 MB at peak with that alone, 500 with the variable). And call
    it before the threads that allocate start (glibc creates arenas per thread on demand).
    """
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, "mallopt"):  # not glibc
        return
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 20)
    libc.mallopt(_M_MMAP_THRESHOLD, 4 << 20)
    if arenas is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)
