"""Airflow DAG xgen_length_extension: built from the stage table's length_extension stages (operators/dag_factory.py); absent while there are none."""

from operators.dag_factory import family_dag

dag = family_dag("xgen_length_extension")
