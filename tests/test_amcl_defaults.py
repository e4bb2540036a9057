"""Which AMCL `--amcl` gives: the recommended forms by default, the paper's equations one flag away."""

import pytest

from amcl.config import PretrainConfig
from amcl.errors import AmclError
from amcl.specs import FORM_DEFAULTS, METHOD_SPECS


def resolved(**options):
    return PretrainConfig(**options).resolved()


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_contrastive_amcl_defaults_to_the_softmax_form_with_its_settings(method):
    config = resolved(method=method, amcl=True)
    assert METHOD_SPECS[method].recommended_form == "softmax" and config.amcl_form == "softmax"
    assert (config.beta, config.tau_min, config.tau_max, config.head_reduction) == (0.01, 0.05, 2.0, "mean")
    assert config.heads == 3 and config.topk == 1


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_paper_literal_options_give_eq_2_1_with_the_papers_settings(method):
    config = resolved(method=method, amcl=True, **METHOD_SPECS[method].paper_literal)
    assert config.amcl_form == "hardest" and config.beta == METHOD_SPECS[method].defaults["beta"] == 1e-4
    assert (config.tau_min, config.tau_max, config.head_reduction) == (1e-5, 2.0, "sum")


@pytest.mark.parametrize("method", ["simsiam", "barlow_twins"])
def test_siamese_methods_default_to_stable_bounds_and_the_paper_is_one_switch_away(method):
    config = resolved(method=method, amcl=True)
    assert config.amcl_form is None  # one AMCL form: the paper's equation
    assert (config.tau_min, config.tau_max, config.head_reduction) == (1.0, 2.0, "mean")
    paper = resolved(method=method, amcl=True, **METHOD_SPECS[method].paper_literal)
    assert (paper.tau_min, paper.tau_max, paper.head_reduction) == (1e-5, 2.0, "sum")


def test_explicit_options_win_over_form_defaults():
    config = resolved(amcl=True, beta=1e-3, tau_min=0.1, head_reduction="sum")
    assert (config.beta, config.tau_min, config.head_reduction) == (1e-3, 0.1, "sum")
    assert set(FORM_DEFAULTS["softmax"]) == {"beta", "head_reduction", "tau_min"}


def test_a_baseline_names_no_amcl_form():
    config = resolved(method="simclr")
    assert not config.amcl and config.amcl_form is None and config.heads == 1


@pytest.mark.parametrize("options,fragment", [
    (dict(amcl=True, head_reduction="max"), "unknown head_reduction 'max'"),
    (dict(amcl=True, amcl_form="softmax", topk=3), "--topk 3 applies to --amcl-form hardest and hardest_with_positive"),
    (dict(method="barlow_twins", amcl=True, amcl_form="softmax"), "--amcl-form softmax applies to simclr and moco"),
    (dict(amcl=True, grad_clip=-1.0), "--grad-clip must be a positive number"),
    (dict(split_seed=2**32), "--split-seed must be in 0..4294967295"),
])
def test_impossible_settings_are_refused(options, fragment):
    with pytest.raises(AmclError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        resolved(**options)


def test_configs_of_earlier_versions_still_resolve():
    """An old SimSiam config.yaml says amcl_form: hardest (the only form then): still valid, for --resume."""
    config = resolved(method="simsiam", amcl=True, amcl_form="hardest")
    assert config.amcl_form == "hardest" and config.tau_min == 1.0


def test_config_offers_exactly_the_regularisers_the_losses_implement():
    """config keeps its own copy of the names (it imports no torch): the two must not drift apart."""
    from amcl.config import NEGATIVE_REGULARIZERS as offered
    from amcl.losses import NEGATIVE_REGULARIZERS as implemented

    assert offered == implemented


def test_every_method_has_a_spec_and_a_class():
    """A method is its spec (what the config and analyze read) and its LightningModule, under one name."""
    from amcl.methods import METHOD_CLASSES

    assert list(METHOD_CLASSES) == list(METHOD_SPECS) == list(PretrainConfig.__dataclass_fields__["method"]
                                                             .metadata["choices"])
    for name, spec in METHOD_SPECS.items():
        assert spec.name == name and set(spec.defaults) <= set(PretrainConfig.__dataclass_fields__)
        assert spec.contrastive == (spec.negatives is not None)  # the forms rank negatives


def test_every_option_a_method_or_form_resolves_is_recorded_per_grid_cell():
    from amcl.compare_grid import PER_METHOD
    from amcl.specs import AUTHORS_TAU_BOUNDS, FORM_DEFAULTS, METHOD_SPECS

    filled = {k for spec in METHOD_SPECS.values() for k in spec.defaults} | set(AUTHORS_TAU_BOUNDS)
    filled |= {k for defaults in FORM_DEFAULTS.values() for k in defaults} | {"amcl_form", "heads"}
    filled |= {opt.name for spec in METHOD_SPECS.values() for opt in spec.options}  # queue_size, barlow_lambda ...
    assert filled == set(PER_METHOD)
