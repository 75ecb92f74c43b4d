"""One validated config: merging, coercion and the parameter-naming error messages."""
import pytest

from mpi_dml.config import TrainConfig, build_config, ignored_settings, load_toml, parse_interval
from mpi_dml.errors import UserError

BASE = {"data": "d.csv", "label_column": "label", "out": "o"}


def cfg(**kw):
    return build_config({}, {**BASE, **kw})


@pytest.mark.parametrize("field,value,rule", [
    ("lr", -1.0, "must be > 0. Got -1.0 instead"),
    ("lr", 0.0, "must be > 0"),
    ("batch_size", 0, "must be >= 1"),
    ("epochs", 0, "must be >= 1"),
    ("model", "tree", "must be one of linear, logistic, softmax, svm, mlp. Got 'tree'"),
    ("optimizer", "lamb", "must be one of sgd, adam, adamw"),
    ("momentum", 1.0, r"must be in \[0, 1\)"),
    ("val_fraction", 1.0, r"must be in \[0, 1\)"),
    ("dtype", "float16", "must be one of float32, float64"),
    ("num_classes", 1, "must be 0 \\(infer\\) or >= 2"),
    ("weight_decay", -0.1, "must be >= 0"),
])
def test_invalid_values_name_parameter_rule_and_value(field, value, rule):
    with pytest.raises(UserError, match=f"The '{field}' parameter of TrainConfig {rule}"):
        cfg(**{field: value}).validate()


def test_batch_size_must_cover_every_rank():
    cfg(batch_size=4).validate(world_size=4)
    with pytest.raises(UserError, match=r"'batch_size' .* >= the number of ranks \(4\). Got 3"):
        cfg(batch_size=3).validate(world_size=4)


@pytest.mark.parametrize("missing", ["data", "label_column", "out"])
def test_required_fields(missing):
    values = {**BASE, missing: ""}
    with pytest.raises(UserError, match=f"'{missing}' parameter"):
        build_config({}, values).validate()


def test_flags_override_file_and_types_are_coerced(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('data = "a.csv"\nlabel-column = "y"\nout = "o"\nlr = 0.5\n'
                    'hidden = [32, 16]\nmodel = "mlp"\nstandardize = true\n')
    c = build_config(load_toml(path), {"lr": 0.25, "epochs": "3"}).validate()
    assert (c.lr, c.epochs, c.hidden, c.standardize, c.label_column) == (0.25, 3, (32, 16), True, "y")


def test_unknown_toml_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("learning_rate = 0.1\n")
    with pytest.raises(UserError, match="unknown key 'learning_rate'"):
        load_toml(path)


def test_wrong_type_is_named():
    with pytest.raises(UserError, match="'epochs' parameter of TrainConfig must be of type int"):
        cfg(epochs="many")


def test_hidden_parses_comma_list():
    assert cfg(hidden="512,256", model="mlp").validate().hidden == (512, 256)
    with pytest.raises(UserError, match="'hidden'"):
        cfg(hidden="512,x")


def test_task_follows_model():
    assert TrainConfig(model="linear").task == "regression"
    assert cfg(model="mlp").task == "classification"
    with pytest.raises(UserError, match="'task' parameter"):
        cfg(model="softmax", task="regression").validate()


def test_settings_that_do_not_apply_are_named():
    c = cfg(model="softmax", optimizer="adam", hidden="32", momentum=0.9)
    notes = ignored_settings(c, {"hidden", "momentum", "lr"})
    assert notes == ["hidden ignored: model softmax has no hidden layers",
                     "momentum ignored: they apply to sgd, not adam"]
    assert ignored_settings(cfg(model="mlp"), {"hidden", "activation"}) == []


@pytest.mark.parametrize("text, expected", [
    ("", None), ("500", ("steps", 500)), ("1", ("steps", 1)), ("90s", ("seconds", 90.0)),
    ("10m", ("seconds", 600.0)), ("2h", ("seconds", 7200.0)), ("0.5h", ("seconds", 1800.0)),
])
def test_checkpoint_interval(text, expected):
    assert parse_interval(text) == expected


@pytest.mark.parametrize("text", ["0", "-5", "10x", "m", "0s", "1.5", "infh"])
def test_bad_checkpoint_interval_is_named(text):
    with pytest.raises(UserError, match="'checkpoint_every' parameter of TrainConfig"):
        cfg(checkpoint_every=text).validate()


@pytest.mark.parametrize("name, value", [
    ("keep", 0), ("grace", 0), ("stall_timeout", -1), ("check_every", -1),
    ("nonfinite", "ignore"), ("device", "tpu"), ("gpu_exchange", "gloo"),
])
def test_fault_and_device_settings_are_checked(name, value):
    with pytest.raises(UserError, match=f"'{name}' parameter of TrainConfig"):
        cfg(**{name: value}).validate()
