"""Tests for drafttrain.config: YAML + override loading, validation errors, round trip, registry."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Literal, Optional

import pytest

from drafttrain import config as config_mod
from drafttrain.config import (
    config_class_for,
    config_to_dict,
    load_config,
    load_recipe_config,
    save_config,
)
from drafttrain.errors import DrafttrainError

CONFIGS_DIR = Path(__file__).parents[1] / "configs"


class Device(enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"


@dataclasses.dataclass
class Sampling:
    temperature: float = 1.0
    top_k: Optional[int] = None
    greedy: bool = False


@dataclasses.dataclass
class Example:
    name: str = "demo"
    k: int = 4
    methods: list[str] = dataclasses.field(default_factory=lambda: ["ar"])
    shape: tuple[int, ...] = (1, 2)
    mode: Literal["fast", "exact"] = "exact"
    out_dir: Path = Path("runs")
    device: Device = Device.CPU
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    sampling: Sampling = dataclasses.field(default_factory=Sampling)

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")


@dataclasses.dataclass
class Required:
    model: str
    steps: int = 1


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(DrafttrainError) as info:
        load_config(*args, **kwargs)
    return str(info.value)


def test_defaults_only():
    assert load_config(Example) == Example()


def test_yaml_load_converts_types(tmp_path):
    path = write(tmp_path, """
name: run1
k: 7
methods: [ar, hf]
shape: [3, 4, 5]
mode: fast
out_dir: out/x
device: cuda
extra: {a: 1, b: 0.5}
sampling: {temperature: 2, top_k: 8, greedy: true}
""")
    cfg = load_config(Example, path)
    assert cfg == Example(
        name="run1", k=7, methods=["ar", "hf"], shape=(3, 4, 5), mode="fast",
        out_dir=Path("out/x"), device=Device.CUDA, extra={"a": 1.0, "b": 0.5},
        sampling=Sampling(temperature=2.0, top_k=8, greedy=True),
    )
    assert isinstance(cfg.sampling.temperature, float)
    assert isinstance(cfg.out_dir, Path)


def test_empty_yaml_means_defaults(tmp_path):
    assert load_config(Example, write(tmp_path, "# nothing\n")) == Example()


def test_overrides_nested_and_lists():
    cfg = load_config(Example, overrides=["k=5", "sampling.temperature=0.7", "methods=[ar,hf]",
                                          "name=foo", "sampling.top_k=null", "shape=[9]"])
    assert cfg.k == 5
    assert cfg.sampling.temperature == 0.7
    assert cfg.methods == ["ar", "hf"]
    assert cfg.name == "foo"
    assert cfg.sampling.top_k is None
    assert cfg.shape == (9,)


def test_override_wins_over_yaml(tmp_path):
    path = write(tmp_path, "k: 2\nsampling: {top_k: 3, greedy: true}\n")
    cfg = load_config(Example, path, overrides=["sampling.top_k=10"])
    assert cfg.k == 2
    assert cfg.sampling.top_k == 10
    assert cfg.sampling.greedy is True  # sibling key from YAML kept


def test_float_accepts_exponent_string(tmp_path):
    cfg = load_config(Example, write(tmp_path, "sampling: {temperature: 1e-3}\n"))
    assert cfg.sampling.temperature == pytest.approx(1e-3)


def test_unknown_key_lists_valid_keys(tmp_path):
    path = write(tmp_path, "nmae: x\n")
    msg = error_of(Example, path)
    assert str(path) in msg
    assert "nmae" in msg and "unknown key" in msg
    assert "device, extra, k, methods, mode, name, out_dir, sampling, shape" in msg


def test_unknown_nested_key_shows_dotted_path(tmp_path):
    msg = error_of(Example, write(tmp_path, "sampling: {topk: 3}\n"))
    assert "sampling.topk" in msg
    assert "greedy, temperature, top_k" in msg


def test_unknown_override_key_names_override():
    msg = error_of(Example, overrides=["sampling.topk=3"])
    assert "override 'sampling.topk=3'" in msg
    assert "sampling.topk" in msg


def test_wrong_type_names_expected_and_received(tmp_path):
    path = write(tmp_path, "k: lots\n")
    msg = error_of(Example, path)
    assert str(path) in msg
    assert "k: expected int, got 'lots' (str)" in msg
    assert "Fix:" in msg


def test_wrong_type_in_nested_override():
    msg = error_of(Example, overrides=["sampling.top_k=abc"])
    assert "override 'sampling.top_k=abc'" in msg
    assert "sampling.top_k" in msg and "'abc'" in msg


def test_wrong_type_in_list_item():
    msg = error_of(Example, overrides=["shape=[1, x]"])
    assert "shape[1]" in msg and "expected int" in msg


@pytest.mark.parametrize("text, needle", [
    ("sampling: {greedy: 1}\n", "sampling.greedy: expected bool, got 1 (int)"),
    ("sampling: {greedy: 'yes'}\n", "sampling.greedy: expected bool, got 'yes' (str)"),
    ("k: true\n", "k: expected int, got True (bool)"),
    ("sampling: {temperature: false}\n", "expected float, got False (bool)"),
])
def test_bool_and_int_are_strict(tmp_path, text, needle):
    assert needle in error_of(Example, write(tmp_path, text))


def test_literal_not_in_choices(tmp_path):
    msg = error_of(Example, write(tmp_path, "mode: quick\n"))
    assert "mode" in msg and "'quick'" in msg
    assert "'fast', 'exact'" in msg


def test_enum_bad_value_lists_choices():
    msg = error_of(Example, overrides=["device=tpu"])
    assert "device" in msg and "'cpu', 'cuda'" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = error_of(Example, path)
    assert str(path) in msg and "not found" in msg


def test_bad_yaml(tmp_path):
    path = write(tmp_path, "k: [1, 2\n")
    msg = error_of(Example, path)
    assert str(path) in msg and "invalid YAML" in msg


def test_non_mapping_top_level(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    msg = error_of(Example, path)
    assert str(path) in msg and "mapping" in msg and "list" in msg


def test_missing_required_field(tmp_path):
    path = write(tmp_path, "steps: 3\n")
    msg = error_of(Required, path)
    assert str(path) in msg
    assert "model" in msg and "required" in msg
    assert load_config(Required, path, overrides=["model=m"]) == Required(model="m", steps=3)


def test_post_init_error_carries_filename(tmp_path):
    path = write(tmp_path, "k: -1\n")
    msg = error_of(Example, path)
    assert msg.startswith(str(path))
    assert "k must be >= 0, got -1" in msg


@pytest.mark.parametrize("bad", ["k", "=3", "sampling.top_k 4"])
def test_override_without_equals(bad):
    msg = error_of(Example, overrides=[bad])
    assert repr(bad) in msg and "key=value" in msg


def test_null_for_required_type():
    msg = error_of(Example, overrides=["k=null"])
    assert "k: expected int, got null" in msg


def test_save_load_round_trip(tmp_path):
    cfg = Example(name="r", k=3, methods=["a", "b"], shape=(4, 5), mode="fast",
                  out_dir=Path("x/y"), device=Device.CUDA, extra={"w": 0.25},
                  sampling=Sampling(temperature=1e-5, top_k=None, greedy=True))
    path = tmp_path / "sub" / "saved.yaml"
    save_config(cfg, path)
    assert load_config(Example, path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["saved.yaml"]  # no temp file left


def test_config_to_dict_is_plain():
    data = config_to_dict(Example())
    assert data["out_dir"] == "runs"
    assert data["shape"] == [1, 2]
    assert data["device"] == "cpu"
    assert data["sampling"] == {"temperature": 1.0, "top_k": None, "greedy": False}


def test_config_class_for_unknown_name(monkeypatch):
    monkeypatch.setattr(config_mod, "CONFIG_CLASSES", {"eval": "x:Y", "train": "x:Z"})
    with pytest.raises(DrafttrainError) as info:
        config_class_for("evl")
    assert "'evl'" in str(info.value) and "eval, train" in str(info.value)


def test_load_recipe_config_uses_file_stem(tmp_path, monkeypatch):
    monkeypatch.setattr(config_mod, "CONFIG_CLASSES", {"demo": f"{__name__}:Example"})
    path = write(tmp_path, "k: 9\n", name="demo.yaml")
    assert load_recipe_config(path, overrides=["name=z"]) == Example(k=9, name="z")
    other = write(tmp_path, "k: 9\n", name="other.yaml")
    with pytest.raises(DrafttrainError, match="other.yaml.*unknown config recipe 'other'"):
        load_recipe_config(other)


def test_every_yaml_under_configs_loads():
    paths = sorted(CONFIGS_DIR.glob("**/*.yaml"))
    if not paths:
        pytest.skip(f"no YAML files under {CONFIGS_DIR} yet")
    loaded = []
    for path in paths:
        cfg = load_recipe_config(path)
        assert dataclasses.is_dataclass(cfg), path
        loaded.append(path)
    assert set(loaded) == set(paths)
