"""Airflow DAG xgen_posttrain: built from the stage table's posttrain stages (operators/dag_factory.py); absent while there are none."""

from operators.dag_factory import family_dag

dag = family_dag("xgen_posttrain")
