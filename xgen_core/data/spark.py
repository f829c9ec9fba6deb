"""One way to get a SparkSession: local[*] here, the cluster's master under spark-submit or on Dataproc."""

from __future__ import annotations

import os
import sys

from xgen_core.config import SparkConfig
from xgen_core.data.spark_cds import java_options

# Python workers fork from a daemon that has already imported what the pipeline's Python tasks use.
PYTHON_DAEMON_MODULE = "xgen_core.data.spark_daemon"


def get_spark(cfg: SparkConfig):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # Under spark-submit the driver JVM is already up: connect first, so SparkConf() reads its settings
        # (--master among them); otherwise SparkConf() sees none of them and the config's master would win.
        SparkContext._ensure_initialized()
    conf = SparkConf()
    if not conf.contains("spark.master"):  # spark-submit's --master wins over the config
        conf.setMaster(cfg.master)
    if conf.get("spark.master", "").startswith("local"):
        # Only a local driver stays on loopback; a cluster's executors must reach the driver (SPARK_LOCAL_IP or
        # the host's address then, as the deployment sets it).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    conf.setAppName(cfg.app_name)
    conf.set("spark.driver.memory", cfg.driver_memory)
    conf.set("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
    conf.set("spark.sql.session.timeZone", "UTC")
    conf.set("spark.ui.showConsoleProgress", "false")
    conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    conf.set("spark.python.daemon.module", PYTHON_DAEMON_MODULE)
    for key, value in cfg.conf.items():
        conf.set(key, str(value).lower() if isinstance(value, bool) else str(value))
    sharing = java_options(cfg.class_data_sharing)
    if sharing:
        conf.set("spark.driver.extraJavaOptions", f"{conf.get('spark.driver.extraJavaOptions', '')} {sharing}".strip())
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
