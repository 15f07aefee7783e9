"""A rich progress bar over a distributed computation (tasks done of all tasks)."""

from __future__ import annotations

from distributed.diagnostics.progressbar import ProgressBar
from distributed.utils import LoopRunner
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgressBar(ProgressBar):
    """distributed's progress plugin, drawn with rich; blocks until the futures finish."""

    def __init__(self, keys, scheduler=None, description: str = "computing", console=None, **kwargs):
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=False)  # fmt: skip
        self._task = self._progress.add_task(description, total=None)
        self._loop_runner = LoopRunner(loop=None)
        super().__init__(keys, scheduler, interval="200ms", complete=True)
        self._progress.start()
        try:
            self._loop_runner.run_sync(self.listen)  # the pattern of distributed's TextProgressBar
        finally:
            self._progress.stop()

    def _draw_bar(self, remaining, all, **kwargs):
        self._progress.update(self._task, total=all, completed=all - remaining)

    def _draw_stop(self, **kwargs):
        self._progress.refresh()
