"""Finding layers by name: what `target_modules` and `modules_to_save` lists select in any model.

An entry is a name suffix ("c_attn" matches "transformer.h.0.attn.c_attn") or, when it holds a regex
character, a regex the full name must match. Matching fails loudly and lists the model's layers.

Fused layers answer to the usual names too. fromzero computes q, k and v in one Linear (and a
Llama MLP's gate and up in one), so configs copied from Hugging Face peft (`[q_proj, v_proj]`,
`[query, value]`, `[c_attn]`) would match nothing. A module that fuses layers says so with

    target_parts() -> {role: (child, (first_row, end_row) or None for the whole child)}

using the roles of ALIASES below (q, k, v, qkv, o, gate, up, down), and then `<module>.q_proj` selects
rows of `<module>.qkv`'s output: a Target with `parts`. Only lists a user writes use these names;
the default target list keeps matching real module names, so its meaning does not shift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import Tensor, nn

from fromzero.errors import FromzeroError

_REGEX_CHARS = set("*+?[](){}|^$\\")

# Conventional layer names (Llama/Mistral/Qwen, GPT-2, BERT, GPT-NeoX, T5) -> the roles they play.
# GPT-2 calls both the attention output and the MLP output c_proj, so it names two roles.
ALIASES: dict[str, tuple[str, ...]] = {
    "q_proj": ("q",), "query": ("q",), "q": ("q",),
    "k_proj": ("k",), "key": ("k",), "k": ("k",),
    "v_proj": ("v",), "value": ("v",), "v": ("v",),
    "c_attn": ("qkv",), "query_key_value": ("qkv",),
    "o_proj": ("o",), "out_proj": ("o",), "o": ("o",), "c_proj": ("o", "down"),
    "gate_proj": ("gate",), "wi_0": ("gate",),
    "up_proj": ("up",), "wi_1": ("up",), "c_fc": ("up",),
    "down_proj": ("down",), "wo": ("down",),
}


@dataclass
class Target:
    """A layer to wrap: `name` in the model, and for one slice of a fused layer the output rows of each part."""

    name: str
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)  # empty = the whole layer


def linear_dims(module: nn.Module) -> tuple[int, int, bool] | None:
    """(in_features, out_features, transposed) of a Linear or a GPT-2 style Conv1D, else None.

    transformers' Conv1D is a Linear whose weight is stored [in, out] (so transposed=True);
    it is recognised by name so this file does not import transformers.
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, Tensor) and weight.dim() == 2:
        return weight.shape[0], weight.shape[1], True
    return None


def is_wrappable(module: nn.Module) -> bool:
    return linear_dims(module) is not None or isinstance(module, nn.Embedding)


def abbreviate(names: list[str]) -> str:
    """'h.0.attn.c_attn, h.1.attn.c_attn, ...' -> 'h.{0..1}.attn.c_attn': numbered layers collapsed."""
    groups: dict[str, list[tuple[int, ...]]] = {}
    for name in names:
        parts = name.split(".")
        key = ".".join("{}" if p.isdigit() else p.replace("{", "{{").replace("}", "}}") for p in parts)
        groups.setdefault(key, []).append(tuple(int(p) for p in parts if p.isdigit()))

    def fmt(values: list[int]) -> str:
        vs = sorted(set(values))
        if len(vs) == 1:
            return str(vs[0])
        if vs == list(range(vs[0], vs[-1] + 1)):
            return f"{{{vs[0]}..{vs[-1]}}}"
        return "{" + ",".join(map(str, vs)) + "}"

    out = []
    for key, idx in groups.items():
        cols = [fmt([t[j] for t in idx]) for j in range(len(idx[0]))]
        out.append(key.format(*cols))
    return ", ".join(out)


def describe_layers(model: nn.Module) -> str:
    """The model's Linear/Conv1D/Embedding modules, abbreviated, with their types (and the usual
    names its fused layers answer to)."""
    by_type: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if name and is_wrappable(m):
            by_type.setdefault(type(m).__name__, []).append(name)
    text = "; ".join(f"{abbreviate(names)} ({t})" for t, names in by_type.items()) or "(none)"
    aliases = sorted({v[2] for v in _virtual_names(model)})
    return text + (f"; fused layers also answer to {', '.join(aliases)}" if aliases else "")


def matches(pattern: str, name: str) -> bool:
    if _REGEX_CHARS & set(pattern):
        return re.fullmatch(pattern, name) is not None
    return name == pattern or name.endswith("." + pattern)


def _virtual_names(model: nn.Module) -> list[tuple[str, str, str, str, tuple[int, int] | None]]:
    """(virtual name, child's full name, alias, role, rows) for every alias of every module with target_parts."""
    out = []
    for path, m in model.named_modules():
        parts_of = getattr(m, "target_parts", None)
        if not callable(parts_of):
            continue
        roles = parts_of()
        for alias, alias_roles in ALIASES.items():
            for role in alias_roles:
                if role in roles:
                    child, rows = roles[role]
                    prefix = f"{path}." if path else ""
                    out.append((f"{prefix}{alias}", f"{prefix}{child}", alias, role, rows))
    return out


def find_targets(model: nn.Module, targets: list[str], strict: bool = True, method: str = "lora",
                 slices: bool = True) -> list[Target]:
    """The layers `targets` select, in the order first matched.

    strict (a list the user wrote): every entry must match something, only wrappable layers, and
    the usual names of fused layers count (see the module docstring); `slices=False` (a method that
    can only wrap whole layers) refuses an entry naming one slice of a fused layer.
    Not strict (the default list): real names only; unknown names and non-layer matches are
    skipped, but the list as a whole must still match at least one layer.
    """
    modules = [(n, m) for n, m in model.named_modules() if n]
    cls = type(model).__name__
    parents = dict(model.named_modules())
    virtual = _virtual_names(model) if strict else []
    whole: list[str] = []
    parts: dict[str, dict[str, tuple[int, int]]] = {}
    for target in targets:
        hits = [(n, m) for n, m in modules if matches(target, n)]
        aliased = [(child, alias, role, rows) for v, child, alias, role, rows in virtual if matches(target, v)]
        if strict and not hits and not aliased:
            raise FromzeroError(
                f"target_modules entry '{target}' matches no module of {cls} (typo?); its layers are: "
                f"{describe_layers(model)}. Use names (or suffixes) from that list"
            )
        for name, m in hits:
            if not is_wrappable(m):
                if not strict:
                    continue
                inside = [f"{name}.{n}" for n, c in m.named_modules() if n and is_wrappable(c)][:4]
                hint = f" - target the layers inside it instead, e.g. {abbreviate(inside)}" if inside else ""
                raise FromzeroError(
                    f"target_modules entry '{target}' matches '{name}' of type {type(m).__name__}; {method} can only "
                    f"wrap Linear, Conv1D or Embedding layers{hint}"
                )
            parent = parents[name.rsplit(".", 1)[0]] if "." in name else model
            if isinstance(parent, nn.MultiheadAttention):
                raise FromzeroError(f"'{name}' lives in an nn.MultiheadAttention, which reads its weights directly "
                                    f"instead of calling the layer, so {method} cannot wrap it; target other layers")
            if name not in whole:
                whole.append(name)
        for child, alias, role, rows in aliased:
            if rows is None:
                if child not in whole:
                    whole.append(child)
            elif not slices:
                raise FromzeroError(
                    f"target_modules entry '{target}' names the {role} slice of the fused layer '{child}'; {method} "
                    f"wraps whole layers: target '{child.rsplit('.', 1)[-1]}' (the whole fused layer), or use "
                    "method: lora, which adapts single slices"
                )
            else:
                parts.setdefault(child, {})[role] = rows
    chosen = [Target(n) for n in whole]
    # A whole layer already carries its slices. Parts are keyed by role (q, not q_proj or query), so
    # the adapter's tensor names do not depend on which project's names the config used.
    chosen += [Target(n, dict(sorted(p.items(), key=lambda kv: kv[1]))) for n, p in parts.items() if n not in whole]
    if not chosen:
        raise FromzeroError(
            f"target_modules {list(targets)} match no Linear/Conv1D/Embedding layer of {cls}; its layers are: "
            f"{describe_layers(model)}. Set peft.target_modules to names from that list (a suffix such as "
            f"'attn.qkv' is enough)"
        )
    return chosen


def find_saved_modules(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the modules `modules_to_save` entries select (any module with weights)."""
    names = []
    for pattern in patterns:
        hits = [n for n, m in model.named_modules() if n and matches(pattern, n)]
        if not hits:
            with_params = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
            raise FromzeroError(f"modules_to_save entry '{pattern}' matches no module of {type(model).__name__}; "
                                f"modules with weights: {abbreviate(with_params)}")
        names += [n for n in hits if n not in names]
    return names


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
