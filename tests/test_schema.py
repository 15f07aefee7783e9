"""The data model: DQ bits identical to roman_datamodels, CF flag attrs, JSON-safe attrs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from detflow.schema import DQ, dq_attrs, dq_names, sanitize_attrs


def test_dq_bits_identical_to_roman_datamodels():
    dqflags = pytest.importorskip("roman_datamodels.dqflags")
    theirs = {f.name: int(f.value) for f in dqflags.pixel}
    ours = {name: int(f.value) for name, f in DQ.__members__.items()}
    assert ours == theirs


def test_dq_cf_attrs_roundtrip():
    attrs = dq_attrs()
    meanings = attrs["flag_meanings"].split()
    assert len(meanings) == len(attrs["flag_masks"])
    for name, mask in zip(meanings, attrs["flag_masks"]):
        assert DQ[name].value == mask and bin(mask).count("1") == 1
    assert dq_names(int(DQ.SATURATED | DQ.JUMP_DET)) == ["SATURATED", "JUMP_DET"]


def test_sanitize_attrs_is_json_safe():
    value = {1: np.float32(1.5), "a": np.arange(3), "nan": float("nan"), "p": Path("/x"),
             "nested": [np.int64(2), (np.bool_(True), None)], "flag": DQ.SATURATED}  # fmt: skip
    out = sanitize_attrs(value)
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert back["1"] == 1.5 and back["a"] == [0, 1, 2] and back["nan"] == "nan" and back["p"] == "/x"
    assert back["nested"] == [2, [True, None]] and back["flag"] == "SATURATED"
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in back.values())


def test_checksum_cache_rehashes_changed_files(tmp_path, monkeypatch):
    import hashlib
    import os

    from detflow.io.caldir import sha256

    monkeypatch.setenv("DETFLOW_CHECKSUM_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "ref.bin"
    f.write_bytes(b"a" * 1000)
    assert sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()  # from the cache
    f.write_bytes(b"b" * 1001)
    os.utime(f, ns=(1, 2))
    assert sha256(f) == hashlib.sha256(b"b" * 1001).hexdigest()


def test_numba_cache_opt_in(tmp_path):
    """DETFLOW_NUMBA_CACHE=1 writes compiled kernels to NUMBA_CACHE_DIR; off by default."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np; from detflow.kernels.mask import grow_bits; "
            "o = np.empty((4, 4), bool); grow_bits(np.ones((4, 4), np.uint32), np.ones(32, np.int8), o)")  # fmt: skip
    for flag, expect in (("0", False), ("1", True)):
        cache = tmp_path / f"cache{flag}"
        env = dict(os.environ, DETFLOW_NUMBA_CACHE=flag, NUMBA_CACHE_DIR=str(cache))
        subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
        found = any(p.suffix in (".nbi", ".nbc") for p in cache.rglob("*")) if cache.exists() else False
        assert found == expect
