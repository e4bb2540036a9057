"""Pure loss functions over explicit tensors (features, temperatures): no model needed.

One module per method's loss (``simclr``, ``moco``, ``simsiam``, ``barlow_twins``), what SimCLR's and MoCo's AMCL
forms share in ``contrastive``, the temperatures (Eq. 2.1's phi products and Omega) in ``temperature``, the
softmax form's log-partition in ``partition``, the numerical kernels in ``kernels`` and argument checks in
``checks``.

>>> from amcl.losses import nt_xent_loss, amcl_nt_xent_loss, omega, pair_temperatures
"""

from amcl.losses.barlow_twins import amcl_barlow_twins_loss, barlow_twins_loss, batch_standardise, cross_correlation
from amcl.losses.contrastive import ContrastiveTerms
from amcl.losses.moco import (
    amcl_moco_loss,
    amcl_moco_terms,
    amcl_softmax_moco_loss,
    amcl_softmax_moco_terms,
    moco_infonce_loss,
)
from amcl.losses.simclr import (
    amcl_nt_xent_loss,
    amcl_nt_xent_terms,
    amcl_softmax_nt_xent_loss,
    amcl_softmax_nt_xent_terms,
    hardest_negatives,
    nt_xent_loss,
    process_anchors,
    view_similarities,
)
from amcl.losses.simsiam import amcl_simsiam_loss, simsiam_loss
from amcl.losses.temperature import (
    NEGATIVE_REGULARIZERS,
    PairTemperatures,
    Temperatures,
    negative_regularization,
    omega,
    pair_temperatures,
    paired_temperatures,
    temperature_from_scores,
)

__all__ = [
    "ContrastiveTerms",
    "NEGATIVE_REGULARIZERS",
    "PairTemperatures",
    "Temperatures",
    "amcl_barlow_twins_loss",
    "amcl_moco_loss",
    "amcl_moco_terms",
    "amcl_nt_xent_loss",
    "amcl_nt_xent_terms",
    "amcl_simsiam_loss",
    "amcl_softmax_moco_loss",
    "amcl_softmax_moco_terms",
    "amcl_softmax_nt_xent_loss",
    "amcl_softmax_nt_xent_terms",
    "barlow_twins_loss",
    "batch_standardise",
    "cross_correlation",
    "hardest_negatives",
    "moco_infonce_loss",
    "negative_regularization",
    "nt_xent_loss",
    "omega",
    "pair_temperatures",
    "paired_temperatures",
    "process_anchors",
    "simsiam_loss",
    "temperature_from_scores",
    "view_similarities",
]
