"""Airflow DAG xgen_pretrain: built from the stage table's pretrain stages (operators/dag_factory.py); absent while there are none."""

from operators.dag_factory import family_dag

dag = family_dag("xgen_pretrain")
