"""``cryolens train TASK``: train the models of the learned jobs (one sub-command per task)."""
from __future__ import annotations

import argparse


def add_parser(sub, common=lambda leaf: None) -> argparse.ArgumentParser:
    from cryolens.identify_cmd import add_train_parser as add_identify
    from cryolens.rank_cmd import add_train_parser as add_rank

    p = sub.add_parser("train", help="train a job's model (identify, ...)")
    tsub = p.add_subparsers(dest="train_task", metavar="TASK")
    tsub.required = True
    for add in (add_identify, add_rank):
        add(tsub, common)
    return p


def run_train(args) -> int:
    if args.train_task == "identify":
        from cryolens.identify_cmd import run_train as run

        return run(args)
    if args.train_task == "rank":
        from cryolens.rank_cmd import run_train as run

        return run(args)
    raise AssertionError(args.train_task)
