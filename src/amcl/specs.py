"""What each method is, without loading it: its defaults, the AMCL forms and temperature modes it
allows, how many negatives it ranks, and what its temperatures mean. Torch-free, so the config reads
its defaults and checks here; the LightningModules in :mod:`amcl.methods` implement the methods.

Adding a method: its module (a :class:`amcl.methods.PretrainMethod` with its :mod:`amcl.nn` criterion) and
:func:`amcl.methods.register_method` with its :class:`MethodSpec`; the built-in methods' specs are the table
below. Everything else (the config's checks, the commands, compare's per-method settings) reads the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from amcl.options import AT_LEAST_1, FRACTION, NON_NEGATIVE, Option

#: The AMCL loss forms of the contrastive methods (SimCLR, MoCo); the others have one, their paper equation.
AMCL_FORMS = ("hardest", "hardest_with_positive", "softmax")
#: Earlier names of the forms, still accepted in options, config files, checkpoints and the criteria.
FORM_ALIASES = {"infonce": "hardest_with_positive"}
TEMPERATURE_MODES = ("adaptive", "constant", "positive", "negative", "global")


@dataclass(frozen=True)
class Negatives:
    """The negatives one anchor's loss ranks (for ``--topk``): how many a config gives, what they are,
    and the option that gives more."""

    count: Callable[[Any], int]
    what: Callable[[Any], str]
    fix: str


@dataclass(frozen=True)
class MethodSpec:
    """One method as the rest of amcl sees it.

    ``defaults`` fill the shared options a config leaves unset (after the AMCL form's); ``options`` are the
    method's own (``--queue-size`` of MoCo), declared, defaulted and range-checked here, accepted on the
    command line and in YAML for every registered method and recorded in a run's config only for its own.
    ``amcl_forms`` are the
    forms ``--amcl-form`` may pick (empty: one form, the method's paper equation), the first being
    the one ``--amcl`` uses. ``paper_literal`` are the options that make ``--amcl`` the paper's
    equation exactly as printed. ``negatives`` is None for methods without negative pairs.
    ``bound_is_expected``: the loss has no interior optimum in tau (Eq. 2.2 / 2.3), so temperatures
    resting on a bound are no warning sign. ``temperature_note`` says what ``amcl analyze``'s "positive"
    and "negative" temperatures are; ``pair_names`` what the figures call them (None: the method has no
    negatives)."""

    name: str
    title: str
    defaults: Mapping[str, Any]
    paper_literal: Mapping[str, Any]
    options: tuple[Option, ...] = ()
    amcl_forms: tuple[str, ...] = ()
    temperature_modes: tuple[str, ...] = TEMPERATURE_MODES
    negatives: Negatives | None = None
    baseline_temperature: bool = False
    bound_is_expected: bool = False
    temperature_note: str | None = None
    analysis_note: str | None = None
    pair_names: tuple[str, str | None] = ("positive pairs", "negative pairs")

    @property
    def contrastive(self) -> bool:
        """Whether the AMCL loss compares a positive with negatives (Eq. 2.1 / 2.4, or the softmax form)."""
        return bool(self.amcl_forms)

    @property
    def recommended_form(self) -> str | None:
        return self.amcl_forms[0] if self.amcl_forms else None


#: The contrastive methods' forms, the recommended first: the softmax form, chosen on the paired study
#: of docs/results.md; ``hardest`` is Eq. 2.1 as printed, ``hardest_with_positive`` Eq. 2.4 (the hardest of the
#: N + 1 candidates, the positive among them; called ``infonce`` before).
_CONTRASTIVE_FORMS = ("softmax", "hardest", "hardest_with_positive")

# Per-method defaults from the authors' code and the paper's experimental settings. ``temperature`` is
# the baseline's constant for SimCLR and MoCo; for SimSiam and Barlow Twins, whose baselines have none,
# it is the AMCL constant-mode value, and 1.0 gives the baseline back. SimSiam's and Barlow Twins'
# temperature bounds and head reduction are not the paper's: Eq. 2.2 and 2.3 have no interior optimum in
# tau for the pairs that matter (every tau runs to tau_min, and Barlow Twins' diagonal tau_l = C_ll
# cancels its invariance term), so at the authors' [1e-5, 2] they diverge or collapse. [1, 2] keeps each
# method's own loss scale (tau_l >= 1 cannot cancel a correlation <= 1); ``paper_literal`` gives the
# authors' bounds back.
METHOD_SPECS: dict[str, MethodSpec] = {
    "simclr": MethodSpec(
        name="simclr", title="SimCLR",
        defaults={"lr": 0.06, "temperature": 0.5, "beta": 1e-4, "proj_hidden": 512, "proj_dim": 128, "proj_layers": 2},
        paper_literal={"amcl_form": "hardest"},
        amcl_forms=_CONTRASTIVE_FORMS,
        negatives=Negatives(count=lambda c: 2 * c.batch_size - 2,
                            what=lambda c: f"negatives of a batch of {c.batch_size}", fix="a larger --batch-size"),
        baseline_temperature=True,
    ),
    "moco": MethodSpec(
        name="moco", title="MoCo",
        defaults={"lr": 0.08, "temperature": 0.1, "beta": 1e-4, "proj_hidden": 512, "proj_dim": 128, "proj_layers": 2},
        paper_literal={"amcl_form": "hardest"},
        amcl_forms=_CONTRASTIVE_FORMS,
        negatives=Negatives(count=lambda c: c.queue_size,
                            what=lambda c: f"entries of the --queue-size {c.queue_size} queue",
                            fix="a larger --queue-size"),
        baseline_temperature=True,
        options=(Option("queue_size", int, 4096, "keys in each head's queue (K)", valid=AT_LEAST_1),
                 Option("ema_momentum", float, 0.99, "momentum of the key encoder's moving average",
                        valid=FRACTION)),
        analysis_note="MoCo: features of the online (query) encoder; the momentum copy is not used",
    ),
    "simsiam": MethodSpec(
        name="simsiam", title="SimSiam",
        defaults={"lr": 0.05, "temperature": 1.0, "beta": 1e-4, "proj_hidden": 2048, "proj_dim": 2048,
                  "proj_layers": 3, "tau_min": 1.0, "tau_max": 2.0, "head_reduction": "mean"},
        paper_literal={"tau_min": 1e-5, "tau_max": 2.0, "head_reduction": "sum"},
        options=(Option("predictor_hidden", int, 512, "hidden width of each head's predictor",
                        valid=AT_LEAST_1),),
        temperature_modes=("adaptive", "constant", "positive", "global"),
        bound_is_expected=True,
        pair_names=("positive pairs", None),
        temperature_note=("SimSiam: tau(p_a, z_b) of view a's prediction and view b's projection; its loss has no "
                          "negative pairs, their temperatures show what the network would give them"),
    ),
    "barlow_twins": MethodSpec(
        name="barlow_twins", title="Barlow Twins",
        defaults={"lr": 0.11, "temperature": 1.0, "beta": 1e-6, "proj_hidden": 2048, "proj_dim": 2048,
                  "proj_layers": 3, "tau_min": 1.0, "tau_max": 2.0, "head_reduction": "mean"},
        paper_literal={"tau_min": 1e-5, "tau_max": 2.0, "head_reduction": "sum"},
        options=(Option("barlow_lambda", float, 5e-3, "weight lambda of the off-diagonal terms",
                        valid=NON_NEGATIVE),),
        bound_is_expected=True,
        pair_names=("diagonal channel pairs", "off-diagonal channel pairs"),
        temperature_note=("Barlow Twins: temperatures of channel pairs on the first {global_batch} positive pairs; "
                          "positive = diagonal tau_ll, negative = off-diagonal tau_lm"),
    ),
}
#: The built-in methods (choices shown in the options' help); :func:`method_names` includes registered ones.
METHODS = tuple(METHOD_SPECS)


def method_names() -> tuple[str, ...]:
    """Every method registered now: the built-in ones and those of :func:`amcl.methods.register_method`."""
    return tuple(METHOD_SPECS)


def method_options(method: str | None = None) -> dict[str, Option]:
    """The own options of ``method`` (None: of every registered method; where two declare one name, the first
    registered), by name."""
    specs = [METHOD_SPECS[method]] if method is not None else list(METHOD_SPECS.values())
    out: dict[str, Option] = {}
    for spec in specs:
        for opt in spec.options:
            out.setdefault(opt.name, opt)
    return out

#: Defaults that depend on the AMCL form (they fill options left unset, before the method's defaults).
FORM_DEFAULTS: dict[str, dict[str, Any]] = {
    "softmax": {"beta": 1e-2, "head_reduction": "mean", "tau_min": 0.05},
    "hardest": {"head_reduction": "sum"},
    "hardest_with_positive": {"head_reduction": "sum"},
}

#: The temperature bounds of the authors' later code (the paper prints none), where neither the AMCL form nor
#: the method sets others.
AUTHORS_TAU_BOUNDS: dict[str, float] = {"tau_min": 1e-5, "tau_max": 2.0}


def method_dependent_options() -> tuple[str, ...]:
    """The options whose resolved value can depend on the method, the AMCL form or ``--amcl``: every key a
    method's spec, a form or the bounds fill, plus ``amcl_form`` and ``heads`` (3 with ``--amcl``). Derived
    from the tables above, so a new method's defaults are recorded per grid cell without another list."""
    keys = [*(k for spec in METHOD_SPECS.values() for k in spec.defaults), *(k for d in FORM_DEFAULTS.values()
                                                                           for k in d), *AUTHORS_TAU_BOUNDS,
            *method_options()]
    return tuple(dict.fromkeys(["amcl_form", "heads", *keys, "head_reduction"]))


def canonical_form(form: str | None) -> str | None:
    """A form's name as it is now (``infonce`` -> ``hardest_with_positive``); other values unchanged."""
    return FORM_ALIASES.get(form, form) if isinstance(form, str) else form


def amcl_loss_defaults(method: str, amcl_form: str | None = None) -> dict[str, Any]:
    """The AMCL loss settings of ``method`` with ``amcl_form`` (default: its recommended form), as
    ``amcl pretrain --amcl`` resolves them: the form's defaults, then the method's, then the authors'
    later code's bounds and the heads' sum. Keys: ``amcl_form``, ``beta``, ``tau_min``, ``tau_max``, ``head_reduction``,
    ``temperature`` (the constant of the baseline and the ablations)."""
    keys = ("amcl_form", "beta", "tau_min", "tau_max", "head_reduction", "temperature")
    values = resolve_defaults(method, True, {key: None for key in keys} | {"amcl_form": canonical_form(amcl_form)})
    return {k: values[k] for k in keys}


def resolve_defaults(method: str, amcl: bool, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (options by name, None where unset) with the method-dependent ones filled, in the one order
    every part of amcl uses: with ``amcl``, the method's recommended form and that form's defaults first
    (:data:`FORM_DEFAULTS`); then the method's (:attr:`MethodSpec.defaults`); ``heads`` 3 with ``amcl``, else 1;
    the authors' later code's bounds (:data:`AUTHORS_TAU_BOUNDS`); the heads' sum. A method not registered
    gets only the generic defaults (the config then names it)."""
    out = dict(values)
    spec = METHOD_SPECS.get(method)
    if amcl and out.get("amcl_form") is None and spec is not None:
        out["amcl_form"] = spec.recommended_form
    sources = [FORM_DEFAULTS.get(out.get("amcl_form") or "", {}) if amcl else {}, spec.defaults if spec else {},
               {"heads": 3 if amcl else 1}, AUTHORS_TAU_BOUNDS, {"head_reduction": "sum"}]
    for source in sources:
        for key, value in source.items():
            if out.get(key) is None:
                out[key] = value
    return out
