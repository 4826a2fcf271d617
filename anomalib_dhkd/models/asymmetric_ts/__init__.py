"""AsymmetricTs: asymmetric teacher-student network with an EMAN teacher and a Contextual-Transformer student.

Our reading of Kong et al., "Asymmetric Teacher-Student Network Model for Industrial Image Anomaly Detection",
Computer Science 51(11A), 2024 (model README), with CoT (Li et al., TPAMI 2022, Sec. 3.2), EMAN (Cai et al.,
CVPR 2021, Sec. 3) and STFPM's loss and layer map (Wang et al., BMVC 2021, Sec. 3.2 and 3.3).
"""

from anomalib_dhkd.models.asymmetric_ts.lightning_model import AsymmetricTs
from anomalib_dhkd.models.asymmetric_ts.torch_model import AsymmetricTsModel, ContextualStudentConfig

__all__ = ["AsymmetricTs", "AsymmetricTsModel", "ContextualStudentConfig"]
