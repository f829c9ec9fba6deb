import pytest


@pytest.mark.spark
def test_python_tasks_run_in_workers_forked_from_the_preloading_daemon(spark):
    """A Python task's worker is a child of the daemon module that imported the heavy modules before forking."""

    def parent_command(rows):
        import os
        from pathlib import Path

        for _ in rows:
            yield Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode()

    commands = set(spark.sparkContext.parallelize(range(4), 2).mapPartitions(parent_command).collect())
    assert commands and all("-m xgen_core.data.spark_daemon" in command for command in commands), commands


@pytest.mark.spark
def test_python_workers_allocate_arrow_memory_from_jemalloc(spark):
    """The daemon sets Arrow's pool before forking: with mimalloc a task reading a few hundred MB of texts spends more
    CPU faulting fresh pages in than reading them."""

    def pool_backend(rows):
        import pyarrow

        for _ in rows:
            yield pyarrow.default_memory_pool().backend_name

    assert set(spark.sparkContext.parallelize(range(4), 2).mapPartitions(pool_backend).collect()) == {"jemalloc"}
