"""Experiment configs: YAML in, a typed config out, or one ConfigError line that says what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from falign.data import DatasetError
from falign.models import ModelError
from falign.training import ConfigError, ExperimentConfig, load_config, parse_config, train
from falign.training.config import apply_overrides

pytestmark = pytest.mark.usefixtures("one_thread")

VALID = """\
name: tiny
seed: 3
device: cpu
data:
  name: mnist
  subset: 600
  val_size: 200
model:
  name: mlp
  options:
    sizes: [784, 32, 10]
    activation: tanh
rule:
  name: usf
  options: {scale: 0.5}
optim:
  name: adam
  lr: 0.002
  betas: [0.8, 0.99]
schedule:
  name: multistep
  milestones: [2, 4]
train:
  epochs: 3
  batch_size: 50
  loss: mse
"""


@pytest.fixture
def write(tmp_path):
    def _write(text: str) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(text)
        return path

    return _write


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------- loading

def test_valid_yaml_loads_every_section(write):
    cfg = load_config(write(VALID))
    assert isinstance(cfg, ExperimentConfig)
    assert (cfg.name, cfg.seed, cfg.device) == ("tiny", 3, "cpu")
    assert (cfg.data.name, cfg.data.subset, cfg.data.val_size) == ("mnist", 600, 200)
    assert cfg.model.options == {"sizes": [784, 32, 10], "activation": "tanh"}
    assert (cfg.rule.name, cfg.rule.options) == ("usf", {"scale": 0.5})
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.betas) == ("adam", 0.002, (0.8, 0.99))
    assert (cfg.schedule.name, cfg.schedule.milestones) == ("multistep", [2, 4])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.loss) == (3, 50, "mse")
    # untouched keys keep their defaults
    assert cfg.optim.weight_decay == 0.0 and cfg.train.select_on == "val" and cfg.sweep is None


def test_round_trip_through_to_dict(write):
    cfg = load_config(write(VALID))
    assert parse_config(cfg.to_dict()) == cfg


def test_empty_file_gives_the_defaults(write):
    assert load_config(write("")) == ExperimentConfig()


def test_rule_name_is_normalised(write):
    assert load_config(write("rule: {name: Sign-Tracking}\n")).rule.name == "sign_tracking"


# ---------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("text, expected", [
    ("optim:\n  lrr: 0.1\n", "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("train:\n  epoch: 3\n", "did you mean 'train.epochs'?"),
    ("optimm:\n  lr: 0.1\n", "did you mean 'optim'?"),
    ("data:\n  subsett: 10\n", "did you mean 'data.subset'?"),
])
def test_unknown_key_names_the_nearest_valid_one(write, text, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(text))
    assert expected in _one_line(err)


def test_unknown_key_far_from_everything_has_no_suggestion(write):
    with pytest.raises(ConfigError) as err:
        load_config(write("optim:\n  zzzzqqq: 1\n"))
    assert "unknown key 'optim.zzzzqqq'" in _one_line(err) and "did you mean" not in str(err.value)


def test_unknown_sweep_key_names_the_nearest_valid_one(write):
    with pytest.raises(ConfigError) as err:
        load_config(write("sweep:\n  trial_epoch: 3\n"))
    assert "did you mean 'sweep.trial_epochs'?" in str(err.value)


@pytest.mark.parametrize("text, where", [
    ("train:\n  epochs: ten\n", "train.epochs"),
    ("train:\n  batch_size: [1, 2]\n", "train.batch_size"),
    ("optim:\n  name: lbfgs\n", "optim.name"),
    ("optim:\n  betas: 0.9\n", "optim.betas"),
    ("data: 5\n", "data"),
])
def test_wrong_type_names_the_key_and_the_value(write, text, where):
    with pytest.raises(ConfigError) as err:
        load_config(write(text))
    msg = _one_line(err)
    assert msg.startswith(f"{write(text)}: {where}: ")
    assert "(got " in msg


@pytest.mark.parametrize("text, where", [
    ("optim:\n  lr: 0\n", "optim.lr"),
    ("optim:\n  lr: -0.1\n", "optim.lr"),
    ("optim:\n  momentum: 1.0\n", "optim.momentum"),
    ("train:\n  batch_size: 0\n", "train.batch_size"),
    ("data:\n  subset: 0\n", "data.subset"),
    ("train:\n  early_stop_tol: -1\n", "train.early_stop_tol"),
])
def test_out_of_range(write, text, where):
    with pytest.raises(ConfigError) as err:
        load_config(write(text))
    assert f": {where}: " in _one_line(err)


def test_positive_lr_is_accepted(write):
    assert load_config(write("optim:\n  lr: 1.0e-9\n")).optim.lr == 1e-9


def test_unknown_rule_names_the_nearest(write):
    with pytest.raises(ConfigError) as err:
        load_config(write("rule:\n  name: fq\n"))
    msg = _one_line(err)
    assert "rule.name" in msg and "unknown rule 'fq'" in msg and "did you mean 'fa'?" in msg


def test_invalid_yaml_says_the_line(write):
    text = "optim:\n  lr: 0.1\n  momentum: [0.9\ntrain: {epochs: 1}\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(text))
    msg = _one_line(err)
    assert "invalid YAML" in msg
    assert "line 4" in msg  # where the unclosed flow sequence runs into the next key


def test_invalid_yaml_line_follows_the_error(write):
    bad = "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: [\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(bad))
    assert "line 7" in str(err.value)  # the stream ends inside the list opened on line 6


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_a_list_is_not_a_config(write):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write("- a\n- b\n"))


def test_a_list_is_not_a_config_even_with_overrides(write):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write("- a\n- b\n"), ["optim.lr=0.1"])


def test_binary_file_is_a_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00\x80 binary")
    with pytest.raises(ConfigError):
        load_config(path)


# ------------------------------------------------------------------------------------ overrides

def test_set_overrides_nested_keys_typed_as_yaml(write):
    cfg = load_config(write(VALID), [
        "optim.lr=0.5", "train.epochs=7", "train.checkpoint_every_epoch=true",
        "model.options.sizes=[784, 16, 10]", "rule.name=kp", "rule.options={}",
        "data.val_size=null", "schedule.milestones=[1]", "name=other",
    ])
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.train.checkpoint_every_epoch is True
    assert cfg.model.options == {"sizes": [784, 16, 10], "activation": "tanh"}
    assert (cfg.rule.name, cfg.rule.options) == ("kp", {})
    assert cfg.data.val_size is None and cfg.schedule.milestones == [1] and cfg.name == "other"
    # the rest of the file is untouched
    assert cfg.optim.name == "adam" and cfg.train.loss == "mse"


def test_set_exponent_notation_is_a_number(write):
    cfg = load_config(write(VALID), ["rule.options.scale=1e-3"])
    assert cfg.rule.options["scale"] == 1e-3


def test_set_creates_missing_sections_and_the_last_one_wins(write):
    cfg = load_config(write("name: x\n"), ["sweep.trial_epochs=2", "optim.lr=0.1", "optim.lr=0.3"])
    assert cfg.sweep is not None and cfg.sweep.trial_epochs == 2
    assert cfg.optim.lr == 0.3


def test_set_values_are_validated_like_the_file(write):
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        load_config(write(VALID), ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(write(VALID), ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="did you mean 'fa'"):
        load_config(write(VALID), ["rule.name=fq"])


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim.lr.x=1"])
def test_malformed_set(write, item):
    with pytest.raises(ConfigError):
        load_config(write(VALID), [item])


def test_apply_overrides_leaves_its_input_alone():
    data = {"optim": {"lr": 0.1}}
    out = apply_overrides(data, ["optim.lr=0.2", "train.epochs=1"])
    assert data == {"optim": {"lr": 0.1}}
    assert out == {"optim": {"lr": 0.2}, "train": {"epochs": 1}}


# ------------------------------------------------------- names that only the registries can check

def _tiny(**sections) -> dict:
    """Only the sections these tests need, the rest at the config defaults (unlike tiny_config);
    a keyword replaces its whole section."""
    cfg = {"device": "cpu", "data": {"name": "mnist", "subset": 600, "val_size": 200},
           "model": {"name": "mlp", "options": {"sizes": [784, 32, 10]}},
           "train": {"epochs": 1, "batch_size": 50}}
    cfg.update(sections)
    return cfg


def test_unknown_model_is_a_model_error_at_train_time(data_root, tmp_path):
    cfg = parse_config(_tiny(model={"name": "mlpp", "options": {}}))  # the config itself is fine
    with pytest.raises(ModelError) as err:
        train(cfg, tmp_path / "run", log=None)
    assert "'mlpp'" in str(err.value) and "did you mean 'mlp'" in str(err.value)
    assert not (tmp_path / "run" / "tracking.json").exists()


def test_unknown_model_option_is_a_model_error(data_root, tmp_path):
    cfg = parse_config(_tiny(model={"name": "mlp", "options": {"sizes": [784, 32, 10], "sizez": 1}}))
    with pytest.raises(ModelError, match="sizez"):
        train(cfg, tmp_path / "run", log=None)


def test_unknown_dataset_is_a_dataset_error_at_train_time(data_root, tmp_path):
    cfg = parse_config(_tiny(data={"name": "mnistt"}))
    with pytest.raises(DatasetError) as err:
        train(cfg, tmp_path / "run", log=None)
    assert "'mnistt'" in str(err.value) and "did you mean 'mnist'" in str(err.value)
    assert not (tmp_path / "run" / "tracking.json").exists()
