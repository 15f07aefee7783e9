"""Issue 14: errors are one line. The embedded LocalCluster's workers log a failed task ("Compute Failed",
at ERROR, with its traceback) to the terminal, above the run's own one-line error that already carries the
task's exception: quiet unless the ``detflow`` logger shows each stage (``detflow -v``)."""

from __future__ import annotations

import logging

import pytest

from detflow.runtime.cluster import connect


def _fails(x):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("verbose", [False, True])
def test_a_failed_task_is_not_logged_by_the_embedded_workers_unless_verbose(verbose, capfd):
    logger = logging.getLogger("detflow")
    level = logger.level
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        with connect() as c:  # worker processes: their log lines go to this process's stderr
            with pytest.raises(OSError, match="No space left"):
                c.submit(_fails, 1).result()
    finally:
        logger.setLevel(level)
    err = capfd.readouterr().err
    assert ("Compute Failed" in err) == verbose, err
