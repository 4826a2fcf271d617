"""AsymmetricTs: asymmetric teacher-student network with an EMAN teacher and a Contextual-Transformer student."""

from anomalib_dhkd.models.asymmetric_ts.lightning_model import AsymmetricTs
from anomalib_dhkd.models.asymmetric_ts.torch_model import AsymmetricTsModel, ContextualStudentConfig

__all__ = ["AsymmetricTs", "AsymmetricTsModel", "ContextualStudentConfig"]
