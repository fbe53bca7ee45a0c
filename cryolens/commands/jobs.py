"""List the registered jobs, their inputs and parameters (as `cryolens run` spells them)

The same jobs run as RELION External jobs (cryolens-relion-<job>, parameters as param labels)
and as cryoSPARC external jobs (cryolens-cryosparc <job>, or --list there).

Example usage
-------------
$ cryolens jobs
$ cryolens run rank --help
"""
from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    from cryolens.commands.run import input_flag
    from cryolens.core.jobs import load_all
    from cryolens.core.jobs.flags import describe_job

    for _, spec in sorted(load_all().items()):
        print("\n".join(describe_job(spec, lambda inp: f"{input_flag(inp)} PATH")))
    return 0
