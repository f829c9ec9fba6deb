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
