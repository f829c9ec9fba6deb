"""Progress for long work: a bar on a terminal, a log line every so often elsewhere (Airflow logs, CI)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger("xgen")
T = TypeVar("T")
LOG_EVERY_S = 15.0


def interactive() -> bool:
    return sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    from rich.progress import track as rich_track

    if interactive():
        yield from rich_track(items, description=description, total=total, transient=True)
        return
    last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        if time.monotonic() - last > LOG_EVERY_S:
            log.info("%s: %d%s", description, done, f"/{total}" if total else "")
            last = time.monotonic()


class SparkProgress:
    """Polls Spark's status tracker and shows finished / total tasks of the running stages."""

    def __init__(self, spark, label: str, interval_s: float = 0.5):
        self.tracker = spark.sparkContext.statusTracker()
        self.label = label
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"spark-progress {label}", daemon=True)

    def start(self) -> "SparkProgress":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def tasks(self) -> tuple[int, int]:
        done = total = 0
        for stage_id in self.tracker.getActiveStageIds():
            info = self.tracker.getStageInfo(stage_id)
            if info is not None:
                done += info.numCompletedTasks
                total += info.numTasks
        return done, total

    def _run(self) -> None:
        if interactive():
            self._run_bar()
        else:
            self._run_log()

    def _run_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(f"{self.label} (spark tasks)", total=None)
            while not self._stop.wait(self.interval_s):
                done, total = self.tasks()
                bar.update(task, completed=done, total=total or None)

    def _run_log(self) -> None:
        while not self._stop.wait(LOG_EVERY_S):
            done, total = self.tasks()
            if total:
                log.info("[%s] spark tasks %d/%d", self.label, done, total)
