"""Spark curation jobs and the pure functions they map over record batches."""
