from dataclasses import dataclass, field
from typing import Literal

import pytest

from probcat.config import choices, from_dict, load_yaml, to_dict
from probcat.errors import ProbcatValueError


@dataclass(frozen=True)
class Inner:
    kind: Literal["a", "b"] = "a"
    size: int = 3
    scale: float = 1.0


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    items: tuple[Inner, ...] = ()
    maybe: int | None = None


def test_round_trip_nested_and_tuples():
    data = {
        "name": "run",
        "flag": True,
        "inner": {"kind": "b", "size": 5, "scale": 2},
        "items": [{"kind": "a"}, {"size": 7}],
        "maybe": 4,
    }
    cfg = from_dict(Outer, data)
    assert cfg.inner == Inner("b", 5, 2.0) and isinstance(cfg.inner.scale, float)
    assert cfg.items == (Inner(), Inner(size=7))
    assert to_dict(cfg) == {
        **data,
        "inner": {"kind": "b", "size": 5, "scale": 2.0},
        "items": [to_dict(Inner()), to_dict(Inner(size=7))],
    }
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert choices(Inner, "kind") == ("a", "b")


@pytest.mark.parametrize(
    "data, msg",
    [
        ({"inner": {"kind": "c"}}, r"inner\.kind: 'c' is not one of 'a', 'b'"),
        ({"inner": {"sise": 3}}, r"unknown setting 'inner\.sise'; known here: kind, size, scale"),
        ({"items": [{}, {"kind": "z"}]}, r"items\[1\]\.kind: 'z'"),
        ({"flag": 1}, "flag: expected true or false"),
        ({"inner": {"size": True}}, r"inner\.size: expected an integer"),
        ({"inner": {"size": 2.5}}, r"inner\.size: expected an integer"),
        ({"inner": {"scale": "big"}}, r"inner\.scale: expected a number"),
        ({"name": 3}, "name: expected a string"),
        ({"items": {"kind": "a"}}, "items: expected a list"),
        ({"inner": 3}, "inner: expected a mapping"),
        ({"maybe": "x"}, "maybe: expected an integer"),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_key(data, msg):
    with pytest.raises(ProbcatValueError, match=msg) as e:
        from_dict(Outer, data)
    assert "\n" not in str(e.value)


def test_yaml_files_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  kind: b\nitems:\n  - size: 1\n")
    cfg = load_yaml(Outer, p, {"inner.size": 9, "items.0.size": 2})
    assert cfg.inner == Inner("b", 9) and cfg.items == (Inner(size=2),)
    p.write_text("inner: [unclosed\n")
    with pytest.raises(ProbcatValueError, match="not valid YAML"):
        load_yaml(Outer, p)
    p.write_text("inner:\n  kind: q\n")
    with pytest.raises(ProbcatValueError, match=r"c\.yaml: inner\.kind: 'q'"):
        load_yaml(Outer, p)
    with pytest.raises(ProbcatValueError, match="not found"):
        load_yaml(Outer, tmp_path / "missing.yaml")
    assert load_yaml(Outer, None) == Outer()


@dataclass(frozen=True)
class WithDefaults:
    inner: Inner = field(default_factory=lambda: Inner("b", 9, 4.0))


def test_a_partial_section_keeps_the_fields_own_defaults():
    """``inner: {size: 2}`` changes the size only: kind and scale stay at the defaults the
    enclosing config gives (not the nested class's own)."""
    assert from_dict(WithDefaults, {"inner": {"size": 2}}).inner == Inner("b", 2, 4.0)
    assert from_dict(WithDefaults, {}).inner == Inner("b", 9, 4.0)
    with pytest.raises(ProbcatValueError, match=r"inner\.kind"):
        from_dict(WithDefaults, {"inner": {"kind": "z"}})
