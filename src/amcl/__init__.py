"""amcl: Adaptive Multi-head Contrastive Learning (ECCV 2024) for SimCLR, MoCo, SimSiam and Barlow Twins."""

__version__ = "0.1.0"
