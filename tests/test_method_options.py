"""A method's own options (MoCo's queue, SimSiam's predictor, Barlow Twins' lambda) are declared in its spec and
read like the config's fields; runs record their own method's, and records that hold every method's (those of
earlier versions) still load."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from amcl.config import PretrainConfig, load_yaml, option_names
from amcl.errors import AmclError
from amcl.specs import METHOD_SPECS


def test_a_methods_options_read_like_fields_with_its_declared_defaults():
    config = PretrainConfig(method="moco", queue_size=64)
    assert (config.queue_size, config.ema_momentum, config.barlow_lambda) == (64, 0.99, 5e-3)
    assert dataclasses.replace(config, ema_momentum=0.5).method_options == {"queue_size": 64, "ema_momentum": 0.5}
    with pytest.raises(AttributeError):
        config.queue  # noqa: B018 - neither a field nor a method's option
    with pytest.raises(TypeError, match="unknown option"):
        PretrainConfig(queue=3)


@pytest.mark.parametrize("method", list(METHOD_SPECS))
def test_a_resolved_config_records_exactly_its_own_methods_options(method):
    config = PretrainConfig(method=method, queue_size=64, barlow_lambda=0.01, predictor_hidden=None).resolved()
    own = {opt.name: opt.default for opt in METHOD_SPECS[method].options}
    given = {"queue_size": 64, "barlow_lambda": 0.01}
    assert config.method_options == {k: given.get(k, v) for k, v in own.items()}
    record = yaml.safe_load(config.to_yaml())
    keys = list(record)
    assert keys[keys.index("proj_layers") + 1: keys.index("dataset")] == list(own)  # where the fields were
    assert set(record) == set(option_names(method)) | {"global_batch"}


def test_records_of_earlier_versions_with_every_methods_options_still_load(tmp_path):
    old = yaml.safe_load(PretrainConfig(method="simclr").resolved().to_yaml())
    old.update(predictor_hidden=None, queue_size=4096, ema_momentum=0.99, barlow_lambda=0.005)  # as they were written
    path = tmp_path / "config.yaml"
    for method, expected in (("simclr", {}), ("simsiam", {"predictor_hidden": 512})):
        path.write_text(yaml.safe_dump({**old, "method": method}))
        assert PretrainConfig(**load_yaml(path)).resolved().method_options == expected


def test_a_value_outside_the_declared_range_is_refused_by_name():
    with pytest.raises(AmclError, match="--queue-size must be at least 1, got 0"):
        PretrainConfig(method="moco", queue_size=0).resolved()
    with pytest.raises(AmclError, match=r"--ema-momentum must be in \[0, 1\), got 1.0"):
        PretrainConfig(method="moco", ema_momentum=1.0).resolved()
    PretrainConfig(method="simclr", queue_size=0).resolved()  # not simclr's option: not its check either


def test_the_eq24_forms_earlier_name_infonce_is_still_accepted(capsys):
    from amcl.cli import main
    from amcl.nn import AMCLMoCoLoss, AMCLNTXentLoss
    from amcl.runs import config_differences

    config = PretrainConfig(amcl=True, amcl_form="infonce").resolved()  # a config file or checkpoint of before
    assert (config.amcl_form, config.head_reduction) == ("hardest_with_positive", "sum")
    assert main(["pretrain", "--amcl", "--amcl-form", "infonce", "--print-config"]) == 0
    assert "amcl_form: hardest_with_positive\n" in capsys.readouterr().out
    assert AMCLNTXentLoss(dim=8, form="infonce").form == AMCLMoCoLoss(dim=8, form="infonce").form == \
        "hardest_with_positive"
    saved = {**config.as_dict(), "amcl_form": "infonce"}  # resuming a run recorded with the earlier name
    assert config_differences(saved, config) == []
