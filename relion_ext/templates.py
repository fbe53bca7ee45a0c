"""RELION GUI templates: one ``job.star`` per registered job, pre-filling the External job form.

How each RELION version loads one (README, "Running a cryolens job from the RELION GUI"):

* 4.0 and 5.0: Jobs > Load job.star, then this file (a file chooser);
* 3.1 (its Jobs menu has no chooser): copy the file to ``.gui_externaljob.star`` in the project
  directory, choose External, then Jobs > Load job settings;
* any version, headless or in a Scheme: ``relion_pipeliner --addJobFromStar <file>`` (RELION issue
  1108: that is how External jobs enter Schemes).

The 3.1 header (``_rlnJobType 99``) is read by RELION 3.1, 4.0 and 5.0 alike (research/relion.md
A.4). Every template writes every field of the External form it owns, all ten parameter rows
included (empty label and value for the unused ones), so a template loaded after another never
keeps the other's rows. RELION's form has no help per parameter: the allowed values, defaults and
help of each parameter are the comment lines at the top of the template, and every run lists its
parameters and what applied at the top of run.out (``core.jobs.report``).

    python -m cryolens.relion_ext.templates install/relion      # regenerate
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from cryolens.core.jobs import JobSpec, load_all
from cryolens.core.jobs.report import allowed_text

MAX_PARAMS = 10  # the External job form has ten label/value pairs
LABEL_WIDTH = 13  # what RELION 3.1's label box shows without clipping
# the External job's input fields (research/relion.md A.1) and the input kinds each one carries
INPUT_FIELDS = (("in_mov", ()), ("in_mic", ()), ("in_part", ("particles", "classes")), ("in_coords", ()),
                ("in_3dref", ("volume",)), ("in_mask", ("mask",)))


def _default_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"  # written out, so the form shows the default
    return str(value)


def template_comments(spec: JobSpec) -> list[str]:
    """The help the form cannot show: how to load the template, the inputs, each parameter."""
    lines = [f"cryolens {spec.name}: {spec.summary}",
             "Load: RELION 4.0/5.0: Jobs > Load job.star, this file. RELION 3.1: copy this file to",
             "  .gui_externaljob.star in the project directory, choose External, Jobs > Load job settings.",
             "  Any version: relion_pipeliner --addJobFromStar <this file> [--addJobOptions \"in_part == F\"]",
             "Inputs:"]
    fields = dict((kind, f) for f, kinds in INPUT_FIELDS for kind in kinds)
    for inp in spec.inputs:
        lines.append(f"  {fields[inp.kind]}: {inp.help} ({'required' if inp.required else 'optional'})")
    lines.append("Parameters (an empty value means the default; run.out lists what each one did):")
    for k, prm in enumerate(spec.params, start=1):
        old = f"; old name {', '.join(prm.aliases)}" if prm.aliases else ""
        lines.append(f"  param{k} {prm.name}: {allowed_text(prm)}; {prm.default_text()}{old}: {prm.help}")
    return lines


def template_blocks(spec: JobSpec) -> dict:
    if len(spec.params) > MAX_PARAMS:
        raise ValueError(f"job {spec.name} has {len(spec.params)} parameters; RELION's form holds {MAX_PARAMS}")
    inputs = {i.kind for i in spec.inputs}
    rows = [("fn_exe", f"cryolens-relion-{spec.name}")]
    # every input field: the ones this job reads empty for the user to fill, the others cleared
    rows += [(name, "") for name, _ in INPUT_FIELDS]
    assert all(any(kind in kinds for _, kinds in INPUT_FIELDS) for kind in inputs), spec.name
    for k in range(1, MAX_PARAMS + 1):
        prm = spec.params[k - 1] if k <= len(spec.params) else None
        rows += [(f"param{k}_label", prm.name if prm else ""),
                 (f"param{k}_value", _default_text(prm.default) if prm else "")]
    rows += [("nr_threads", "1"), ("other_args", "")]
    return {"job": {"rlnJobType": 99, "rlnJobIsContinue": 0},
            "joboptions_values": pd.DataFrame(rows, columns=["rlnJobOptionVariable", "rlnJobOptionValue"])}


def write_templates(out_dir: Path) -> list[Path]:
    from .star import write_blocks

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, spec in sorted(load_all().items()):
        path = out_dir / f"cryolens_{name}_job.star"
        write_blocks(path, template_blocks(spec), version=30001, comments=template_comments(spec))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_templates(Path(sys.argv[1] if len(sys.argv) > 1 else "install/relion")):
        print(p)
