"""Run one DAG to completion in this process through Airflow (dag.test), and exit non-zero if it failed.

`make run` uses it: the same DAG file, operators and entrypoints as the scheduler would run, on the local backend.
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dag_id")
    parser.add_argument("--conf", default="{}", help="DAG run params as JSON")
    args = parser.parse_args()

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag()
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"error: {path}: {error.strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    dag = bag.get_dag(args.dag_id)
    if dag is None:
        print(f"error: no DAG {args.dag_id!r}; DAGs: {', '.join(sorted(bag.dag_ids))}", file=sys.stderr)
        return 2
    dag_run = dag.test(run_conf=json.loads(args.conf))
    failed = [ti.task_id for ti in dag_run.get_task_instances() if ti.state != "success"]
    print(f"{args.dag_id}: run {dag_run.run_id} {dag_run.state}" + (f" (not successful: {', '.join(failed)})" if failed else ""))
    return 0 if dag_run.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
