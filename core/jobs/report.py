"""What a job's parameters were: the first lines of every job's log (RELION's run.out, the
shell, cryoSPARC's event log).

One line per parameter: its value and where the value came from (given, default, an empty value
read as the default), what is allowed (choices, yes|no, the range), and what it does, or that it
was ignored and why (``Param.only_with``); then a note for each old parameter name that was used
(``Param.aliases``). ``base.prepare_params`` makes the lines and ``base.run_job`` logs them, so
each front end shows the same report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import JobSpec, Param


def value_text(prm: Param, value: Any) -> str:
    """A value as the user would type it: yes/no, 0.5, a path, or what an unset value means."""
    if prm.type is bool:
        return "yes" if value else "no"
    if value is None or value == "":
        return prm.unset or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def allowed_text(prm: Param) -> str:
    """auto|threshold|fraction, yes|no, [0, 1], a file, text."""
    if prm.choices:
        return "|".join(map(str, prm.choices))
    if prm.type is bool:
        return "yes|no"
    if prm.type is Path:
        return "a file"
    if prm.type in (int, float):
        kind = "integer" if prm.type is int else "number"
        return kind if prm.min is None and prm.max is None else f"{kind} in {prm.range_text()}"
    return prm.metavar.lower() if prm.metavar else "text"


def applies(prm: Param, values: dict[str, Any]) -> tuple[bool, str]:
    """Whether the parameter takes effect with these values, and if not, why (for the log)."""
    if prm.only_with is None:
        return True, ""
    other, wanted = prm.only_with
    current = values.get(other)
    if wanted:
        if current in wanted:
            return True, ""
        need = " or ".join(f"{other} {w}" for w in wanted)
        return False, f"applies only with {need} ({other} is {current})"
    if current not in (None, "", False):
        return True, ""
    return False, f"applies only when {other} is set ({other} is not)"


def param_report(spec: JobSpec, raw: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The report lines for ``values`` parsed from ``raw`` (the flags as given, old names included)."""
    width = max([len(p.name) for p in spec.params] + [4])
    lines = [f"cryolens {spec.name}: parameters (name = value [allowed]: what it does)"]
    notes = []
    for prm in spec.params:
        given_as = next((n for n in (prm.name, *prm.aliases) if n in raw), None)
        text = value_text(prm, values[prm.name])
        if given_as is None:
            origin = "default"
        elif raw[given_as] is None or (isinstance(raw[given_as], str) and raw[given_as].strip() == ""):
            origin = "empty value: the default"
        else:
            origin = ""
        if given_as is not None and given_as != prm.name:
            notes.append(f"cryolens {spec.name}: note: {given_as} is the old name of {prm.name}; read as "
                         f"{prm.name} = {text} (rename it in your template or command)")
        ok, why = applies(prm, values)
        what = prm.help if ok else (f"IGNORED: {why}" if given_as is not None else f"not used: {why}")
        shown = f"{text} ({origin})" if origin else text
        lines.append(f"  {prm.name:<{width}} = {shown} [{allowed_text(prm)}]: {what}")
    return lines + notes
