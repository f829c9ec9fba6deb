"""PySpark's Python worker daemon, with the heavy modules the pipeline's Python tasks use imported once, before it
forks its workers: each forked worker starts with them loaded instead of importing them again (about a second
each). Set as spark.python.daemon.module."""

import numpy  # noqa: F401
import pandas  # noqa: F401
import pyarrow  # noqa: F401
import pyarrow.compute  # noqa: F401
import pyarrow.parquet  # noqa: F401
from pyspark import daemon

import xgen_core.data.dedup  # noqa: F401

if __name__ == "__main__":
    daemon.manager()
