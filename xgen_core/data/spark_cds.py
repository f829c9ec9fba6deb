"""A class-data-sharing (AppCDS) archive of the classes a local Spark driver loads, built once per environment.

A fresh driver JVM loads and verifies some ten thousand Spark, Scala and Arrow classes before its first job: on
the 2-core dev machine about 5 s to a session and 2 s more to the first job. Every local Spark stage (and every
test session) pays that again. With the classes mapped from an archive the JVM wrote once, the session is up in
about 3 s and the first job starts at once. `make env` builds the archive (`python -m xgen_core.data.spark_cds`);
`get_spark` uses it when `spark.class_data_sharing` is on and the archive exists. A JVM that does not match the
archive (another Java build or class path) ignores it and starts as before, so a stale archive costs nothing;
cluster drivers (Dataproc, spark-submit on another host) never see it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def archive_path() -> Path:
    """One archive per environment and Spark version: it lives in the environment it was built for."""
    import pyspark

    return Path(sys.prefix) / "share" / "xgen" / f"spark-{pyspark.__version__}-classes.jsa"


def java_options(enabled: bool) -> str:
    """The driver JVM flag that maps the archive, or "" when sharing is off or the archive is missing."""
    path = archive_path()
    return f"-XX:SharedArchiveFile={path} -Xshare:auto" if enabled and path.exists() else ""


WARM_UP = """
import sys
from xgen_core.config import load_config
from xgen_core.data.spark import get_spark
import pyspark.sql.functions as F
cfg = load_config("tiny").spark.model_copy(update={"class_data_sharing": False})
cfg.conf["spark.driver.extraJavaOptions"] = cfg.conf.get("spark.driver.extraJavaOptions", "") + " " + sys.argv[1]
spark = get_spark(cfg)
df = spark.range(1000).withColumn("k", F.col("id") % 7)
df.groupBy("k").count().collect()
df.mapInArrow(lambda batches: batches, df.schema).count()
launcher = spark.sparkContext._gateway.proc
spark.stop()
launcher.stdin.close()  # the driver JVM exits when its launcher's stdin closes, writing the archive first
launcher.wait(timeout=300)
"""


def build(force: bool = False) -> Path | None:
    """Run a small Spark job in a fresh JVM that writes the archive at exit; returns its path (None on failure)."""
    path = archive_path()
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    command = [sys.executable, "-c", WARM_UP, f"-XX:ArchiveClassesAtExit={aside}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not aside.exists():
        aside.unlink(missing_ok=True)
        print(f"spark class-data-sharing archive not built (Spark starts without it):\n{result.stderr[-2000:]}")
        return None
    os.replace(aside, path)  # the JVM has exited: the archive is whole
    return path


if __name__ == "__main__":
    built = build(force="--force" in sys.argv)
    print(f"spark class-data-sharing archive: {built or 'none'}")
