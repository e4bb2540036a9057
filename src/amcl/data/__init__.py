"""Datasets (readers, digits, synthetic), augmentation policies and the data module."""
