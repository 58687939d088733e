"""Config loading: YAML + dotted overrides -> validated dataclasses; one-line ConfigErrors for every mistake."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from longrl.errors import ConfigError
from longrl.rl.rewards import RewardConfig
from longrl.train.config_io import config_keys, config_to_dict, load_config, save_config
from longrl.train.lora import LoRAConfig
from longrl.train.optim import OptimConfig


@dataclass
class Inner:
    lr: float = 1e-5
    steps: int = 10
    schedule: Literal["cosine", "linear"] = "cosine"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps must be >= 1\nsecond line that must not reach the user")


@dataclass
class Outer:
    name: str = "run"
    inner: Inner = field(default_factory=Inner)
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=4))
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    flag: bool = False
    resume: str | None = None
    fps: float | None = None
    frames: list[int] = field(default_factory=lambda: [8, 16])
    tags: list[str] = field(default_factory=list)
    clip: tuple[float, float] = (0.2, 0.28)
    sizes: tuple[int, ...] = ()
    out: Path = Path("runs/x")
    level: Literal[1, 2, 3] = 1


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_file_or_overrides():
    assert load_config(Outer) == Outer()


def test_yaml_nested_sections_and_defaults_kept(tmp_path):
    path = write(tmp_path, "name: a\ninner:\n  lr: 0.001\nlora:\n  alpha: 8\nreward:\n  format_weight: 0.5\n")
    cfg = load_config(Outer, path)
    assert cfg.name == "a"
    assert cfg.inner == Inner(lr=0.001)
    # A partial section keeps the parent's default instance for the fields it does not set (rank=4 here).
    assert cfg.lora == LoRAConfig(rank=4, alpha=8.0)
    assert cfg.reward == RewardConfig(format_weight=0.5)  # a frozen dataclass
    assert isinstance(cfg.lora.alpha, float)


def test_overrides_on_top_of_yaml(tmp_path):
    path = write(tmp_path, "inner:\n  lr: 0.001\n  steps: 5\n")
    cfg = load_config(Outer, path, {"inner.lr": "2e-4", "reward.accuracy_weight": 3, "flag": "yes"})
    assert cfg.inner.lr == pytest.approx(2e-4) and cfg.inner.steps == 5
    assert cfg.reward.accuracy_weight == 3.0 and cfg.flag is True
    # None means "flag not given": the YAML value stays.
    assert load_config(Outer, path, {"inner.lr": None}).inner.lr == pytest.approx(0.001)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"inner.lr": 1}, {"inner.lr": 1.0}),  # int accepted for float
        ({"inner.lr": "1e-5"}, {"inner.lr": 1e-5}),  # PyYAML reads 1e-5 as a string
        ({"inner.steps": "12"}, {"inner.steps": 12}),
        ({"inner.steps": 1e3}, {"inner.steps": 1000}),
        ({"inner.steps": "2e3"}, {"inner.steps": 2000}),
        ({"flag": "false"}, {"flag": False}),
        ({"flag": "On"}, {"flag": True}),
        ({"resume": "auto"}, {"resume": "auto"}),
        ({"resume": "none"}, {"resume": None}),
        ({"fps": "null"}, {"fps": None}),
        ({"fps": "2"}, {"fps": 2.0}),
        ({"frames": "4, 8,16"}, {"frames": [4, 8, 16]}),
        ({"frames": ["1", 2]}, {"frames": [1, 2]}),
        ({"tags": "a,b"}, {"tags": ["a", "b"]}),
        ({"tags": ""}, {"tags": []}),
        ({"clip": [0.1, 1]}, {"clip": (0.1, 1.0)}),
        ({"clip": "0.3,0.4"}, {"clip": (0.3, 0.4)}),
        ({"sizes": [1, "2", 3]}, {"sizes": (1, 2, 3)}),
        ({"out": "some/where"}, {"out": Path("some/where")}),
        ({"level": "3"}, {"level": 3}),
        ({"inner.schedule": "linear"}, {"inner.schedule": "linear"}),
        ({"name": 7}, {"name": "7"}),
        ({"lora.targets": "q_proj,v_proj"}, {"lora.targets": ["q_proj", "v_proj"]}),
    ],
)
def test_coercion_table(overrides, expected):
    cfg = load_config(Outer, overrides=overrides)
    for dotted, want in expected.items():
        value = cfg
        for part in dotted.split("."):
            value = getattr(value, part)
        assert value == want and type(value) is type(want), (dotted, value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"inner.lr": "abc"}, "inner.lr must be a number, got 'abc'"),
        ({"inner.lr": True}, "inner.lr must be a number, got True"),
        ({"inner.steps": 2.5}, "inner.steps must be an integer, got 2.5"),
        ({"inner.steps": "x"}, "inner.steps must be an integer, got 'x'"),
        ({"flag": "maybe"}, "flag must be true or false, got 'maybe'"),
        ({"inner.schedule": "step"}, "inner.schedule must be one of 'cosine', 'linear', got 'step'"),
        ({"level": 4}, "level must be one of 1, 2, 3, got 4"),
        ({"fps": "fast"}, "fps must be a number, got 'fast' (or null)"),
        ({"clip": [0.1]}, "clip must have 2 items, got 1: [0.1]"),
        ({"frames": [1, "b"]}, "frames[1] must be an integer, got 'b'"),
        ({"frames": 3}, "frames must be a list, got 3"),
        ({"name": [1]}, "name must be a string, got [1]"),
        ({"inner": 3}, "inner must be a mapping of its fields, got 3"),
        # The dataclasses' own checks: a ValueError's first line, and ConfigErrors as they are.
        ({"inner.steps": 0}, "inner: steps must be >= 1"),
        ({"optim.lr": -1}, "optim.lr must be > 0, got -1.0"),
        ({"reward.numeric_abs_tol": -1}, "reward numeric_rel_tol and numeric_abs_tol must be >= 0"),
        ({"lora.rank": -2}, "model.lora.rank must be an integer >= 0 (0 = no LoRA), got -2"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(Outer, overrides=overrides)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("inner:\n  lrr: 1\n", "run.yaml: unknown key 'inner.lrr' (did you mean 'inner.lr'?)"),
        ("lr: 1\n", "run.yaml: unknown key 'lr' (did you mean 'inner.lr'?)"),  # right name, wrong section
        ("nmae: x\n", "run.yaml: unknown key 'nmae' (did you mean 'name'?)"),
        (
            "reward:\n  format_weigth: 1\n",
            "run.yaml: unknown key 'reward.format_weigth' (did you mean 'reward.format_weight'?)",
        ),  # fmt: skip
        ("zzzzzz: 1\n", "run.yaml: unknown key 'zzzzzz'"),
    ],
)
def test_unknown_yaml_keys_suggest_the_closest(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(Outer, write(tmp_path, text))
    assert str(info.value) == message


def test_unknown_override_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^config: unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)$"):
        load_config(Outer, overrides={"optim.lrr": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'inner.lr.x'"):
        load_config(Outer, overrides={"inner.lr.x": 1})


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("inner: [1, 2\n", r"^.*run\.yaml: not valid YAML \(.* at line \d+, column \d+\)$"),
        ("- 1\n- 2\n", r"run\.yaml: the top level must be a mapping of config keys, got list"),
        ("inner:\n  lr: 1\n lr: 2\n", r"not valid YAML"),
    ],
)
def test_bad_yaml(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(Outer, write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_empty_yaml_is_defaults(tmp_path):
    assert load_config(Outer, write(tmp_path, "# nothing\n")) == Outer()


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"^config file .*nope\.yaml does not exist$"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"is a folder, not a file"):
        load_config(Outer, tmp_path)


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config(
        Outer,
        overrides={"inner.lr": 3e-4, "clip": [0.1, 0.2], "out": "a/b", "reward.custom_weight": 0.5, "fps": 2},
    )
    saved = save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert saved.read_text().startswith("name: run\n")
    assert load_config(Outer, saved) == cfg
    assert not [p for p in saved.parent.iterdir() if p.name != "config.yaml"]  # no temp file left
    plain = config_to_dict(cfg)
    assert plain["clip"] == [0.1, 0.2] and plain["out"] == "a/b" and plain["reward"]["custom_weight"] == 0.5


def test_save_does_not_leave_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_text("name: old\n")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("longrl.atomic.os.replace", explode)  # where save_config renames
    with pytest.raises(OSError):
        save_config(Outer(), target)
    assert target.read_text() == "name: old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_config_keys_lists_nested_sections():
    keys = config_keys(Outer)
    assert keys[:5] == ["name", "inner", "inner.lr", "inner.steps", "inner.schedule"]
    assert "reward.format_weight" in keys and "optim.max_grad_norm" in keys


def test_a_given_dataclass_instance_is_taken_as_is():
    inner = Inner(lr=0.5)
    assert load_config(Outer, overrides={"inner": inner}).inner is inner
    # and a dotted override after it edits a copy of its fields
    cfg = load_config(Outer, overrides={"inner": inner, "inner.steps": 3})
    assert cfg.inner == dataclasses.replace(inner, steps=3)
