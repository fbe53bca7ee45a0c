"""What orientation each particle is in, and how sure we are.

``uncertainty`` (the per-particle pose-uncertainty metrics RELION, cryoSPARC and cryolens write,
which way each points, and the cuts the ``filter`` job makes on them), ``modes`` (one mode or two
in a metric, and the cut between two: ``filter --mode auto``).
"""

# The column of cryolens's own per-particle angular uncertainty, in degrees (lower = more certain):
# the pose job writes it and the filter job reads it, under this one name.
POSE_UNCERTAINTY_DEG = "cryolensPoseUncertaintyDeg"

from .modes import Modes, two_modes  # noqa: E402
from .uncertainty import KNOWN, Metric, MetricChoice, choose_metric  # noqa: E402

__all__ = ["KNOWN", "POSE_UNCERTAINTY_DEG", "Metric", "MetricChoice", "Modes", "choose_metric", "two_modes"]
