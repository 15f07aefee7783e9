"""Reading a job: YAML (or a dict, or a job model) validated by its instrument's job model.

``pipeline:`` names the instrument (:data:`detflow.instruments.registry.INSTRUMENTS`). A job without it is
recognised by the keys only one instrument's jobs have, or by a foreign spelling an instrument declares (the
PIT ``gen_cal_image`` YAML: ``IN``, ``OUT``, ``CALDIR``...); otherwise it is refused with the list of
pipelines, never routed to a default. Paths are relative to the job file. Every validation error is
reported, one line each (``FILE: FIELD: expected WHAT, got WHAT``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import yaml

from ..errors import DetflowInputError
from ..instruments.base import Job, Spelling, StepErrors, resolve_paths
from ..instruments.registry import INSTRUMENTS

PIPELINES = tuple(INSTRUMENTS)


def pipeline_needs() -> str:
    """What each pipeline needs, for a job that does not say which it is."""
    own = [f"{name} ({i.needs})" for name, i in INSTRUMENTS.items()]
    foreign = [f"a {s.name} YAML ({s.needs})" for i in INSTRUMENTS.values() for s in i.spellings]
    items = own + foreign
    return ", ".join(items[:-1]) + ", or " + items[-1] if len(items) > 1 else items[0]


def _only_keys() -> dict[str, set[str]]:
    """The keys only one instrument's jobs have; a foreign spelling's keys give it away (``(name, spelling)``)."""
    fields = {name: (set(i.job.model_fields) | set(i.job.ALIAS_KEYS)) - {"source"} for name, i in INSTRUMENTS.items()}
    out: dict = {
        name: keys - set().union(*(v for k, v in fields.items() if k != name)) for name, keys in fields.items()
    }
    for name, inst in INSTRUMENTS.items():
        for s in inst.spellings:
            out[(name, s)] = set(s.keys)
    return out


def pipeline_of(raw: dict, source=None) -> tuple[str, Spelling | None]:
    """The instrument of a job and the foreign spelling it is written in (None: its own): the ``pipeline``
    key, else the keys only one instrument (or spelling) has; refused when neither tells."""
    name = raw.get("pipeline")
    if name is not None:
        if name not in INSTRUMENTS:
            raise DetflowInputError(source, "pipeline", f"one of {', '.join(PIPELINES)}", repr(name))
        return name, None
    found = {k: sorted(set(raw) & keys) for k, keys in _only_keys().items()}
    found = {k: keys for k, keys in found.items() if keys}
    if len(found) == 1:
        key = next(iter(found))
        return (key, None) if isinstance(key, str) else key
    if not found:
        keys = ", ".join(map(str, raw)) or "no keys"
        raise DetflowInputError(source, "pipeline", f"a pipeline key or the keys of one pipeline: {pipeline_needs()}",
                                f"no pipeline key and none of those keys ({keys})")  # fmt: skip
    raise DetflowInputError(source, "pipeline", f"a pipeline key ({', '.join(PIPELINES)}), or the keys of one "
                            "pipeline only", "keys of several: " + "; ".join(
                                f"{k if isinstance(k, str) else k[1].name}: {', '.join(v)}"
                                for k, v in found.items()))  # fmt: skip


def _error_lines(err: dict, source) -> list[DetflowInputError]:
    """One :class:`DetflowInputError` per pydantic error (a step error expands into its own)."""
    ctx = err.get("ctx") or {}
    if isinstance(ctx.get("error"), StepErrors):
        return [e for item in ctx["error"].items for e in _error_lines(item, source)]
    loc = ".".join(str(x) for x in err["loc"]) or "job"
    kind = err["type"]
    if kind == "extra_forbidden":
        return [DetflowInputError(source, loc, "a known key", "unknown key")]
    if kind == "missing":
        return [DetflowInputError(source, loc, "a value", "missing")]
    if kind == "literal_error":
        options = ctx["expected"].replace(" or ", ", ").replace("'", "")
        return [DetflowInputError(source, loc, f"one of {options}" if "," in options else options,
                                  repr(err.get("input"))[:80])]  # fmt: skip
    msg = re.sub(r"^(Value error, |Assertion failed, |Input should be )", "", err["msg"])
    if ", got " in msg or not err["loc"]:  # the message says what it got, or the whole job is the input
        return [DetflowInputError(source, loc, msg)]
    return [DetflowInputError(source, loc, msg, repr(err.get("input"))[:80])]


def format_validation(exc: pydantic.ValidationError, source) -> DetflowInputError:
    """Every error pydantic found, one line each."""
    return DetflowInputError.combine([e for err in exc.errors() for e in _error_lines(err, source)])


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"YAML line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "YAML"
        problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
        what = f"{problem} ({context})" if problem and context else problem or context
        raise DetflowInputError(path, where, "valid YAML", what or str(exc).splitlines()[0]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DetflowInputError(path, "job", "a readable YAML text file", f"{type(exc).__name__}: {exc}") from None


def load_job(job: str | Path | dict | Job) -> Job:
    """Validate a job given as a YAML path, a dict (any spelling) or a job model."""
    if isinstance(job, Job):
        return job
    source = None
    if isinstance(job, (str, Path)):
        source = str(job)
        path = Path(job)
        if not path.is_file():
            raise DetflowInputError(path, "job", "an existing YAML job file", "no such file")
        raw = _read_yaml(path)
    else:
        raw = dict(job)
    if not isinstance(raw, dict):
        raise DetflowInputError(source, "job", "a mapping of job keys", type(raw).__name__)
    name, spelling = pipeline_of(raw, source)
    model = INSTRUMENTS[name].job
    if spelling is not None:
        raw = spelling.translate(raw, source)  # paths resolved by the translation
    elif source is not None:
        raw = resolve_paths(raw, Path(source).resolve().parent, model.PATH_KEYS)
    raw = dict(raw, pipeline=name)
    raw.setdefault("source", source)
    try:
        return model(**raw)
    except pydantic.ValidationError as exc:
        raise format_validation(exc, source) from None
