"""Find and load YAML recipes: a path, or the name of a recipe shipped in fromzero/configs/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fromzero.config import load_yaml, merge, parse_overrides
from fromzero.errors import FromzeroError

RECIPE_DIR = Path(__file__).parent / "configs"


def available() -> list[str]:
    return sorted(str(p.relative_to(RECIPE_DIR).with_suffix("")) for p in RECIPE_DIR.rglob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """`configs/pretrain/gpt-tiny-zh.yaml`, `pretrain/gpt-tiny-zh` and a user's own file all work."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = name_or_path.removeprefix("configs/").removesuffix(".yaml")
    shipped = RECIPE_DIR / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise FromzeroError(
        f"config '{name_or_path}' not found: give a YAML path or one of the built-in recipes: {', '.join(available())}"
    )


def load_recipe(name_or_path: str | None, overrides: list[str] | None = None,
                default: str | None = None) -> dict[str, Any]:
    """YAML recipe (or `default` recipe when none given) merged with `key.sub=value` overrides."""
    data: dict[str, Any] = {}
    if name_or_path or default:
        data = load_yaml(resolve(name_or_path or default))
    return merge(data, parse_overrides(overrides or []))
