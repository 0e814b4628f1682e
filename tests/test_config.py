"""infra.config: round trips, layering, overrides and every error path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from infra.config import ConfigError, dump_yaml, from_dict, load, parse_override, read_file, to_dict
from infra.schema import SpacetimeConfig
from infra.schema.presets import PRESETS, get_preset


@dataclass
class Inner:
    depth: int = 2
    width: float = 1.5
    kind: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=lambda: ["x"])
    patch: tuple[int, int, int] = (1, 2, 2)
    path: str | None = None

    def validate(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")


@dataclass
class Outer:
    name: str = "n"
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    weights: dict[str, float] = field(default_factory=dict)


def test_round_trip_yaml_toml_json(tmp_path: Path) -> None:
    cfg = Outer(
        name="m", inner=Inner(depth=5, kind="b", tags=["p", "q"], patch=(2, 4, 4)), flag=True
    )
    cfg.weights = {"a": 0.5}
    back = from_dict(Outer, yaml.safe_load(dump_yaml(cfg)))
    assert back == cfg
    (tmp_path / "c.toml").write_text('name = "t"\n[inner]\ndepth = 7\npatch = [1, 1, 1]\n')
    assert load(Outer, file=tmp_path / "c.toml") == Outer(
        name="t", inner=Inner(depth=7, patch=(1, 1, 1))
    )
    (tmp_path / "c.json").write_text('{"inner": {"width": 3}}')
    loaded = load(Outer, file=tmp_path / "c.json")
    assert loaded.inner.width == 3.0 and isinstance(loaded.inner.width, float)


def test_spacetime_presets_round_trip() -> None:
    for name in PRESETS:
        cfg = get_preset(name)
        assert from_dict(SpacetimeConfig, to_dict(cfg)) == cfg


def test_layering_preset_file_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  depth: 4\nname: from-file\n")
    base = Outer(name="preset", inner=Inner(width=9.0))
    cfg = load(
        Outer, base, f, ["inner.depth=6", "flag=true", "inner.tags=[a, b]", "inner.path=/x/y"]
    )
    assert cfg.name == "from-file"  # file over preset
    assert cfg.inner.width == 9.0  # preset kept where the file is silent
    assert cfg.inner.depth == 6  # --set over file
    assert cfg.flag is True and cfg.inner.tags == ["a", "b"] and cfg.inner.path == "/x/y"


def test_string_override_keeps_raw_text() -> None:
    assert parse_override(Outer, "name=123") == ("name", "123")
    assert parse_override(Outer, "inner.path=null") == ("inner.path", None)
    assert parse_override(Outer, "inner.depth=12") == ("inner.depth", 12)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"nmae": "x"}, r"unknown key 'nmae'; did you mean 'name'\?"),
        ({"inner": {"dpeth": 3}}, r"unknown key 'inner.dpeth'; did you mean 'inner.depth'\?"),
        (
            {"zzzzzz": 1},
            r"unknown key 'zzzzzz'; valid keys under '<root>': flag, inner, name, weights",
        ),
        ({"inner": {"depth": "deep"}}, r"inner.depth: expected int, got str 'deep'"),
        ({"inner": {"depth": 2.5}}, r"inner.depth: expected int, got float 2.5"),
        ({"inner": {"depth": True}}, r"inner.depth: expected int, got bool True"),
        ({"flag": "yes"}, r"flag: expected bool, got str 'yes'"),
        ({"inner": {"kind": "c"}}, r"inner.kind: expected one of 'a', 'b', got str 'c'"),
        ({"inner": {"tags": "x"}}, r"inner.tags: expected list\[str\], got str 'x'"),
        ({"inner": {"tags": ["ok", 3]}}, r"inner.tags\[1\]: expected str, got int 3"),
        ({"inner": {"patch": [1, 2]}}, r"inner.patch: expected 3 items, got 2"),
        ({"inner": {"path": 5}}, r"inner.path: expected str or null, got int 5"),
        ({"inner": 3}, r"inner: expected Inner, got int 3"),
        ({"weights": {"a": "heavy"}}, r"weights.a: expected float, got str 'heavy'"),
        ({"inner": {"depth": 0}}, r"inner: depth must be >= 1, got 0"),
    ],
)
def test_error_messages(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Outer, data)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner:\n  dpeth: 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'inner.dpeth' in .*bad.yaml; did you mean 'inner.depth'"
    ):
        load(Outer, file=bad)
    with pytest.raises(ConfigError, match=r"nothere.yaml: config file not found"):
        read_file(tmp_path / "nothere.yaml")
    (tmp_path / "x.ini").write_text("a=1")
    with pytest.raises(ConfigError, match=r"x.ini: unknown config format '.ini'"):
        read_file(tmp_path / "x.ini")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: cannot parse"):
        read_file(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: top level must be a mapping, got list"):
        read_file(tmp_path / "list.yaml")
    (tmp_path / "typed.toml").write_text("[inner]\ndepth = 'x'\n")
    with pytest.raises(ConfigError, match=r"inner.depth \(in .*typed.toml\): expected int"):
        load(Outer, file=tmp_path / "typed.toml")


def test_override_errors() -> None:
    with pytest.raises(
        ConfigError,
        match=r"--set inner.dpth=3: unknown key 'inner.dpth'; did you mean 'inner.depth'",
    ):
        load(Outer, overrides=["inner.dpth=3"])
    with pytest.raises(ConfigError, match=r"--set name.x=1: 'name' is not a section"):
        load(Outer, overrides=["name.x=1"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load(Outer, overrides=["inner.depth"])
    with pytest.raises(ConfigError, match=r"inner.depth \(in --set\): expected int, got str 'abc'"):
        load(Outer, overrides=["inner.depth=abc"])
    with pytest.raises(ConfigError, match=r"cannot parse value"):
        load(Outer, overrides=["inner.tags=[a"])


def test_spacetime_validation_messages() -> None:
    with pytest.raises(ConfigError, match=r"storage: multipart_chunk_mb must be >= 5"):
        load(SpacetimeConfig, overrides=["storage.multipart_chunk_mb=1"])
    with pytest.raises(ConfigError, match=r"run: log_level must be a logging level name"):
        load(SpacetimeConfig, overrides=["run.log_level=LOUD"])
    with pytest.raises(ConfigError, match=r"train.flow.sigma_data must be > 0, got 0.0"):
        load(SpacetimeConfig, overrides=["train.flow.sigma_data=0"])
    with pytest.raises(
        ConfigError, match=r"train.flow.prediction \(in --set\): expected one of 'velocity', 'x0'"
    ):
        load(SpacetimeConfig, overrides=["train.flow.prediction=eps"])
    with pytest.raises(ConfigError, match=r"unknown preset 'tinny'; did you mean 'tiny'"):
        get_preset("tinny")


def test_every_shipped_config_file_loads() -> None:
    from infra.schema import SpacetimeConfig
    from infra.schema.presets import get_preset

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert files
    for f in files:
        load(SpacetimeConfig, get_preset("default"), str(f), [])
