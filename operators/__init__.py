"""Airflow operators: where a stage's entrypoint runs. No stage logic lives here."""
