"""The ``cryolens`` command: neutral work on any STAR / .cs / MRC file, and every job from the shell.

Each command is a module of ``cryolens.commands`` (as in cryoDRGN): its docstring is its help,
with an example, ``add_args(parser)`` declares its arguments and ``main(args)`` runs it and
returns the exit status. This file discovers the modules, adds the options every command takes
(--device, --seed, --debug) and turns errors into one line and an ExitCode
(``cryolens.core.errors``: 0 success, 1 failed, 2 bad input or usage, 3 aborted, 130/143 SIGINT/SIGTERM).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from types import ModuleType

from cryolens import __version__
from cryolens.core.errors import ExitCode, exit_code, user_error


def commands() -> dict[str, ModuleType]:
    """Every module of ``cryolens.commands``, by command name."""
    import cryolens.commands as pkg

    return {m.name: importlib.import_module(f"{pkg.__name__}.{m.name}")
            for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # on a command, a default would overwrite the value given before the command name
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d("auto"),
                        help="where tensors live: auto = CUDA when present (default), else CPU")
    parser.add_argument("--seed", type=int, default=d(0), metavar="N",
                        help="random seed (same seed, same output on CPU)")
    parser.add_argument("--debug", action="store_true", default=d(False), help="show tracebacks on errors")


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run something: ``parser`` itself, or the leaves of its sub-commands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for a in subs for p in {id(p): p for p in a.choices.values()}.values() for leaf in _leaves(p)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cryolens", description="Learned analysis of cryo-EM particles and 2D "
                                "classes: neutral work on any STAR / .cs / MRC file, and every cryolens job "
                                "from the shell. 'cryolens COMMAND --help' shows a command's options.")
    p.add_argument("--version", action="version", version=f"cryolens {__version__}")
    _common(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, mod in commands().items():
        doc = mod.__doc__ or name
        cmd = sub.add_parser(name, help=doc.split("\n")[0], description=doc,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_args(cmd)
        cmd.set_defaults(func=mod.main)
        for leaf in _leaves(cmd):
            _common(leaf, suppress=True)
    return p


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"cryolens: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from cryolens.core import signals

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    # from the first line: a Ctrl-C / SIGTERM while the commands load is one line too; in a
    # command, the command cleans up on the way out
    with signals.raise_on_signals():
        try:
            args = build_parser().parse_args(argv)
            args.argv = argv  # recorded in trained models: the command that made them
            debug = args.debug
            if not debug:
                import warnings

                warnings.showwarning = _warning_line  # one line, no source excerpt
            from cryolens.core.jobs.flags import check_options
            from cryolens.core.runtime import resolve_device, seed_everything

            check_options(args)  # every declared range, before the command does any work
            args.device = resolve_device(args.device)
            seed_everything(args.seed)
            return int(args.func(args))
        except (Exception, KeyboardInterrupt) as err:
            signals.finishing()
            return _report(err, debug)


def _report(err: BaseException, debug: bool) -> int:
    """One line on stderr for whatever ended a command; its exit status."""
    code = exit_code(err)
    plain = user_error(err)
    if code == ExitCode.ABORTED:
        print("cryolens: aborted", file=sys.stderr)
    elif isinstance(err, KeyboardInterrupt):
        print(f"cryolens: interrupted ({err or 'SIGINT'})", file=sys.stderr)
    elif debug:
        traceback.print_exc()
        if plain is not None:
            print(f"cryolens: error: {plain}", file=sys.stderr)
    elif plain is not None:
        print(f"cryolens: error: {plain}", file=sys.stderr)
    else:  # a bug: still one line unless --debug
        print(f"cryolens: internal error: {type(err).__name__}: {err} (run with --debug for the traceback)",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
