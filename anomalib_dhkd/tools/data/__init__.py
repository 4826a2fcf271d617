"""Datasets of the plugin.

:func:`generate_texture_dataset` writes an offline texture dataset with synthetic defects in MVTec AD layout
(see :mod:`anomalib_dhkd.tools.data.synthetic`). The submodule loads on first attribute access, so importing this
package stays cheap and never imports torch.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib_dhkd.tools.data import generate_texture_dataset
    >>> generate_texture_dataset("./datasets/textures", category="brick")  # doctest: +SKIP
    PosixPath('datasets/textures/brick')
    >>> datamodule = MVTecAD(root="./datasets/textures", category="brick")  # doctest: +SKIP

"""

from typing import TYPE_CHECKING

from anomalib_dhkd._lazy import lazy_attributes

__all__ = ["DEFECT_TYPES", "TEXTURES", "generate_texture_dataset"]

if TYPE_CHECKING:
    from anomalib_dhkd.tools.data.synthetic import DEFECT_TYPES, TEXTURES, generate_texture_dataset


__getattr__ = lazy_attributes(__name__, "anomalib_dhkd.tools.data.synthetic", __all__)
