"""Reading documents and writing byte-reproducible Parquet with Spark, on any filesystem Hadoop can reach."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from xgen_core.errors import XgenError

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")


def hadoop_fs(spark: SparkSession, uri: str):
    """(FileSystem, Path) for a URI: local paths, file://, gs:// (with the connector, as on Dataproc)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def list_data_files(spark: SparkSession, uri: str) -> list[str]:
    """Data files under uri (recursive), skipping Spark/Hadoop bookkeeping files (_SUCCESS, .crc, ...)."""
    fs, path = hadoop_fs(spark, uri)
    if not fs.exists(path):
        raise XgenError(f"input {uri} does not exist")
    if fs.getFileStatus(path).isFile():
        return [path.toString()]
    files = fs.listFiles(path, True)
    names = []
    while files.hasNext():
        file_path = files.next().getPath()
        if not file_path.getName().startswith((".", "_")):
            names.append(file_path.toString())
    return sorted(names)


def read_documents(spark: SparkSession, uris: str | list[str]) -> DataFrame:
    """A DataFrame of documents from JSONL (optionally gzipped) or Parquet: files or directories of them."""
    uris = [uris] if isinstance(uris, str) else list(uris)
    uri = ", ".join(uris)
    files = sorted(name for one in uris for name in list_data_files(spark, one))
    if not files:
        raise XgenError(f"input {uri} holds no data files")
    if all(name.endswith(".parquet") for name in files):
        return spark.read.parquet(*files)
    if all(name.endswith(JSON_SUFFIXES) for name in files):
        return spark.read.option("mode", "PERMISSIVE").json(files)
    kinds = sorted({name.rsplit("/", 1)[-1].split(".", 1)[-1] for name in files})
    raise XgenError(f"input {uri} mixes or lacks known formats (.jsonl / .parquet): found {kinds}")


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

