"""A job's parameters as command-line flags, and the job lister: shared by the three entries
(``cryolens run``, ``cryolens-relion-<job>``, ``cryolens-cryosparc``). A command's own options
(``cryolens simulate --snr``) are declared as Params too (``add_options``), so their ranges live
in one place and ``check_options`` checks them all before the command does any work.

Every parameter is accepted as ``--top-k`` and as ``--top_k`` (the spelling RELION's GUI passes,
from the param label); help shows the first, with a placeholder by type and its default.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from .base import Input, JobSpec, Param

_DEST = "param__"
_OPTIONS = "options__"  # the Params of the command a namespace was parsed for


def add_param_arguments(parser: argparse.ArgumentParser, spec: JobSpec, bare_flags: bool = False) -> None:
    """``--<param> VALUE`` for every parameter; a flag that is not given stays out of the
    namespace (its default applies). ``bare_flags`` (RELION): every value is optional, since
    RELION passes an empty value as a bare flag, which means the default; elsewhere only yes|no
    values are (``--gallery`` alone means yes). Old names (``Param.aliases``) are accepted too. Choices are left to ``Param.parse`` under RELION, for a one-line error."""
    for prm in spec.params:
        names = dict.fromkeys([prm.flag, f"--{prm.name}"])
        clash = [n for n in names if n in parser._option_string_actions]
        if clash:
            raise AssertionError(f"job {spec.name}: parameter {clash[0]} clashes with an adapter option")
        kw: dict[str, Any] = dict(dest=_DEST + prm.name, default=argparse.SUPPRESS, metavar=prm.placeholder())
        if bare_flags:
            kw.update(nargs="?", const=None)  # an empty value: the default (Param.parse), a yes/no included
        elif prm.type is bool:
            kw.update(nargs="?", const=True)  # --gallery alone: yes
        if prm.choices and not bare_flags and prm.type is str:
            kw["choices"] = prm.choices
        shown, *aliases = names
        # argparse can require one spelling only; with two, JobSpec.parse_params says what is missing
        parser.add_argument(shown, help=f"{prm.help} ({prm.default_text()})",
                            required=prm.required and not bare_flags and not aliases, **kw)
        for alias in aliases:
            parser.add_argument(alias, help=argparse.SUPPRESS, **kw)
        for old in prm.aliases:  # an old name: read under it, so the log can say which name was used
            old_names = [n for n in dict.fromkeys([f"--{old}", "--" + old.replace("_", "-")])
                         if n not in parser._option_string_actions]
            if old_names:
                parser.add_argument(*old_names, help=argparse.SUPPRESS, **{**kw, "dest": _DEST + old})


def given_params(namespace: argparse.Namespace) -> dict[str, Any]:
    """The raw values of the parameter flags that were given (for ``prepare_params``)."""
    return {k[len(_DEST):]: v for k, v in vars(namespace).items() if k.startswith(_DEST)}


def describe_job(spec: JobSpec, input_flag: Callable[[Input], str]) -> list[str]:
    """The job's summary, inputs (as ``input_flag`` spells them) and parameters, for ``--list``."""
    lines = [f"{spec.name}: {spec.summary}"]
    for inp in spec.inputs:
        need = "one of the inputs" if inp.name in spec.one_of else ("required" if inp.required else "optional")
        lines.append(f"    {input_flag(inp)}: {inp.help} ({need})")
    for prm in spec.params:
        lines.append(f"    {prm.flag} {prm.placeholder()}: {prm.help} ({prm.default_text()})")
    return lines


def add_options(parser: argparse.ArgumentParser, params: Sequence[Param]) -> None:
    """A command's options declared as Params (``--pixel-size X`` for ``pixel_size``): argparse keeps
    the raw text, and ``check_options`` converts and range-checks every one, the default included,
    in one place and in one line on error (argparse's own errors print the usage too)."""
    for prm in params:
        parser.add_argument(prm.flag, dest=prm.name, default=prm.default, metavar=prm.placeholder(),
                            help=f"{prm.help} ({prm.default_text()})")
    parser.set_defaults(**{_OPTIONS: tuple(parser.get_default(_OPTIONS) or ()) + tuple(params)})


def check_options(namespace: argparse.Namespace) -> None:
    """Replace each declared option's raw value by its parsed, checked value; CryolensError naming
    the option if one is out of range, not finite or not a choice."""
    for prm in getattr(namespace, _OPTIONS, ()):
        setattr(namespace, prm.name, prm.parse(getattr(namespace, prm.name)))
