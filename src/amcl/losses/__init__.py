"""Pure loss functions over explicit tensors (features, temperatures): no model needed.

>>> from amcl.losses import nt_xent_loss, amcl_nt_xent_loss, omega, pair_temperatures
"""

from amcl.losses.contrastive import (
    ContrastiveTerms,
    amcl_nt_xent_loss,
    amcl_nt_xent_terms,
    hardest_negatives,
    nt_xent_loss,
    view_similarities,
)
from amcl.losses.siamese import (
    amcl_barlow_twins_loss,
    amcl_simsiam_loss,
    barlow_twins_loss,
    cross_correlation,
    simsiam_loss,
)
from amcl.losses.temperature import omega, pair_temperatures, paired_temperatures, temperature_from_scores

__all__ = [
    "ContrastiveTerms",
    "amcl_barlow_twins_loss",
    "amcl_simsiam_loss",
    "barlow_twins_loss",
    "cross_correlation",
    "simsiam_loss",
    "amcl_nt_xent_loss",
    "amcl_nt_xent_terms",
    "hardest_negatives",
    "nt_xent_loss",
    "omega",
    "pair_temperatures",
    "paired_temperatures",
    "temperature_from_scores",
    "view_similarities",
]
