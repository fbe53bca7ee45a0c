"""rank on a generator it was not trained on: per-run AUROC, the worst run beside the median, and the
classical rules on the same runs.

Data: the corpus of ``bench/corpus.py`` (genuine relion_refine Class2D runs; particles from
``relion_project`` or from cryolens's simulator). Protocol (``bench/protocol.py``): the rule is
fitted on the training side (runs of ``--train-generator`` whose proteins are not in the test
side), every figure is per test run. Scorers, all on the same test runs:

* ``cryolens`` (the model's networks with its robust head fitted here on the training side: the
  monotone rule and the image logit stacked, the guard, the training domain with the rule as
  fallback), ``cryolens_legacy`` (the same networks scored as before the robust head: class statistics
  and images through the combiner), ``cryolens_images`` (the same classes as a bare stack);
* the rules: ``rule_resolution`` (RELION's estimated resolution alone), ``rule_count`` (particles),
  ``rule_accuracy`` (rotational accuracy, unconverged = worst), ``rule_logistic`` (the monotone
  ``RuleModel`` on all three, fitted on the training side).

``auto``: ``--select auto`` per run with the robust head (when fitted), ``auto_as_shipped``: with the
model as it ships (``cryolens_legacy``'s scores).

    python bench/bench_rank_foreign.py [--corpus DIR] [--model rank.pt] [--out results.json]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import emit, load_corpus, per_run, split_by_protein, summarise  # noqa: E402


def rule_scorers(train) -> dict:
    from cryolens.core.rank.rules import RULE_FEATURES, RuleModel, class_statistics, rule_features

    col = {n: i for i, n in enumerate(RULE_FEATURES)}

    def single(name, sign):
        return lambda r: sign * np.nan_to_num(rule_features(class_statistics(r.classes))[:, col[name]], nan=0.0)

    rules = {"rule_resolution": single("inv_res", 1), "rule_count": single("log_count", 1),
             "rule_accuracy": single("log_acc_rot", -1)}
    if not train:  # nothing to fit the logistic rule on
        return rules, None
    feats = [rule_features(class_statistics(r.classes)) for r in train]
    rule = RuleModel.fit(np.concatenate(feats), np.concatenate([r.labels for r in train]))
    return {**rules, "rule_logistic": lambda r: rule.score(r.classes)}, rule


def model_scorers(path: str | None, train) -> tuple[dict, object, object]:
    import copy

    from cryolens.core.particles import ClassSet
    from cryolens.core.rank import RankModel
    from cryolens.core.rank.train import Labelled, fit_robust_head

    legacy = RankModel.load(path)
    legacy.robust = None
    robust = None
    if train:  # the robust head needs the training side's runs
        robust = copy.copy(legacy)
        robust.robust = fit_robust_head(legacy, [Labelled(r.classes, r.labels) for r in train], log=lambda s: None)

    def images_only(r):
        cs = r.classes
        bare = ClassSet(cs.table[["class_id"]].copy(), cs.images, cs.pixel_size, None, cs.source, {})
        return legacy.score(bare).probability

    scorers = {"cryolens_legacy": lambda r: legacy.score(r.classes).probability, "cryolens_images": images_only}
    if robust is not None:
        scorers["cryolens"] = lambda r: robust.score(r.classes).probability
    return scorers, robust or legacy, legacy


def auto_selection(model, runs) -> dict:
    """``--select auto`` on every run: good-particle recall and particle precision, per run."""
    from protocol import selection_figures

    from cryolens.core.rank.features import class_counts
    from cryolens.core.rank.threshold import select_classes

    rows = []
    for r in runs:
        sc = model.score(r.classes)
        keep, _, _ = select_classes(sc.probability, class_counts(r.classes), "auto")
        f = selection_figures(keep, r)
        rows.append({"run": r.name, "scored_by": sc.source, **f})
    rec = np.array([x["recall_good_particles"] for x in rows], float)
    pre = np.array([x["precision_particles"] for x in rows], float)
    return {"per_run": rows, "recall_median": float(np.nanmedian(rec)) if len(rec) else None,
            "recall_worst": float(np.nanmin(rec)) if len(rec) else None,
            "precision_median": float(np.nanmedian(pre)) if len(pre) else None,
            "precision_worst": float(np.nanmin(pre)) if len(pre) else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path.home() / ".cache" / "cryolens" / "corpus")
    ap.add_argument("--model", help="rank model (default: the shipped one)")
    ap.add_argument("--train-generator", default="cryolens", choices=["cryolens", "relion_project"])
    ap.add_argument("--split", default="generator+protein", choices=["generator+protein", "generator"],
                    help="test runs share no protein with training runs (default), or only the generator differs")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    runs = load_corpus(args.corpus)
    test_gen = "relion_project" if args.train_generator == "cryolens" else "cryolens"
    tr, te = split_by_protein(runs, seed=0) if args.split == "generator+protein" else (runs, runs)
    train = [r for r in tr if r.generator == args.train_generator]
    test = [r for r in te if r.generator == test_gen]
    rules, rule = rule_scorers(train)
    models, robust, shipped = model_scorers(args.model, train)
    table = per_run(test, {**models, **rules})
    medians = table[table["scorer"].isin(list(rules))].groupby("scorer")["auroc"].median()
    best_rule = str(medians.idxmax()) if medians.notna().any() else "rule_logistic"
    out = {"benchmark": "rank_foreign", "corpus": str(args.corpus), "split": args.split,
           "train_generator": args.train_generator,
           "test_generator": test_gen, "train_runs": [r.name for r in train], "test_runs": [r.name for r in test],
           "rule_fitted": rule.to_dict() if rule else None,
           "robust_head": robust.robust.to_dict() if robust.robust else None,
           "best_rule": best_rule, "summary": summarise(table, best_rule=best_rule),
           "auto": auto_selection(robust, test), "auto_as_shipped": auto_selection(shipped, test),
           "per_run": table.to_dict(orient="records"), "seconds": time.perf_counter() - t0}
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
