"""Parameter groups: hyper-parameters that apply to some parameters only (torch.optim's ``param_groups``).

A group is a dict ``{"params": SELECT, **overrides}`` where SELECT is a list of parameter names ("0.b",
"3.gamma") or a rule ``rule(name, param) -> bool``, and the overrides are ``lr_scale`` (the group's rate is
``lr_scale * lr``, so that a schedule, which sets ``lr``, moves every group's rate alike) and any of the
optimizer's other hyper-parameters that keep its state layout (``weight_decay``, ``betas``, ``eps``, ...; not
``amsgrad`` or ``centered``, which add state arrays). The groups are resolved once, against the parameters of the first
update (or :meth:`Optimizer.resolve`), into fixed lists of names in the parameters' order: the first group that
selects a parameter takes it, the others keep the optimizer's own hyper-parameters. Fixed name lists are what a
checkpoint stores (a rule cannot be saved) and what flat multi-tensor buffers need.
"""
from __future__ import annotations

from typing import Callable


def no_weight_decay(name: str, param) -> bool:
    """The trainer's rule for parameters kept out of weight decay: those with at most one dimension, i.e.
    biases and normalisation scales and shifts (BatchNorm's gamma and beta). Decaying them pulls a layer's
    offsets and scales towards 0, which regularises nothing useful (the convention of, e.g., the BERT and
    timm AdamW recipes and of Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 5.1).
    """
    return getattr(param, "ndim", 2) <= 1


def check_groups(owner: str, groups, hparams: tuple) -> list[tuple]:
    """The groups as a list of (select, overrides); TypeError/ValueError naming `owner` for a malformed one."""
    if groups is None:
        return []
    if isinstance(groups, dict) or not isinstance(groups, (list, tuple)):
        raise TypeError(f"{owner}: groups must be a list of dicts {{'params': names or rule, ...}}, "
                        f"got {type(groups).__name__}")
    out = []
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or "params" not in g:
            raise TypeError(f"{owner}: group {i} must be a dict with a 'params' entry (a list of parameter names "
                            f"or a rule(name, param) -> bool), got {g!r}")
        select = g["params"]
        if isinstance(select, str) or not (callable(select) or isinstance(select, (list, tuple))):
            raise TypeError(f"{owner}: group {i}'s 'params' must be a list of parameter names or a "
                            f"rule(name, param) -> bool, got {select!r}")
        if not callable(select):
            select = [str(n) for n in select]
            if len(set(select)) != len(select):
                raise ValueError(f"{owner}: group {i} names a parameter twice: {select}")
        overrides = {k: v for k, v in g.items() if k != "params"}
        allowed = [k for k in hparams if k != "lr"] + ["lr_scale"]
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            hint = " (a group's rate is lr_scale * lr)" if "lr" in unknown else ""
            raise ValueError(f"{owner}: group {i} sets {', '.join(unknown)}, which a group of {owner} cannot "
                             f"set{hint}; it can set {', '.join(allowed)}")
        if "lr_scale" in overrides:
            scale = overrides["lr_scale"]
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0 or \
                    scale == float("inf"):
                raise ValueError(f"{owner}: group {i}'s lr_scale must be a finite number >= 0, got {scale!r}")
            overrides["lr_scale"] = float(scale)
        out.append((select, overrides))
    return out


def resolve(owner: str, groups: list[tuple], params: dict) -> list[list[str]]:
    """The names each group takes, in the order of `params`; the first group selecting a parameter wins.

    ValueError when a group lists a name that `params` lacks.
    """
    members: list[list[str]] = [[] for _ in groups]
    taken = set()
    for i, (select, _) in enumerate(groups):
        if callable(select):
            continue
        missing = [n for n in select if n not in params]
        if missing:
            raise ValueError(f"{owner}: group {i} names parameters the model does not have: {missing} "
                             f"(its parameters: {list(params)})")
    for name, p in params.items():
        for i, (select, _) in enumerate(groups):
            if (select(name, p) if callable(select) else name in select):
                members[i].append(name)
                taken.add(name)
                break
    return members


def encode(groups: list[tuple], members: list[list[str]]) -> dict:
    """Flat state-dict entries ``groups/<i>/params`` (names) and ``groups/<i>/<hyper-parameter>``."""
    d = {}
    for i, ((_, overrides), names) in enumerate(zip(groups, members)):
        d[f"groups/{i}/params"] = list(names)
        for k in sorted(overrides):
            v = overrides[k]
            d[f"groups/{i}/{k}"] = list(v) if isinstance(v, tuple) else v
    return d


def decode(owner: str, d: dict, plain: Callable) -> list[dict] | None:
    """The groups of a state dict as [{'params': names, **overrides}], or None when it has none."""
    entries = {k: v for k, v in d.items() if k.startswith("groups/")}
    if not entries:
        return None
    by_index: dict[int, dict] = {}
    for key, value in entries.items():
        parts = key.split("/")
        if len(parts) != 3 or not parts[1].isdigit():
            raise ValueError(f"{owner}: unexpected entry {key!r} in the state dict")
        by_index.setdefault(int(parts[1]), {})[parts[2]] = plain(value)
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{owner}: the state dict's groups are not numbered 0..{len(by_index) - 1}: "
                         f"{sorted(by_index)}")
    out = []
    for i in range(len(by_index)):
        g = by_index[i]
        if "params" not in g:
            raise ValueError(f"{owner}: group {i} of the state dict lacks its parameter names")
        names = g["params"]
        g["params"] = [str(n) for n in (names if isinstance(names, (list, tuple)) else [names])]
        for k, v in g.items():
            if isinstance(v, list) and k != "params":
                g[k] = tuple(v)
        out.append(g)
    return out
