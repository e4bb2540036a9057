"""Augmentation policies as text: the five augmentation types of the AMCL paper's seed code, by letter,
and the canonical form of a policy. Torch-free, so the config can check ``--augs`` without loading the
augmentation code (:mod:`amcl.data.augment` builds the ops)."""

from __future__ import annotations

AUGMENTATION_CODES: dict[str, str] = {
    "a": "random resized crop (scale 0.08-1.0, ratio 3/4-4/3)",
    "b": "Gaussian blur (p=0.5, kernel ~10% of image size, sigma 0.1-2.0)",
    "c": "colour dropping / random grayscale (p=0.2)",
    "d": "colour distortion / colour jitter (p=0.8, strength s)",
    "e": "horizontal flip (p=0.5)",
}
POLICY_KEYWORDS: dict[str, str] = {"default": "acde", "color": "color"}
APPLY_ORDER = "aedcb"


def policy_help() -> str:
    codes = ", ".join(f"{k}={v}" for k, v in AUGMENTATION_CODES.items())
    return f"valid codes: {codes}; keywords: {', '.join(POLICY_KEYWORDS)}"


def parse_policy(policy: str) -> str:
    """Return the canonical form of ``policy``: its sorted letters, or ``"color"``.

    ``"default"`` maps to ``"acde"``. Raises :class:`ValueError` for an empty
    policy, unknown letters or repeated letters.
    """
    key = policy.strip().lower()
    if key in POLICY_KEYWORDS:
        return POLICY_KEYWORDS[key]
    if not key:
        raise ValueError(f"empty augmentation policy; {policy_help()}")
    for kind, bad in (
        ("unknown", sorted({ch for ch in key if ch not in AUGMENTATION_CODES})),
        ("repeated", sorted({ch for ch in key if key.count(ch) > 1})),
    ):
        if bad:
            names = ", ".join(map(repr, bad))
            raise ValueError(f"{kind} augmentation code(s) {names} in policy {policy!r}; {policy_help()}")
    return "".join(sorted(key))
