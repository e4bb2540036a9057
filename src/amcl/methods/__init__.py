"""One LightningModule per method on the shared :class:`PretrainMethod` base, and the registry that makes a
method available to every command: :func:`register_method` (a method's spec and its class, together)."""

from amcl.methods.barlow_twins import BarlowTwins
from amcl.methods.base import MomentumMethod, PretrainMethod
from amcl.methods.moco import MoCo
from amcl.methods.simclr import SimCLR
from amcl.methods.simsiam import SimSiam
from amcl.specs import METHOD_SPECS, MethodSpec

#: The LightningModule of every registered method, by name (its :class:`~amcl.specs.MethodSpec` is in
#: :data:`amcl.specs.METHOD_SPECS` under the same name).
METHOD_CLASSES: dict[str, type[PretrainMethod]] = {}


def register_method(spec: MethodSpec, method: type[PretrainMethod]) -> None:
    """Make a method available to ``amcl pretrain --method NAME``, ``compare``, ``eval``, ``analyze`` and
    ``export``: its spec (defaults, AMCL forms, temperature modes, negatives; what the config checks without
    loading torch) and its LightningModule, under ``spec.name``. A name taken by another method is refused.

    Example (a decoupled-contrastive variant of SimCLR, as tests/test_register_method.py trains it)::

        register_method(dataclasses.replace(METHOD_SPECS["simclr"], name="dcl", title="DCL"), DCL)
    """
    known = METHOD_CLASSES.get(spec.name)
    if known is not None and known is not method:
        raise ValueError(f"a method named {spec.name!r} is registered already ({known.__name__})")
    METHOD_SPECS[spec.name] = spec
    METHOD_CLASSES[spec.name] = method


for _name, _class in (("simclr", SimCLR), ("moco", MoCo), ("simsiam", SimSiam), ("barlow_twins", BarlowTwins)):
    register_method(METHOD_SPECS[_name], _class)

__all__ = ["METHOD_CLASSES", "BarlowTwins", "MoCo", "MomentumMethod", "PretrainMethod", "SimCLR", "SimSiam",
           "register_method"]
