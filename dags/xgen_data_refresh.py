"""Airflow DAG xgen_data_refresh: a new crawl snapshot in, the curated dataset out (weekly by default; emits its Asset)."""

from operators.dag_factory import family_dag

dag = family_dag("xgen_data_refresh")
