"""Building blocks shared by the plugin's knowledge-distillation models, grouped by role.

* :mod:`~anomalib_dhkd.components.encoders`: frozen feature extractors whose layers follow the backbone; the
  bottleneck and decoder of reverse distillation.
* :mod:`~anomalib_dhkd.components.teachers`: normalizing-flow teachers; encoders with moving-average normalisation.
* :mod:`~anomalib_dhkd.components.students`: dual-domain (spatial + frequency) students; Contextual-Transformer
  residual students.
* :mod:`~anomalib_dhkd.components.noise`: feature noise for denoising students.
* :mod:`~anomalib_dhkd.components.widths`: hidden widths relative to a layer's input.
* :mod:`~anomalib_dhkd.components.synthesis`: synthetic anomalies on the object's foreground.
* :mod:`~anomalib_dhkd.components.losses`: distillation losses.
* :mod:`~anomalib_dhkd.components.scoring`: anomaly maps and image scores, fitted on normal images.
"""
