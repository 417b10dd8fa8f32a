"""The READMEs stay true to the code: same sections in both languages, links that resolve, recipe names,
commands and flags that exist, and a file tree that matches the package and its layers.

Reads files and builds the CLI parser only (the CLI starts without torch), so it takes well under a second.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from fromzero.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fromzero"
CONFIGS = PACKAGE / "recipes" / "configs"
READMES = [ROOT / "README.md", ROOT / "README.zh-CN.md"]
LINKED_DOCS = [*READMES, ROOT / "CHANGELOG.md", ROOT / "docs" / "results.md"]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a `#` comment in a bash block is no heading)."""
    return FENCE.sub("", text)


def _headings(path: Path) -> list[tuple[int, str]]:
    return [(len(m[1]), m[2].strip()) for m in re.finditer(r"^(#{1,6}) +(.+)$", _prose(path.read_text("utf-8")), re.M)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (word characters, hyphens and spaces
    stay, CJK included), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, text in _headings(path):
        slug = _slug(text)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _code(text: str) -> list[str]:
    """Inline code spans and the lines of fenced blocks: where commands are written."""
    blocks = [line for block in FENCE.findall(text) for line in block.splitlines()[1:-1]]
    return [*re.findall(r"`([^`\n]+)`", _prose(text)), *blocks]


def _tree(path: Path) -> dict[str, str]:
    """The package tree in a README's architecture block: entry name (`model/`, `cli.py`) -> the rest of its line."""
    entries = {}
    for line in path.read_text("utf-8").splitlines():
        m = re.match(r"^[│ ]*[├└]── (\S+)\s*(.*)$", line)
        if m:
            entries[m[1]] = m[2]
    return entries


def test_both_readmes_have_the_same_sections():
    en, zh = (_headings(p) for p in READMES)
    assert [level for level, _ in en] == [level for level, _ in zh], (
        "README.md and README.zh-CN.md must have the same headings (level and order):\n"
        f"  en: {[f'{lvl}:{t}' for lvl, t in en]}\n  zh: {[f'{lvl}:{t}' for lvl, t in zh]}")


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(doc.read_text("utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with that anchor in {dest.relative_to(ROOT)})")
    assert not broken, f"broken links in {doc.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_every_config_in_the_readme_exists(readme):
    missing = []
    for span in _code(readme.read_text("utf-8")):
        for name in re.findall(r"--config\s+([^\s`]+)", span):
            if not re.fullmatch(r"[a-z0-9_./-]+", name) or "..." in name:
                continue  # a placeholder: NAME, 名称, pretrain/<recipe>, configs/...
            path = ROOT / name if name.endswith((".yaml", ".yml")) else CONFIGS / f"{name}.yaml"
            if not path.is_file():
                missing.append(name)
    assert not missing, f"{readme.name} names recipes that do not exist under {CONFIGS.relative_to(ROOT)}: {missing}"


def _subcommands(parser) -> dict:
    return next(a.choices for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_every_command_and_flag_in_the_readme_exists(readme):
    commands = _subcommands(build_parser())
    wrong = []
    for span in _code(readme.read_text("utf-8")):
        for m in re.finditer(r"(?:^|[\s|;&(])fromzero ([a-z][\w-]*)((?: (?:[a-z][\w-]*))?)(.*)", span):
            name, action, rest = m[1], m[2].strip(), m[3]
            if name not in commands:
                wrong.append(f"fromzero {name}")
                continue
            parser = commands[name]
            if name == "tokenizer":
                actions = _subcommands(parser)
                if action not in actions:
                    wrong.append(f"fromzero tokenizer {action}")
                    continue
                parser = actions[action]
            for flag in re.findall(r"(?:^|\s)(--[a-z][\w-]*)", f"{action} {rest}"):
                if flag not in parser._option_string_actions:
                    wrong.append(f"fromzero {name} {flag}")
    assert not wrong, f"{readme.name} shows commands or flags the CLI does not have: {wrong}"


def _ranks() -> dict[str, int]:
    spec = importlib.util.spec_from_file_location("_layers", Path(__file__).parent / "test_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RANKS


def _is_shim(path: Path) -> bool:
    return "compat shim" in (ast.get_docstring(ast.parse(path.read_text("utf-8"))) or "").lower()


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_the_file_tree_matches_the_package_and_its_layers(readme):
    tree = _tree(readme)
    on_disk = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    on_disk |= {p.name for p in PACKAGE.glob("*.py") if p.name != "__main__.py" and not _is_shim(p)}
    nested = {"hf/": PACKAGE / "model" / "hf", "configs/": CONFIGS}
    top = set(tree) - set(nested)
    assert all(path.is_dir() for name, path in nested.items() if name in tree)
    assert on_disk <= top, f"{readme.name}'s tree is missing {sorted(on_disk - top)}"
    assert top <= on_disk, f"{readme.name}'s tree names what src/fromzero does not have: {sorted(top - on_disk)}"
    ranks = _ranks()
    wrong = []
    for name, rest in tree.items():
        rank = ranks.get(name.rstrip("/").removesuffix(".py"))
        shown = re.match(r"(\d+)\s", rest)
        if rank is not None and name in top and (shown is None or int(shown[1]) != rank):
            wrong.append(f"{name} shows {shown[1] if shown else 'no layer'}, tests/test_layers.py says {rank}")
    assert not wrong, f"{readme.name}'s tree disagrees with the layers: {wrong}"


def test_the_readme_stays_a_guide():
    lines = len((ROOT / "README.md").read_text("utf-8").splitlines())
    assert lines <= 160, f"README.md has {lines} lines: move measurements and notes to docs/results.md"
