"""The CLI builder: options generated from config dataclasses (types, defaults, help, merging,
aliases, environment variables), and every real command's options match its configs."""
from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Literal

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from cli import ConfigCommand, _leaves, _Numbers, _option_name, config_options, main


@dataclasses.dataclass(frozen=True)
class Inner:
    seed: int = field(default=0, metadata={"help": "Seed."})


@dataclasses.dataclass(frozen=True)
class Toy:
    kind: Literal["a", "b"] = field(default="a", metadata={"help": "Kind."})
    size: tuple[float, float] = field(default=(1.0, 2.0), metadata={"help": "Size in mm."})
    many: tuple[int, ...] | None = field(default=None, metadata={
        "help": "Many.", "option": "lots", "aliases": ("old-lots",)})
    radius: int | None = field(default=1, metadata={"help": "Radius in voxels."})
    flag: bool = field(default=True, metadata={"help": "Flag."})
    where: Path | None = field(default=None, metadata={"help": "Where."})
    inner: Inner = field(default=Inner(seed=5), metadata={"help": "Inner."})


@dataclasses.dataclass(frozen=True)
class Other:
    radius: int | None = field(default=2, metadata={"help": "Radius in voxels."})


def _toy_cli():
    """A group like ``tcpc`` with one generated command; returns (group, what it built)."""
    got = {}

    @click.group(context_settings={"auto_envvar_prefix": "TCPC"})
    def group():
        pass

    @group.command(cls=ConfigCommand, configs={"toy": Toy, "other": Other})
    def toy(settings):
        got["toy"], got["other"] = settings.build("toy"), settings.build("other")

    return group, got


def test_each_type_converts_and_unset_options_keep_the_dataclass_defaults():
    group, got = _toy_cli()
    r = CliRunner().invoke(group, ["toy"])
    assert r.exit_code == 0, r.output
    assert got == {"toy": Toy(), "other": Other()}  # nested default Inner(seed=5) kept, radius 1 and 2
    r = CliRunner().invoke(group, ["toy", "--kind", "b", "--size", "3,4.5", "--lots", "1,2,3", "--radius", "none",
                                   "--no-flag", "--where", "x/y", "--seed", "7"])
    assert r.exit_code == 0, r.output
    assert got["toy"] == Toy(kind="b", size=(3.0, 4.5), many=(1, 2, 3), radius=None, flag=False,
                             where=Path("x/y"), inner=Inner(seed=7))
    assert got["other"] == Other(radius=None)  # one name, one setting: --radius sets both configs


def test_an_old_name_still_works_and_an_environment_variable_sets_an_option(monkeypatch):
    group, got = _toy_cli()
    assert CliRunner().invoke(group, ["toy", "--old-lots", "4"]).exit_code == 0
    assert got["toy"].many == (4,)
    monkeypatch.setenv("TCPC_TOY_KIND", "b")
    monkeypatch.setenv("TCPC_TOY_SIZE", "5,6")
    assert CliRunner().invoke(group, ["toy"]).exit_code == 0
    assert got["toy"].kind == "b" and got["toy"].size == (5.0, 6.0)
    assert CliRunner().invoke(group, ["toy", "--kind", "a"]).exit_code == 0  # the command line wins
    assert got["toy"].kind == "a"


@pytest.mark.parametrize("args, message", [
    (["--size", "1,2,3"], "--size takes 2 numbers, got 3"),
    (["--size", "1,x"], "--size takes numbers separated by commas"),
    (["--kind", "c"], "'c' is not one of 'a', 'b'"),
    (["--radius", "1.5"], "is not a valid integer"),
])
def test_bad_values_are_usage_errors(args, message):
    group, _ = _toy_cli()
    r = CliRunner().invoke(group, ["toy", *args])
    assert r.exit_code == 2 and message in r.output


def test_help_shows_field_help_and_defaults_once():
    group, _ = _toy_cli()
    text = CliRunner().invoke(group, ["toy", "--help"], terminal_width=200).output
    assert "--kind [a|b]" in text and "Size in mm.  [default: 1.0, 2.0]" in text
    assert "--radius" in text and "1 for toy; 2 for other" in text  # two configs, two defaults
    assert "--old-lots" not in text and "--flag / --no-flag" in text


def test_a_field_without_help_or_two_types_under_one_name_is_refused():
    @dataclasses.dataclass(frozen=True)
    class NoHelp:
        x: int = 0

    @dataclasses.dataclass(frozen=True)
    class Clash:
        radius: float = field(default=1.0, metadata={"help": "Radius."})

    with pytest.raises(TypeError, match="NoHelp.x has no metadata help"):
        config_options({"a": NoHelp})
    with pytest.raises(TypeError, match="--radius means fields of different types"):
        config_options({"a": Other, "b": Clash})


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=5))
def test_comma_separated_numbers_round_trip(values):
    assert _Numbers(float, None).convert(",".join(map(repr, values)), None, None) == tuple(values)


def _commands():
    return [(name, cmd) for name, cmd in main.commands.items() if isinstance(cmd, ConfigCommand)]


@pytest.mark.parametrize("name", [n for n, _ in _commands()])
def test_every_command_has_one_option_per_config_field(name):
    cmd = main.commands[name]
    ctx = click.Context(cmd, info_name=name)
    generated = {o.opts[0] for o in cmd.get_params(ctx) if o in cmd.generated and not o.hidden}
    expected = {f"--{_option_name(leaf)}" for cls in cmd.classes.values() for leaf in _leaves(cls)
                if leaf.field.name not in cmd.omit}
    assert generated == expected
    assert all(o.help for o in cmd.generated if not o.hidden)


def test_every_config_field_of_the_project_has_help():
    for _, cmd in _commands():
        cmd.get_params(click.Context(cmd))
        for cls in cmd.classes.values():
            for leaf in _leaves(cls):
                assert leaf.field.metadata.get("help", "").endswith("."), (cls.__name__, leaf.path)


def test_one_vocabulary_spacing_in_ingest_and_preprocess():
    opts = {name: {o for p in main.commands[name].get_params(click.Context(main.commands[name])) for o in p.opts}
            for name in ("ingest", "preprocess")}
    assert {"--spacing", "--npy-spacing", "--spacing-zyx"} <= opts["ingest"] & opts["preprocess"]


def test_real_commands_take_environment_variables_aliases_and_verbosity(tmp_path, monkeypatch):
    r = CliRunner().invoke(main, ["ingest", str(tmp_path), "--out", str(tmp_path / "v.zarr")],
                           env={"TCPC_INGEST_CLIP": "1,2,3"})
    assert r.exit_code == 2 and "--clip takes 2 numbers" in r.output
    r = CliRunner().invoke(main, ["ingest", str(tmp_path), "--out", str(tmp_path / "v.zarr"), "--spacing-zyx", "0"])
    assert r.exit_code == 2 and "spacing must be one or three positive numbers" in r.output
    r = CliRunner().invoke(main, ["-v", "ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "v.zarr"),
                                  "--spacing", "2"])
    assert r.exit_code == 2 and '"spacing_zyx": [2.0, 2.0, 2.0]' in r.output
    assert r.output.strip().splitlines()[-1] == f"error: source {tmp_path / 'nope'} does not exist"
    r = CliRunner().invoke(main, ["finetune", str(tmp_path), "--scratch", "--out", str(tmp_path / "o")],
                           env={"TCPC_FINETUNE_LABEL_FRACTION": "2"})
    assert r.exit_code == 2 and "label fraction must be in (0, 1], got 2.0" in r.output
    r = CliRunner().invoke(main, ["-v", "pretrain", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                                  "--workers", "0"])
    assert r.exit_code == 2 and f'"out": "{tmp_path / "o"}"' in r.output and '"workers": 0' in r.output
    r = CliRunner().invoke(main, ["-q", "-v", "inspect", str(tmp_path)])
    assert r.exit_code == 2 and "--quiet or --verbose" in r.output

