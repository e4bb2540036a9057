"""One LightningModule per method on the shared :class:`PretrainMethod` base."""

from amcl.methods.base import PretrainMethod
from amcl.methods.simclr import SimCLR

METHOD_CLASSES: dict[str, type[PretrainMethod]] = {"simclr": SimCLR}

__all__ = ["METHOD_CLASSES", "PretrainMethod", "SimCLR"]
