"""Optimizers, running on whatever device the parameters live, as multi-tensor kernels.

An optimizer updates a dict of parameter arrays (keys like "0.W") in place from a dict of gradients with the
same keys, with torch.optim's update rules. Its state lives on the parameters' device, in one flat buffer per
field (``exp_avg``, ...) whose views are each parameter's state, made at the first update; step counts and
bias corrections stay on the host and reach the kernels as scalars, so an update never syncs with the device
and uploads nothing. Parameters made flat by :meth:`gpucnn.layers.Layer.flatten_parameters` (their gradients
too) are updated by one kernel launch per parameter group (kernels/optim.cu); others by one launch each. On
the CPU the same updates run as the kernels' numpy twins (:mod:`gpucnn.devices.step_twins`) over cache-sized
blocks. Parameter groups (``groups=``, see :mod:`.groups`) give some parameters their own hyper-parameters.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .. import devices
from ..devices import flat, ops
from . import groups as _groups

# ----------------------------------------------------------------------------------------- validation


def _real(owner, name, value, lo=0.0, hi=None, hi_open=False, lo_open=False):
    """`value` as a Python float, or a TypeError/ValueError naming `owner` and the parameter."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    v = float(value)
    too_low = v <= lo if lo_open else v < lo
    too_high = hi is not None and (v >= hi if hi_open else v > hi)
    if math.isnan(v) or too_low or too_high:
        lo_b = "(" if lo_open else "["
        hi_b = (")" if hi_open else "]") if hi is not None else ")"
        raise ValueError(f"{owner}: {name} must be in {lo_b}{lo:g}, {'inf' if hi is None else f'{hi:g}'}{hi_b}, "
                         f"got {value!r}")
    return v


def _plain(value):
    """A state-dict value as plain Python (np.load gives 0-d arrays for scalars and strings)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


# ----------------------------------------------------------------------------------------- optimizers

class Optimizer:
    """Base class: `update(params, grads)` applies one step to every parameter, in place.

    Subclasses list their hyper-parameters in `hparams` (constructor argument names, also attributes) and
    implement `_state_fields()` (names of the per-parameter arrays), `_apply(p, g, state, lr, step)` (one
    launch of their rule's kernel, or its twin, over same-size arrays: a flat range of parameters or one
    parameter, with `self`'s hyper-parameters) and, when zeros are not the start, `_initial_value(field)`;
    their constructors end with ``self._set_groups(groups)``.

    ``groups``: a list of ``{"params": names or rule(name, param) -> bool, **hyper-parameters}`` (see
    :mod:`gpucnn.optim.groups`); a group's rate is ``lr_scale`` (default 1) times ``lr``, which schedules set.
    """

    hparams: tuple[str, ...] = ()

    def __init__(self):
        self._state = {}      # param name -> {"step": host int, field -> array on the param's device}
        self._shapes = {}     # param name -> shape the state was made for
        self._pending = False  # state was loaded and is still on the host, not yet matched with params
        self._groups = []     # [(names or rule, overrides)]
        self._members = None  # after resolve(): param name -> group index (absent: the optimizer's own)
        self._group_cache = (None, [])
        self._flat_state = {}  # field -> FlatArrays holding every parameter's state array of that field

    def _set_groups(self, groups):
        """Validate and keep the parameter groups (the overrides are checked by building each group's optimizer)."""
        self._groups = _groups.check_groups(self.kind, groups, self.hparams)
        self._group_optimizers()

    def _own_hparams(self) -> dict:
        return {k: getattr(self, k) for k in self.hparams}

    def _group_optimizers(self) -> list:
        """One optimizer per group holding that group's hyper-parameters (rebuilt when this one's change)."""
        key = tuple(repr(getattr(self, k)) for k in self.hparams if k != "lr")
        if self._group_cache[0] == key and len(self._group_cache[1]) == len(self._groups):
            return self._group_cache[1]
        built = []
        for i, (_, overrides) in enumerate(self._groups):
            hp = {k: v for k, v in overrides.items() if k != "lr_scale"}
            try:
                opt = type(self)(**{**self._own_hparams(), **hp})
            except (TypeError, ValueError) as e:
                raise type(e)(f"{self.kind}: group {i}: {e}") from None
            if opt._state_fields() != self._state_fields():
                changed = sorted(opt._state_fields() ^ self._state_fields())
                raise ValueError(f"{self.kind}: group {i} sets {', '.join(sorted(overrides))}, which changes the "
                                 f"optimizer's state arrays ({', '.join(changed)}): set it for the whole optimizer")
            built.append(opt)
        self._group_cache = (key, built)
        return built

    @property
    def groups(self) -> list[dict]:
        """The groups as given, resolved to parameter names once :meth:`resolve` (or an update) has run."""
        return [{"params": select, **overrides} for select, overrides in self._groups]

    def resolve(self, params: dict):
        """Assign every parameter to its group, once (the first update does it otherwise); returns self."""
        members = _groups.resolve(self.kind, self._groups, params)
        self._members = {name: i for i, names in enumerate(members) for name in names}
        self._resolved_for = set(params)
        self._groups = [(names, overrides) for names, (_, overrides) in zip(members, self._groups)]
        return self

    def _config_for(self, name):
        """(the optimizer whose hyper-parameters `name` uses, the rate factor of its group)."""
        i = self._members.get(name) if self._members else None
        if i is None:
            return self, 1.0
        return self._group_optimizers()[i], self._groups[i][1].get("lr_scale", 1.0)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def __repr__(self):
        return f"{self.kind}({', '.join(f'{k}={getattr(self, k)!r}' for k in self.hparams)})"

    def _state_fields(self) -> set:
        raise NotImplementedError

    def _apply(self, p, g, state, lr, step):
        raise NotImplementedError

    def _initial_value(self, field) -> float:
        """What a state array starts as (0 unless the rule says otherwise)."""
        return 0.0

    def flat_order(self, params: dict) -> list:
        """The parameter names in the order to lay them out flat (:meth:`Layer.flatten_parameters`): each
        group's parameters together (in the order of `params`), so that an update takes one launch per group."""
        if self._groups and self._members is None:
            self.resolve(params)
        members = self._members or {}
        return sorted(params, key=lambda n: members.get(n, len(self._groups)))

    def update(self, params: dict, grads: dict):
        """One optimisation step: every array in `params` is updated in place from `grads[name]`.

        Parameters in one flat buffer (:meth:`Layer.flatten_parameters`) with their gradients in another are
        updated by one kernel launch per run of consecutive parameters sharing a group and a step count (one
        per group in a training run); other parameters by one launch each.
        """
        if self._pending:
            self._adopt(params)
        if self._groups:
            if self._members is None:
                self.resolve(params)
            elif set(params) != self._resolved_for:
                raise ValueError(f"{self.kind}.update: the parameter groups were resolved against "
                                 f"{sorted(self._resolved_for)}, got {sorted(params)}; build a new optimizer "
                                 f"for a changed model")
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                raise ValueError(f"{self.kind}.update: no gradient for parameter {name!r} "
                                 f"(gradients given for {sorted(grads)})")
            if g.shape != p.shape:
                raise ValueError(f"{self.kind}.update: parameter {name!r} has shape {tuple(p.shape)}, "
                                 f"its gradient has shape {tuple(g.shape)}")
            devices.get_array_module(p, g)   # one device, or DeviceMismatchError
        flat_params, flat_grads = flat.owner(params), flat.owner(grads)
        together = flat_params is not None and flat_grads is not None and flat_grads.names == flat_params.names
        order = flat_params.names if together else list(params)
        for name in order:
            if name not in self._state:
                self._state[name], self._shapes[name] = {"step": 0}, tuple(params[name].shape)
            self._state[name]["step"] += 1
        self._lay_out_state(params, order)
        lr = float(self.lr)
        for names in self._runs(order, together):
            opt, factor = self._config_for(names[0])
            step = self._state[names[0]]["step"]
            if together:
                a, b = flat_params.offsets[names[0]][0], flat_params.offsets[names[-1]][1]
                with devices.device_scope(flat_params.buffer):
                    p, g = flat_params.buffer[a:b], flat_grads.buffer[a:b]
                    state = {f: fa.buffer[a:b] for f, fa in self._flat_state.items()}
            else:
                st = self._state[names[0]]
                p, g, state = params[names[0]], grads[names[0]], {f: st[f] for f in self._state_fields()}
            opt._apply(p, g, state, lr * factor, step)

    def _runs(self, order, together):
        """The parameter names of each launch: runs of consecutive names of one group and step count when the
        arrays are flat, else one name each."""
        if not together:
            return [[n] for n in order]
        members, runs, last = self._members or {}, [], None
        for n in order:
            key = (members.get(n), self._state[n]["step"])
            if key != last:
                runs.append([])
                last = key
            runs[-1].append(n)
        return runs

    def _lay_out_state(self, params, order):
        """Make every parameter's state arrays views of one flat buffer per field, laid out in `order` (the
        parameters' own when they are flat), keeping values already held (a loaded checkpoint, an earlier
        layout) and starting the others at _initial_value: device work once, not per step. Parameters of
        several dtypes or devices keep one array per parameter instead."""
        fields = sorted(self._state_fields())
        current = self._flat_state
        if not fields or (set(current) == set(fields) and all(
                current[f].names == order and all(self._state[n].get(f) is current[f].views[n] for n in order)
                for f in fields)):
            return
        try:
            made = {f: flat.FlatArrays.full({n: params[n] for n in order}, 0) for f in fields}
        except ValueError:
            made = None
        for n in order:
            st, opt = self._state[n], self._config_for(n)[0]
            for f in fields:
                old, start = st.get(f), opt._initial_value(f)
                xp = devices.get_array_module(params[n])
                with devices.device_scope(params[n]):
                    if made is None:
                        st[f] = old if old is not None else xp.full_like(params[n], start)
                    elif old is not None:
                        made[f].views[n][...] = old
                    elif start:
                        made[f].views[n][...] = start
        self._flat_state = made or {}
        for f, fa in self._flat_state.items():
            for n in order:
                self._state[n][f] = fa.views[n]

    # ------------------------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """A flat dict of plain Python values and host numpy arrays: `np.savez(f, **opt.state_dict())` works.

        Keys: "optimizer" (class name), "hparams/<name>", with groups "groups/<i>/params" (names, in the
        parameters' order) and "groups/<i>/<hyper-parameter>", then per parameter (in the order of the first
        update) "state/<param>/step", "state/<param>/shape" and "state/<param>/<field>" (arrays copied to the
        host, fields in name order): the same run gives the same dict in the same order.
        ValueError when groups were given as rules and not yet resolved (no update nor resolve() yet).
        """
        d = {"optimizer": self.kind}
        for k in self.hparams:
            v = getattr(self, k)
            d[f"hparams/{k}"] = list(v) if isinstance(v, tuple) else v
        if self._groups:
            if self._members is None and any(callable(select) for select, _ in self._groups):
                raise ValueError(f"{self.kind}.state_dict: the parameter groups are rules, resolved against the "
                                 f"parameters at the first update; call resolve(params) or update() first")
            d.update(_groups.encode(self._groups, [list(select) for select, _ in self._groups]))
        for name, st in self._state.items():
            d[f"state/{name}/step"] = st["step"]
            d[f"state/{name}/shape"] = list(self._shapes[name])
            for field in sorted(f for f in st if f != "step"):
                d[f"state/{name}/{field}"] = np.array(devices.to_cpu(st[field]), copy=True)
        return d

    def load_state_dict(self, d: dict, params: dict | None = None):
        """Restore hyper-parameters and state from `state_dict()` output (or `dict(np.load(f))`).

        The state moves to each parameter's device (and dtype) at the next update, where names and shapes are
        checked against the parameters; pass `params` to check and move now instead.
        """
        where = f"{self.kind}.load_state_dict"
        got = _plain(d.get("optimizer"))
        if got != self.kind:
            what = "a dict without an 'optimizer' entry" if got is None else f"one saved by {got}"
            raise ValueError(f"{where}: expected a state dict saved by {self.kind}, got {what}")
        hp = {}
        for k in self.hparams:
            if f"hparams/{k}" not in d:
                raise ValueError(f"{where}: hyper-parameter {k!r} is missing from the state dict")
            hp[k] = _plain(d[f"hparams/{k}"])
        saved_groups = _groups.decode(where, d, _plain)
        fresh = type(self)(**hp, groups=saved_groups)  # validates the saved hyper-parameters and groups
        expected = fresh._state_fields()

        state, shapes = {}, {}
        for key, value in d.items():
            if key == "optimizer" or key.startswith(("hparams/", "groups/")):
                continue
            if not key.startswith("state/") or key.count("/") < 2:
                raise ValueError(f"{where}: unexpected entry {key!r} in the state dict")
            name, field = key[len("state/"):].rsplit("/", 1)
            entry = state.setdefault(name, {})
            if field == "step":
                entry["step"] = int(_plain(value))
            elif field == "shape":
                shapes[name] = tuple(int(s) for s in _plain(value))
            else:
                entry[field] = np.array(value, copy=True)
        for name, entry in state.items():
            if "step" not in entry or name not in shapes:
                raise ValueError(f"{where}: state of parameter {name!r} lacks its step count or shape")
            fields = set(entry) - {"step"}
            if entry["step"] > 0 and fields != expected:
                raise ValueError(f"{where}: state of parameter {name!r} should hold {sorted(expected)} for "
                                 f"{fresh!r}, got {sorted(fields)}")
            for field in fields:
                if entry[field].shape != shapes[name]:
                    raise ValueError(f"{where}: state {field!r} of parameter {name!r} has shape "
                                     f"{entry[field].shape}, expected {shapes[name]}")

        for k in self.hparams:
            setattr(self, k, getattr(fresh, k))
        if saved_groups is not None:   # the saved groups, as name lists, replace the ones given
            self._groups, self._group_cache = fresh._groups, (None, [])
            self._members = None    # resolved (checked against the parameters) at the next update
        self._state, self._shapes, self._pending = state, shapes, bool(state)
        if params is not None and self._pending:
            self._adopt(params)

    def _adopt(self, params):
        """Check loaded state against the parameters and move it to their devices and dtypes."""
        where = f"{self.kind}.load_state_dict"
        saved, given = set(self._state), set(params)
        if saved != given:
            raise ValueError(f"{where}: the saved state is for parameters {sorted(saved)}, the model has "
                             f"{sorted(given)} (missing from the model: {sorted(saved - given)}; "
                             f"without saved state: {sorted(given - saved)})")
        for name, p in params.items():
            if self._shapes[name] != tuple(p.shape):
                raise ValueError(f"{where}: parameter {name!r} has shape {tuple(p.shape)}, the saved state "
                                 f"is for shape {self._shapes[name]}")
        device = {name: devices.device_of(p) for name, p in params.items()}
        for name, st in self._state.items():
            for field, arr in st.items():
                if field != "step":
                    arr = devices.to_device(arr.astype(params[name].dtype, copy=False), device[name])
                    st[field] = arr
        self._pending = False


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay, as torch.optim.SGD."""

    hparams = ("lr", "momentum", "nesterov", "weight_decay", "dampening")

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0, groups=None):
        super().__init__()
        self.lr = _real("SGD", "lr", lr)
        self.momentum = _real("SGD", "momentum", momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = _real("SGD", "weight_decay", weight_decay)
        self.dampening = _real("SGD", "dampening", dampening, hi=1.0)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"SGD: nesterov=True needs momentum > 0 and dampening = 0, "
                             f"got momentum={self.momentum}, dampening={self.dampening}")
        self._set_groups(groups)

    def _state_fields(self):
        return {"momentum_buffer"} if self.momentum else set()

    def _apply(self, p, g, state, lr, step):
        ops.sgd_step(p, g, state.get("momentum_buffer"), lr, self.weight_decay, self.momentum, step == 1,
                     self.dampening, self.nesterov)   # torch starts the buffer at the first gradient, undamped


class AdaGrad(Optimizer):
    """Per-coordinate rates from the sum of squared gradients, as torch.optim.Adagrad."""

    hparams = ("lr", "eps", "weight_decay", "initial_accumulator_value", "lr_decay")

    def __init__(self, lr=0.01, eps=1e-10, weight_decay=0.0, initial_accumulator_value=0.0, lr_decay=0.0,
                 groups=None):
        super().__init__()
        self.lr = _real("AdaGrad", "lr", lr)
        self.eps = _real("AdaGrad", "eps", eps)
        self.weight_decay = _real("AdaGrad", "weight_decay", weight_decay)
        self.initial_accumulator_value = _real("AdaGrad", "initial_accumulator_value", initial_accumulator_value)
        self.lr_decay = _real("AdaGrad", "lr_decay", lr_decay)
        self._set_groups(groups)

    def _state_fields(self):
        return {"sum"}

    def _initial_value(self, field):
        return self.initial_accumulator_value

    def _apply(self, p, g, state, lr, step):
        ops.adagrad_step(p, g, state["sum"], lr / (1.0 + (step - 1) * self.lr_decay), self.weight_decay, self.eps)


class RMSprop(Optimizer):
    """Rates from a running mean of squared gradients, optionally centred and with momentum, as torch.optim.RMSprop."""

    hparams = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 groups=None):
        super().__init__()
        self.lr = _real("RMSprop", "lr", lr)
        self.alpha = _real("RMSprop", "alpha", alpha, hi=1.0)
        self.eps = _real("RMSprop", "eps", eps)
        self.weight_decay = _real("RMSprop", "weight_decay", weight_decay)
        self.momentum = _real("RMSprop", "momentum", momentum)
        self.centered = bool(centered)
        self._set_groups(groups)

    def _state_fields(self):
        return {"square_avg"} | ({"momentum_buffer"} if self.momentum else set()) | (
            {"grad_avg"} if self.centered else set())

    def _apply(self, p, g, state, lr, step):
        ops.rmsprop_step(p, g, state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer"), lr,
                         self.weight_decay, self.alpha, self.eps, self.centered, self.momentum)


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient and optional AMSGrad, as torch.optim.Adam."""

    hparams = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    decoupled_weight_decay = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, groups=None):
        super().__init__()
        kind = self.kind
        self.lr = _real(kind, "lr", lr)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"{kind}: betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_real(kind, "betas[0]", b1, hi=1.0, hi_open=True),
                      _real(kind, "betas[1]", b2, hi=1.0, hi_open=True))
        self.eps = _real(kind, "eps", eps)
        self.weight_decay = _real(kind, "weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)
        self._set_groups(groups)

    def _state_fields(self):
        return {"exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if self.amsgrad else set())

    def _apply(self, p, g, state, lr, step):
        ops.adam_step(p, g, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"), lr, self.weight_decay,
                      self.decoupled_weight_decay, self.betas, self.eps, self.amsgrad, step)


class AdamW(Adam):
    """Adam with decoupled weight decay (parameters shrink by lr * weight_decay each step), as torch.optim.AdamW."""

    decoupled_weight_decay = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, groups=None):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, groups=groups)


_OPTIMIZERS = {
    "sgd": (SGD, {}),
    "momentum": (SGD, {"momentum": 0.9}),
    "nesterov": (SGD, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (AdaGrad, {}),
    "rmsprop": (RMSprop, {}),
    "adam": (Adam, {}),
    "adamw": (AdamW, {}),
}


def names() -> list[str]:
    """Optimizer names accepted by get() (and the CLI)."""
    return list(_OPTIMIZERS)


def get(name: str, **kw) -> Optimizer:
    """An optimizer by name; keyword arguments set to None keep the optimizer's defaults."""
    key = str(name).strip().lower()
    if key not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(_OPTIMIZERS)}")
    cls, defaults = _OPTIMIZERS[key]
    return cls(**{**defaults, **{k: v for k, v in kw.items() if v is not None}})
