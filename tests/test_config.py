from dataclasses import dataclass, field
from typing import Literal

import pytest

from fromzero.config import build, load_yaml, merge, parse_overrides, to_dict
from fromzero.errors import FromzeroError


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Outer:
    name: str = "x"
    kind: Literal["a", "b"] = "a"
    limit: float | None = None
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_build_nested_and_coerce():
    cfg = build(Outer, {"kind": "b", "limit": 3, "tags": "one", "inner": {"lr": "3e-4", "steps": 5.0}})
    assert cfg.kind == "b" and cfg.limit == 3.0 and cfg.tags == ["one"]
    assert cfg.inner.lr == pytest.approx(3e-4) and cfg.inner.steps == 5 and isinstance(cfg.inner.steps, int)
    assert to_dict(cfg)["inner"]["betas"] == [0.9, 0.95]


def test_unknown_key_suggests_and_lists_valid_keys():
    with pytest.raises(FromzeroError) as e:
        build(Outer, {"inner": {"setps": 3}})
    msg = str(e.value)
    assert "inner.setps" in msg and "Did you mean 'steps'" in msg and "betas, lr, steps" in msg


@pytest.mark.parametrize("data, expected", [
    ({"inner": {"steps": "ten"}}, "expects an integer"),
    ({"inner": {"steps": 2.5}}, "expects an integer"),
    ({"kind": "c"}, "must be one of 'a', 'b'"),
    ({"limit": "soon"}, "expects float or NoneType"),
    ({"inner": 3}, "must be a mapping"),
])
def test_wrong_types_are_named(data, expected):
    with pytest.raises(FromzeroError, match=expected):
        build(Outer, data)


def test_overrides_parse_and_merge():
    ov = parse_overrides(["inner.lr=0.01", "tags=[a, b]", "name=hello"])
    assert ov == {"inner": {"lr": 0.01}, "tags": ["a", "b"], "name": "hello"}
    merged = merge({"inner": {"steps": 3, "lr": 1.0}}, ov)
    assert merged["inner"] == {"steps": 3, "lr": 0.01}
    with pytest.raises(FromzeroError, match="key.sub=value"):
        parse_overrides(["inner.lr"])


def test_yaml_errors(tmp_path):
    with pytest.raises(FromzeroError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(FromzeroError, match="not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(FromzeroError, match="mapping"):
        load_yaml(listy)


def test_every_shipped_recipe_builds_its_config():
    # a typo in a shipped YAML would otherwise only surface when a user runs that recipe
    from pathlib import Path

    import fromzero
    from fromzero.config import build
    from fromzero.objectives.registry import objectives_for
    from fromzero.recipes import load_recipe
    from fromzero.recipes.finetune import FinetuneConfig
    from fromzero.recipes.pretrain import PretrainConfig
    from fromzero.recipes.pretrain_encoder import EncoderPretrainConfig
    from fromzero.recipes.pretrain_seq2seq import Seq2SeqPretrainConfig

    configs = Path(fromzero.__file__).parent / "recipes" / "configs"
    names = sorted(str(p.relative_to(configs).with_suffix("")) for p in configs.glob("*/*.yaml"))
    assert len(names) >= 10
    for name in names:
        recipe = load_recipe(name)
        if name.startswith("finetune/"):
            cls = FinetuneConfig
        else:
            objective = recipe.get("objective", "clm")
            cls = PretrainConfig if objective == "clm" else \
                Seq2SeqPretrainConfig if objective in objectives_for("encoder_decoder") else EncoderPretrainConfig
        build(cls, recipe)
