"""PySpark's Python worker daemon, with the heavy modules the pipeline's Python tasks use imported once, before it
forks its workers: each forked worker starts with them loaded instead of importing them again (about a second
each). Set as spark.python.daemon.module.

Arrow allocates from jemalloc in the workers: with mimalloc (pyarrow's default) a task that reads a few hundred MB of
texts spent more CPU in the kernel, faulting fresh pages in, than in reading (dedup's first scan at 1M documents:
6.6 s of system time against 1.8 s with jemalloc).
"""

import numpy  # noqa: F401
import pandas  # noqa: F401
import pyarrow  # noqa: F401
import pyarrow.compute  # noqa: F401
import pyarrow.parquet  # noqa: F401
from pyspark import daemon

import xgen_core.data.dedup  # noqa: F401


def use_jemalloc() -> None:
    try:
        pyarrow.set_memory_pool(pyarrow.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without jemalloc keeps its default pool
        pass


use_jemalloc()

if __name__ == "__main__":
    daemon.manager()
