"""One LightningModule per method on the shared :class:`PretrainMethod` base."""

from amcl.methods.barlow_twins import BarlowTwins
from amcl.methods.base import PretrainMethod
from amcl.methods.moco import MoCo
from amcl.methods.simclr import SimCLR
from amcl.methods.simsiam import SimSiam

METHOD_CLASSES: dict[str, type[PretrainMethod]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
}

__all__ = ["METHOD_CLASSES", "BarlowTwins", "MoCo", "PretrainMethod", "SimCLR", "SimSiam"]
