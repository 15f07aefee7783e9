"""Finding, reading and layering cluster profiles.

``resolve()`` stacks, later ones winning: the profile file (``NAME.yaml`` on ``$DETFLOW_PROFILE_PATH``, then
``~/.config/detflow/profiles``, then the profiles shipped with detflow, or a path), the job's ``cluster:``
block, the environment (``DETFLOW_CLUSTER__<KEY>``, ``__`` for nesting; ``DETFLOW_SCHEDULER_ADDRESS``,
``DETFLOW_SCHEDULER_FILE``) and the arguments of ``connect()``. A bad key names the layer that set it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pydantic
import yaml

from ._profiles import PROFILES
from .base import DetflowClusterError
from .models import Profile

ENV_PREFIX = "DETFLOW_CLUSTER__"


def profile_dirs() -> list[Path]:
    """Directories searched for ``NAME.yaml``, in order (the packaged profiles come after them)."""
    dirs = [Path(p).expanduser() for p in os.environ.get("DETFLOW_PROFILE_PATH", "").split(os.pathsep) if p]
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser()
    dirs.append(config / "detflow" / "profiles")
    return dirs


def packaged_profiles() -> dict[str, str]:
    """The profiles shipped with detflow: ``{name: YAML text}`` (the text of deploy/profiles/*.yaml)."""
    return dict(PROFILES)


def list_profiles() -> dict[str, str]:
    """Every profile name that :func:`find_profile` resolves, and where it comes from."""
    found: dict[str, str] = {}
    for d in profile_dirs():
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.suffix in (".yaml", ".yml"):
                    found.setdefault(f.stem, str(f))
    for name in packaged_profiles():
        found.setdefault(name, f"packaged:{name}")
    return found


def find_profile(name: str | os.PathLike) -> tuple[str, str]:
    """``(source, YAML text)`` of a profile given by name or path."""
    text = str(name)
    p = Path(text).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in text or "/" in text:
        if not p.is_file():
            raise DetflowClusterError(p, "profile", "an existing profile YAML file", "no such file")
        return str(p), p.read_text()
    for d in profile_dirs():
        for suffix in (".yaml", ".yml"):
            f = d / f"{text}{suffix}"
            if f.is_file():
                return str(f), f.read_text()
    packaged = packaged_profiles()
    if text in packaged:
        return f"packaged:{text}", packaged[text]
    searched = ", ".join(str(d) for d in profile_dirs())
    raise DetflowClusterError(text, "profile", f"a profile name found as NAME.yaml in {searched} or shipped with "
                              f"detflow ({', '.join(sorted(packaged))}), or a path to a YAML file", "not found")  # fmt: skip


def _read_yaml(source: str, text: str) -> dict:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DetflowClusterError(source, "YAML", "valid YAML", str(exc).splitlines()[0]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DetflowClusterError(source, "<root>", "a mapping of profile keys", type(raw).__name__)
    return raw


def load_profile(name: str | os.PathLike) -> Profile:
    """A profile file alone (no job block, environment or arguments on top), validated."""
    source, text = find_profile(name)
    return _validate([(source, _read_yaml(source, text))], source)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_value(raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def env_overrides(environ: dict[str, str] | None = None) -> tuple[dict, dict[tuple, str]]:
    """The profile keys set in the environment, and the variable that set each (for error messages)."""
    environ = os.environ if environ is None else environ
    out: dict = {}
    names: dict[tuple, str] = {}
    for var in sorted(environ):
        if var.startswith(ENV_PREFIX):
            path = tuple(part.lower() for part in var[len(ENV_PREFIX) :].split("__") if part)
            if not path:
                continue
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise DetflowClusterError("environment", var, "a key inside a mapping", "a value above it")
            node[path[-1]] = _env_value(environ[var])
            names[path] = var
    if environ.get("DETFLOW_SCHEDULER_FILE"):
        out.update(kind="scheduler_file", scheduler_file=environ["DETFLOW_SCHEDULER_FILE"])
        names[("scheduler_file",)] = "DETFLOW_SCHEDULER_FILE"
    if environ.get("DETFLOW_SCHEDULER_ADDRESS"):
        out.update(kind="address", address=environ["DETFLOW_SCHEDULER_ADDRESS"])
        names[("address",)] = "DETFLOW_SCHEDULER_ADDRESS"
    return out, names


def _config_layer(cfg) -> dict:
    """The profile keys a job's ``cluster:`` block sets (only those it sets: defaults stay the profile's)."""
    if cfg is None:
        return {}
    fields = cfg.model_fields_set
    layer: dict = {}
    for key in ("n_workers", "threads_per_worker", "memory_limit", "dashboard_address"):
        if key in fields and getattr(cfg, key) is not None:
            layer[key] = getattr(cfg, key)
    layer = _merge(layer, dict(getattr(cfg, "options", None) or {}))
    if getattr(cfg, "scheduler_file", None):
        layer.update(kind="scheduler_file", scheduler_file=cfg.scheduler_file)
    if cfg.scheduler:
        layer.update(kind="address", address=cfg.scheduler)
    return layer


def _find_source(layers: list[tuple[str, dict]], loc: tuple, env_names: dict[tuple, str]) -> tuple[str, str]:
    """The layer that set the key at ``loc`` (the last one wins), and the key's name in that layer."""
    merged: dict = {}
    for _, layer in layers:
        merged = _merge(merged, layer)
    node: Any = merged
    for n, part in enumerate(loc):  # pydantic may append union members ("str", "int"): keep real keys
        if not (isinstance(node, dict) and part in node):
            loc = loc[:n]
            break
        node = node[part]
    dotted = ".".join(str(x) for x in loc) or "<root>"
    for source, layer in reversed(layers):
        node: Any = layer
        ok = True
        for part in loc:
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                ok = False
                break
        if ok and loc:
            if source == "environment":
                for n in range(len(loc), 0, -1):
                    if tuple(loc[:n]) in env_names:
                        return source, env_names[tuple(loc[:n])]
            return source, dotted
    return layers[0][0], dotted


def _validate(layers: list[tuple[str, dict]], source: str, env_names: dict[tuple, str] | None = None) -> Profile:
    merged: dict = {}
    for _, layer in layers:
        merged = _merge(merged, layer)
    try:
        prof = Profile(**merged)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(x for x in err["loc"] if not isinstance(x, int)) if err["loc"] else ()
        where, key = _find_source(layers, loc, env_names or {})
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            raise DetflowClusterError(where, key, "a profile key (" + ", ".join(model.model_fields) + ")",
                                      "unknown key") from None  # fmt: skip
        if err["type"] == "missing":
            raise DetflowClusterError(where, key, "a value", "missing") from None
        raise DetflowClusterError(where, key, err["msg"].removeprefix("Value error, "),
                                  repr(err.get("input"))[:80]) from None  # fmt: skip
    prof._source = source
    return prof


def _model_at(path: tuple) -> type[pydantic.BaseModel]:
    model: type[pydantic.BaseModel] = Profile
    for part in path:
        ann = model.model_fields[part].annotation
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                    and issubclass(a, pydantic.BaseModel)), None)  # fmt: skip
        if sub is None:
            break
        model = sub
    return model


def resolve(profile: str | os.PathLike | Profile | None = None, *, config=None,
            environ: dict[str, str] | None = None, **overrides) -> Profile:  # fmt: skip
    """The profile to use: the file (or packaged profile, or the defaults), the job's ``cluster:`` block
    (a :class:`~detflow.instruments.base.ClusterConfig`), the environment and ``overrides`` on top.

    ``overrides`` are profile keys (``n_workers=4``, ``slurm={"queue": "debug"}``); ``None`` values are
    ignored; ``address=`` / ``scheduler_file=`` switch the kind to connect to a running scheduler."""
    environ = os.environ if environ is None else environ
    if profile is None and config is not None:
        profile = getattr(config, "profile", None)
    if profile is None:
        profile = environ.get("DETFLOW_PROFILE") or None
    if isinstance(profile, Profile):
        source, base = profile.source, profile.model_dump(exclude_unset=True)
    elif profile is None:
        source, base = "<defaults>", {}
    else:
        source, text = find_profile(profile)
        base = _read_yaml(source, text)
    env, env_names = env_overrides(environ)
    args = {k: v for k, v in overrides.items() if v is not None}
    if args.get("scheduler_file"):
        args.setdefault("kind", "scheduler_file")
    if args.get("address"):
        args["kind"] = "address"
    job_source = getattr(config, "_detflow_source", None) or "job cluster block"
    layers = [(source, base), (job_source, _config_layer(config)), ("environment", env), ("arguments", args)]
    return _validate(layers, source, env_names)
