"""The same rank job gives the same answer from every front end: a real relion_refine Class2D ranked
as a RELION External job, from the shell, and by the cryoSPARC entry (offline) on the .cs export of
that Class2D (issue 18: RELION kept 5 of 6 classes where cryoSPARC kept 3, because the template
.cs lost the class statistics and the cryoSPARC reader recomputed others)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cryosparc.dataset import Dataset

pytestmark = [pytest.mark.relion, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_relion_shell_and_cryosparc_keep_the_same_classes(project, monkeypatch, capsys):
    from cryolens.cli import main as shell
    from cryolens.cryosparc_ext.csfile import write_classes, write_particles
    from cryolens.cryosparc_ext.external import main as cryosparc
    from cryolens.relion_ext.class2d import read_class2d
    from cryolens.relion_ext.external import main as relion
    from cryolens.relion_ext.star import read_blocks, read_particles

    proj, data = project
    monkeypatch.chdir(proj)
    assert relion(["--job", "rank", "--o", "External/job010/", "--in_parts", str(data), "--j", "1",
                   "--gallery", "no"]) == 0, capsys.readouterr().err
    relion_scores = read_blocks(proj / "External/job010/rank_scores.star")["rank_scores"]
    relion_kept = read_particles(proj / "External/job010/particles.star")

    assert shell(["run", "rank", "--classes-in", str(data), "--out", "Shell", "--gallery", "no"]) == 0
    shell_scores = pd.read_csv(proj / "Shell" / "rank_scores.csv")

    # the .cs export of that Class2D: its particles and its class averages
    cs = read_class2d(data)
    (proj / "J9").mkdir()
    write_particles(cs.particles, proj / "J9" / "J9_particles.cs")
    write_classes(cs, proj / "J9" / "J9_class_averages.cs", project_dir=proj)
    assert cryosparc(["rank", "--offline", "--particles", "J9/J9_particles.cs", "--classes-in",
                      "J9/J9_class_averages.cs", "--project-dir", str(proj), "--out", "CS", "--gallery", "no"]) == 0
    cs_scores = pd.read_csv(proj / "CS" / "cryolens_rank_scores.csv")

    for other in (shell_scores, cs_scores):
        assert other["class_id"].tolist() == relion_scores["class_id"].astype(int).tolist()
        assert other["selected"].tolist() == relion_scores["selected"].astype(int).tolist()
        # float32 fields of a .cs (pixel size, blob/res_A) are all that may differ
        np.testing.assert_allclose(other["score"], relion_scores["score"].astype(float), atol=1e-4)
    assert len(Dataset.load(proj / "CS" / "particles_selected.cs")) == len(relion_kept)
