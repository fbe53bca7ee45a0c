"""RELION GUI templates: one ``job.star`` per registered job, pre-filling the External job form.

Load one in the GUI (Jobs > Load job.star) or add it to a Scheme / pipeline with
``relion_pipeliner --addJobFromStar install/relion/cryolens_<job>_job.star`` (RELION issue 1108:
that is how External jobs enter Schemes). The 3.1 header (``_rlnJobType 99``) is read by RELION
3.1, 4.0 and 5.0 alike (research/relion.md A.4).

    python -m cryolens.relion_ext.templates install/relion      # regenerate
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from cryolens.core.jobs import JobSpec, load_all

MAX_PARAMS = 10  # the External job form has ten label/value pairs


def _default_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"  # an empty value would arrive as a bare flag (= yes)
    return str(value)


def template_blocks(spec: JobSpec) -> dict:
    rows = [("fn_exe", f"cryolens-relion-{spec.name}")]
    inputs = {i.kind for i in spec.inputs}
    rows += [("in_part", "")] if inputs & {"particles", "classes"} else []
    rows += [("in_3dref", "")] if "volume" in inputs else []
    rows += [("in_mask", "")] if "mask" in inputs else []
    for k, prm in enumerate(spec.params[:MAX_PARAMS], start=1):
        rows += [(f"param{k}_label", prm.name), (f"param{k}_value", _default_text(prm.default))]
    rows += [("nr_threads", "1"), ("other_args", "")]
    return {"job": {"rlnJobType": 99, "rlnJobIsContinue": 0},
            "joboptions_values": pd.DataFrame(rows, columns=["rlnJobOptionVariable", "rlnJobOptionValue"])}


def write_templates(out_dir: Path) -> list[Path]:
    from .star import write_blocks

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, spec in sorted(load_all().items()):
        path = out_dir / f"cryolens_{name}_job.star"
        write_blocks(path, template_blocks(spec), version=30001)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_templates(Path(sys.argv[1] if len(sys.argv) > 1 else "install/relion")):
        print(p)
