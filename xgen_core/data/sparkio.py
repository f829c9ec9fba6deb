"""Spark I/O helpers: byte-reproducible Parquet on any filesystem Hadoop can reach, and numpy records moved through
Spark as packed binary blocks or fixed-width binary columns."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F


def hadoop_fs(spark: SparkSession, uri: str):
    """(FileSystem, Path) for a URI: local paths, file://, gs:// (with the connector, as on Dataproc)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def write_deterministic_parquet(
    df: DataFrame,
    uri: str,
    n_files: int,
    sort_columns: list[str],
    partition_column: str | None = None,
    partition_by: str | None = None,
) -> None:
    """Write df so that the same rows always give the same files, byte for byte, under the same names.

    Rows are hash-partitioned into a fixed number of files (by `partition_column`, else by the sort columns), or
    into one file per value of `partition_by` (a directory partition), sorted inside each file, and the files are
    renamed from Spark's per-job random names to part-00000.parquet, part-00001.parquet, ...
    """
    if partition_by:
        laid_out = df.repartition(n_files, partition_by).sortWithinPartitions(partition_by, *sort_columns)
        laid_out.write.mode("overwrite").partitionBy(partition_by).parquet(uri)
    else:
        keys = [partition_column] if partition_column else sort_columns
        laid_out = df.repartition(n_files, *keys).sortWithinPartitions(*sort_columns)
        laid_out.write.mode("overwrite").parquet(uri)
    rename_parts(spark_of(df), uri)


def spark_of(df: DataFrame) -> SparkSession:
    return df.sparkSession


def rename_parts(spark: SparkSession, uri: str) -> None:
    """Give each directory's part files stable names, in Spark's partition order."""
    fs, root = hadoop_fs(spark, uri)
    by_directory: dict[str, list] = {}
    files = fs.listFiles(root, True)
    while files.hasNext():
        file_path = files.next().getPath()
        if file_path.getName().startswith("part-"):
            by_directory.setdefault(file_path.getParent().toString(), []).append(file_path)
    for paths in by_directory.values():
        for index, file_path in enumerate(sorted(paths, key=lambda p: p.getName())):
            target = file_path.getParent().suffix(f"/part-{index:05d}.parquet")
            if file_path.toString() != target.toString():
                fs.rename(file_path, target)


def placement_keys(spark: SparkSession, n_partitions: int) -> list[int]:
    """keys[i] is a number that Spark's hash partitioning sends to partition i of n_partitions.

    Repartitioning rows of group i by keys[i] gives every group a task of its own (hashing i itself would put two
    groups in one task and none in another).
    """
    candidates = spark.range(64 * n_partitions).select(
        F.col("id").alias("key"), F.expr(f"pmod(hash(id), {n_partitions})").alias("partition")
    )
    first = dict(candidates.groupBy("partition").agg(F.min("key").alias("key")).collect())
    if len(first) < n_partitions:
        raise RuntimeError(f"no hash key found for {n_partitions - len(first)} of {n_partitions} partitions")
    return [int(first[i]) for i in range(n_partitions)]


# Bytes of records per packed block: big enough that Spark moves few rows, small enough that no row nears Arrow's
# 2 GiB binary limit or a shuffle page many times its size.
BLOCK_BYTES = 4 << 20
BATCH_BLOCKS = 64


def pack_by_partition(
    records: np.ndarray, target: np.ndarray, partition_keys: list[int]
) -> Iterator[tuple[pa.Array, pa.Array]]:
    """Records (a 1-D numpy array, structured or not) grouped by target partition into byte blocks.

    Yields (placement keys, blocks) as Arrow arrays, for a batch each: every block holds the raw bytes of consecutive
    records bound for one partition (at most BLOCK_BYTES of them), and its key is partition_keys[target], so that
    Spark's hash partitioning by that key sends it there. Records keep their order within a partition; empty
    partitions get no block. The blocks are slices of one buffer, the records sorted by target (no copy per block).
    unpack_records reverses it.
    """
    n_partitions = len(partition_keys)
    # A 16-bit target is sorted by radix sort, in linear time.
    small = target.astype(np.uint16) if n_partitions <= 1 << 16 else target
    order = np.argsort(small, kind="stable")
    records, small = records[order], small[order]
    starts = np.searchsorted(small, np.arange(n_partitions + 1))
    size = max(1, records.dtype.itemsize)
    per_block = max(1, BLOCK_BYTES // size)
    keys, bounds = [], [0]
    for partition in range(n_partitions):
        for start in range(starts[partition], starts[partition + 1], per_block):
            keys.append(partition_keys[partition])
            bounds.append(min(start + per_block, starts[partition + 1]))
    data = pa.py_buffer(np.ascontiguousarray(records).view(np.uint8))
    offsets = np.asarray(bounds, dtype=np.int64) * size
    # Arrow binary offsets are 32-bit: a batch holds at most BATCH_BLOCKS blocks.
    for first in range(0, len(keys), BATCH_BLOCKS):
        last = min(first + BATCH_BLOCKS, len(keys))
        base = int(offsets[first])
        batch_offsets = pa.py_buffer((offsets[first : last + 1] - base).astype(np.int32))
        batch_data = data.slice(base, int(offsets[last]) - base)
        yield pa.array(keys[first:last], pa.int64()), pa.Array.from_buffers(pa.binary(), last - first, [None, batch_offsets, batch_data])


def unpack_records(blocks: list, dtype: np.dtype) -> np.ndarray:
    """The records of several blocks (bytes or buffers) of one record type, as one numpy array."""
    if len(blocks) == 1:
        return np.frombuffer(blocks[0], dtype=dtype)
    return np.frombuffer(b"".join(blocks), dtype=dtype)


def fixed_width_binary(rows: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow binary array with one value per row of a 2-D array, built without a Python loop.

    With `valid` (bool[n], as many True as `rows` has rows), an array of n values: the rows in the valid places,
    in order, and nulls elsewhere.
    """
    data = np.ascontiguousarray(rows)
    width = data.shape[1] * data.itemsize
    if valid is None:
        offsets = np.arange(len(data) + 1, dtype=np.int32) * width
        return pa.Array.from_buffers(pa.binary(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])
    offsets = np.zeros(len(valid) + 1, dtype=np.int32)
    np.cumsum(valid * np.int32(width), out=offsets[1:])
    validity = pa.array(valid).buffers()[1]
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())]
    return pa.Array.from_buffers(pa.binary(), len(valid), buffers, null_count=int(len(valid) - valid.sum()))


def signature_matrix(column: pa.Array, num_perm: int) -> np.ndarray:
    """Inverse of fixed_width_binary: uint32[n, num_perm] from a binary column of signatures."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    data = column.buffers()[2]
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    flat = np.frombuffer(data, dtype=np.uint32, count=(offsets[-1] - offsets[0]) // 4, offset=int(offsets[0]))
    return flat.reshape(len(column), num_perm)


def first_of_runs(*sorted_columns: np.ndarray) -> np.ndarray:
    """Mask of the rows where any column differs from the previous row (the first row always)."""
    n = len(sorted_columns[0])
    mask = np.zeros(n, dtype=bool)
    mask[:1] = True
    for column in sorted_columns:
        mask[1:] |= column[1:] != column[:-1]
    return mask


@contextmanager
def released_checkpoints(spark: SparkSession):
    """Unpersist, on leaving, every RDD persisted inside the block (the local checkpoints of a job): several jobs in
    one session (a refresh after a first run, a test suite) do not pile up each other's checkpoints in memory."""
    context = spark.sparkContext._jsc
    before = {int(rdd_id) for rdd_id in context.getPersistentRDDs().keySet()}
    try:
        yield
    finally:
        persisted = context.getPersistentRDDs()
        for rdd_id in [int(rdd_id) for rdd_id in persisted.keySet()]:
            if rdd_id not in before:
                persisted.get(rdd_id).unpersist(False)
