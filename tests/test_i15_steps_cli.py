"""``detflow steps`` lists every family's steps (issue 15, "Steps by operation"): a heading per family, each
step with its kind (map, or reduce and the axis), ``--family`` to show one family, readable at 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from detflow.cli import app
from detflow.steps.catalog import all_steps, families, family_steps

DETFLOW = [sys.executable, "-m", "detflow.cli"]
FAMILIES = {"roman_wfi", "roman_excam", "ccd", "cmos"}


def _steps_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="80", TERM="dumb")
    return subprocess.run([*DETFLOW, "steps", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def listing() -> list[str]:
    res = _steps_cli()
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def _sections(lines: list[str]) -> dict[str, list[str]]:
    """The lines under each family heading (a rule of '=' around ``<family>: <n> steps``)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith("==="):
            current = line.strip("= ").split(":")[0]
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def test_every_family_has_a_heading_with_its_steps(listing):
    sections = _sections(listing)
    assert FAMILIES <= set(sections) and set(sections) == set(families())
    for fam, lines in sections.items():
        titles = [line.split(" (")[0] for line in lines if line and not line.startswith(" ")]
        assert titles == list(family_steps(fam)), fam  # every step of the family, under its own heading only
    assert sum(len(v) for v in sections.values()) > len(all_steps())


def test_each_step_says_whether_it_maps_or_reduces(listing):
    kinds = {line.split(" (")[0]: line.split(" (")[1].split(")")[0] for line in listing
             if line and not line.startswith((" ", "=")) and " (" in line}  # fmt: skip
    for name in ("bias_model", "dark_model", "flat_model", "bias_eval", "dark_eval", "flat_eval", "ccd_combine"):
        assert kinds[name] == "reduce frame", name
    for name in ("dq_init", "ramp_fit", "excam_cosmics", "ccd_overscan", "ccd_flat"):
        assert kinds[name] == "map", name
    assert all_steps()["ccd_combine"].kind == "reduce" and all_steps()["ramp_fit"].kind == "map"


def test_the_listing_fits_80_columns(listing):
    long = [line for line in listing if len(line.rstrip()) > 80]
    assert not long, long[:3]


def test_family_option_shows_one_family():
    res = CliRunner().invoke(app, ["steps", "--family", "cmos"])
    assert res.exit_code == 0, res.output
    sections = _sections(res.output.splitlines())
    assert list(sections) == ["cmos"]
    for name in ("bias_model", "dark_model", "flat_model"):
        assert any(line.startswith(f"{name} (reduce frame)") for line in sections["cmos"]), name
    assert "hot_k" in res.output and "ramp_fit" not in res.output
    res = CliRunner().invoke(app, ["steps", "--family", "cmos", "--json"])
    data = json.loads(res.output)
    assert set(data) == set(family_steps("cmos")) and data["dark_model"]["kind"] == "reduce"
    assert data["dark_model"]["reduces"] == "frame" and "hot_k" in data["dark_model"]["params"]


def test_an_unknown_family_is_one_line_exit_2():
    res = _steps_cli("--family", "nope")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--family: expected one of" in lines[0] and "cmos" in lines[0], res.stderr
