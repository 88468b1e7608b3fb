import pytest

from reprokit.config import RunConfig, config_from_dict, resolve_config
from reprokit.errors import ReprokitError


def test_defaults_then_toml_then_cli(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        'replicas = 6\nvary = "init,dropout"\n[model]\nactivation = "gelu"\nhidden = [32, 16]\n'
        "[optim]\nlr = 0.1\n"
    )
    cfg = resolve_config(toml, {"model.activation": "smelu:beta=0.5", "optim.epochs": 3})
    assert cfg.replicas == 6
    assert cfg.vary == ["init", "dropout"]
    assert cfg.model.activation == "smelu:beta=0.5"  # CLI wins over the file
    assert cfg.model.hidden == [32, 16]
    assert cfg.optim.lr == 0.1 and cfg.optim.epochs == 3


def test_round_trip_through_dict():
    cfg = resolve_config(None, {"model.hidden": "256-128-64", "vary": "none"})
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert isinstance(again, RunConfig)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"replicas": 0}, "at least 1"),
        ({"optim.lr": -1.0}, "learning rate"),
        ({"model.dropout": 1.0}, "dropout"),
        ({"optim.name": "lion"}, "unknown optimizer"),
        ({"vary": "cosmic-rays"}, "unknown nondeterminism source"),
        ({"model.hidden": "12-x"}, "hidden widths"),
    ],
)
def test_bad_values_are_clear_errors(overrides, fragment):
    with pytest.raises(ReprokitError, match=fragment):
        resolve_config(None, overrides)


def test_unknown_key_and_malformed_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nwidth = 3\n")
    with pytest.raises(ReprokitError, match="unknown key 'width'"):
        resolve_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("replicas = [\n")
    with pytest.raises(ReprokitError, match="not valid TOML"):
        resolve_config(broken)
    with pytest.raises(ReprokitError, match="not found"):
        resolve_config(tmp_path / "missing.toml")


def test_example_config_in_the_repository_loads():
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "configs" / "ctr-baseline.toml"
    cfg = resolve_config(path, {"replicas": 3})
    assert cfg.replicas == 3  # the CLI wins
    assert cfg.vary == ["init", "data-order"]
    assert cfg.model.hidden == [256, 128, 64] and cfg.model.activation == "smelu:beta=1"
    assert cfg.data.synth_rows == 50000 and cfg.optim.name == "adagrad"
