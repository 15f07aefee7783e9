"""The simulator's file writer: every file written atomically and remembered, so that a failed run removes
what it wrote (complete or absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detflow.io.roman_dm import write_model
from detflow.io.store.atomic import atomic_write


# =================================================================================================
# writing
# =================================================================================================
class _Writer:
    """Writes files atomically (:func:`~detflow.io.store.atomic_write`) and remembers them so a failed run
    can clean up."""

    def __init__(self) -> None:
        self.created: list[Path] = []
        self.dirs: list[Path] = []

    def mkdir(self, path: Path) -> None:
        if not path.exists():
            path.mkdir(parents=True)
            self.dirs.append(path)

    def asdf(self, path: Path, roman: dict) -> Path:
        import asdf

        atomic_write(path, lambda tmp: asdf.AsdfFile({"roman": roman}).write_to(str(tmp)))
        self.created.append(path)
        return path

    def model(self, path: Path, model) -> Path:
        """A roman_datamodels model as ``{"roman": model}`` (written under a temporary name by write_model)."""
        write_model(path, model)
        self.created.append(path)
        return path

    def npz(self, path: Path, arrays: dict) -> Path:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a name without it
                np.savez(fh, **arrays)

        atomic_write(path, save)
        self.created.append(path)
        return path

    def text(self, path: Path, text: str) -> Path:
        atomic_write(path, text)
        self.created.append(path)
        return path

    def cleanup(self) -> None:
        for p in self.created:
            p.unlink(missing_ok=True)
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError:
                pass
