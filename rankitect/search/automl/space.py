"""The joint search space: an architecture space's decisions followed by hyper-parameter ones.

`JointSpace` exposes the `SearchSpace` decision interface (``decisions``, ``active``,
``decode``, ``values``, ``encode``, ``sample``, ``flops``) over the concatenated decision
list, so the sampling package's `NeuralPredictor`, `CategoricalPolicy` and `RLSampler` work on
it unchanged. A point of the space is a `JointConfig`: an `Arch` plus a hyper-parameter dict.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rankitect.space import load_space
from rankitect.space.arch import Arch
from rankitect.space.space import Decision, DecisionSpace, SearchSpace

# Every hyper-parameter a trial trains with; a name missing from the searched ``hparams``
# block takes its value from ``defaults`` (embedding_dim: the architecture space's own).
HPARAMS = ("lr", "batch_size", "weight_decay", "emb_l2", "embedding_dim", "dropout")
DEFAULTS = {"lr": 1e-3, "batch_size": 4096, "weight_decay": 0.0, "emb_l2": 0.0, "dropout": 0.0}
_INT_HPARAMS = ("batch_size", "embedding_dim")


@dataclass(frozen=True)
class JointConfig:
    """One trial's configuration: the architecture and its (searched) hyper-parameters."""

    arch: Arch
    hparams: tuple[tuple[str, Any], ...] = ()

    @property
    def hparam_dict(self) -> dict[str, Any]:
        return dict(self.hparams)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "hparams": self.hparam_dict}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JointConfig:
        if not isinstance(d, Mapping) or set(d) != {"arch", "hparams"}:
            raise ValueError("a JointConfig document is an object with 'arch' and 'hparams'")
        return cls(Arch.from_dict(d["arch"]), tuple(sorted(dict(d["hparams"]).items())))

    @classmethod
    def from_json(cls, text: str) -> JointConfig:
        return cls.from_dict(json.loads(text))


def check_hparams(hparams: Mapping[str, Any] | None, key: str = "method.hparams") -> dict:
    """``name -> options`` validated: known names, non-empty lists of distinct numbers."""
    out: dict[str, tuple] = {}
    for name, options in dict(hparams or {}).items():
        if name not in HPARAMS:
            raise ValueError(f"{key}.{name}: unknown hyper-parameter; known: {list(HPARAMS)}")
        if isinstance(options, str | bytes) or not isinstance(options, Sequence):
            raise ValueError(f"{key}.{name}: expected a list of options, got {options!r}")
        if not options:
            raise ValueError(f"{key}.{name}: the option list is empty")
        cast = int if name in _INT_HPARAMS else float
        try:
            values = tuple(cast(v) for v in options)
        except (TypeError, ValueError):
            raise ValueError(f"{key}.{name}: options must be numbers, got {options!r}") from None
        if len(set(values)) != len(values):
            raise ValueError(f"{key}.{name}: duplicate options {list(values)}")
        out[name] = values
    return out


class JointSpace(DecisionSpace):
    """An architecture space (the config of any shipped or user space) + hyper-parameters.

    The hyper-parameters are extra unconditional decisions after the architecture's, so the
    decision interface (`active`, `encode`, `priors`, ...) is `DecisionSpace`'s.

    Args:
        space_cfg: the ``search_space`` config mapping (as `load_space` takes it).
        feature_spec: the data's feature spec.
        hparams: ``name -> options`` (names from `HPARAMS`); may be empty (architecture only).
        defaults: values of the hyper-parameters not searched (over `DEFAULTS`).
    """

    def __init__(
        self,
        space_cfg: Mapping[str, Any],
        feature_spec: Any,
        hparams: Mapping[str, Sequence[Any]] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.space_cfg = dict(space_cfg)
        self.feature_spec = feature_spec
        self.hparams = check_hparams(hparams)
        unknown = set(defaults or {}) - set(HPARAMS)
        if unknown:
            raise ValueError(
                f"method.fixed.{sorted(unknown)[0]}: unknown hyper-parameter; "
                f"known: {list(HPARAMS)}"
            )
        self.base = load_space(self.space_cfg, feature_spec)
        self.defaults = {**DEFAULTS, "embedding_dim": self.base.embedding_dim, **(defaults or {})}
        self._spaces: dict[int, SearchSpace] = {self.base.embedding_dim: self.base}
        for d in self.hparams.get("embedding_dim", ()):
            self.space_for(d)  # fail now on an embedding dim the space cannot take
        self.num_arch_decisions = self.base.num_decisions
        self.decisions: tuple[Decision, ...] = self.base.decisions + tuple(
            Decision(
                name=f"hp.{name}",
                choice=-1,
                kind="hparam",
                labels=opts,
                prior=tuple(1.0 / len(opts) for _ in opts),
            )
            for name, opts in self.hparams.items()
        )
        self.name = self.base.name

    def space_for(self, embedding_dim: int) -> SearchSpace:
        """The architecture space rebuilt with ``embedding_dim`` (cached); its decisions must
        be those of the base space, so one `Arch` means the same in every rebuild."""
        d = int(embedding_dim)
        if d not in self._spaces:
            space = load_space({**self.space_cfg, "embedding_dim": d}, self.feature_spec)
            same = [(x.name, x.labels) for x in space.decisions] == [
                (x.name, x.labels) for x in self.base.decisions
            ]
            if not same:
                raise ValueError(
                    f"method.hparams.embedding_dim: {d} changes the decisions of space "
                    f"{self.base.name!r}; this space cannot search its embedding dimension"
                )
            self._spaces[d] = space
        return self._spaces[d]

    # ---- the decision interface ---------------------------------------------------------------

    @property
    def log10_size(self) -> float:
        return self.base.log10_size + sum(math.log10(len(o)) for o in self.hparams.values())

    def validate(self, config: JointConfig) -> JointConfig:
        self.base.validate(config.arch)
        hp = config.hparam_dict
        if set(hp) != set(self.hparams):
            raise ValueError(
                f"hyper-parameters {sorted(hp)} do not match the searched {sorted(self.hparams)}"
            )
        for name, v in hp.items():
            if v not in self.hparams[name]:
                raise ValueError(f"hparams.{name}: {v} is not an option: {self.hparams[name]}")
        return config

    def decode(self, values: Sequence[int] | torch.Tensor) -> JointConfig:
        vals = [int(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
        if len(vals) != self.num_decisions:
            raise ValueError(f"expected {self.num_decisions} decision values, got {len(vals)}")
        n = self.num_arch_decisions
        arch = self.base.decode(vals[:n])
        hp = []
        for (name, opts), v in zip(self.hparams.items(), vals[n:], strict=True):
            if not 0 <= v < len(opts):
                raise ValueError(f"decision hp.{name}: value {v} outside 0..{len(opts) - 1}")
            hp.append((name, opts[v]))
        return JointConfig(arch, tuple(sorted(hp)))

    def values(self, config: JointConfig) -> torch.Tensor:
        self.validate(config)
        hp = config.hparam_dict
        extra = [self.hparams[name].index(hp[name]) for name in self.hparams]
        return torch.cat([self.base.values(config.arch), torch.tensor(extra, dtype=torch.long)])

    def sample_values(self, generator: torch.Generator, n: int | None = None) -> torch.Tensor:
        # the architecture part exactly as the base space draws it, then uniform hyper-parameters
        arch = self.base.sample_values(generator, 1 if n is None else n)
        cards = torch.tensor([len(o) for o in self.hparams.values()], dtype=torch.float64)
        u = torch.rand((arch.shape[0], len(cards)), generator=generator, dtype=torch.float64)
        hp = (u * cards).long().clamp_max((cards - 1).long())
        vals = torch.cat([arch, hp], dim=1)
        return vals[0] if n is None else vals

    def sample(self, generator: torch.Generator) -> JointConfig:
        return self.decode(self.sample_values(generator))

    # ---- what a trial trains ------------------------------------------------------------------

    def resolve(self, config: JointConfig) -> dict[str, Any]:
        """Every hyper-parameter of `HPARAMS` for ``config``: searched values over defaults."""
        return {**self.defaults, **config.hparam_dict}

    def arch_space(self, config: JointConfig) -> SearchSpace:
        """The architecture space at ``config``'s embedding dimension."""
        return self.space_for(self.resolve(config)["embedding_dim"])

    def flops(self, config: JointConfig) -> int:
        return self.arch_space(config).flops(config.arch)

    def params(self, config: JointConfig) -> int:
        return self.arch_space(config).params(config.arch)

    def space_config(self, config: JointConfig) -> dict[str, Any]:
        """The ``search_space`` config the retrained model needs (its embedding dimension)."""
        return {**self.space_cfg, "embedding_dim": int(self.resolve(config)["embedding_dim"])}


def model_key(config: JointConfig) -> str:
    """Identity of the model a trial trains: the Choices reachable from the classifier and
    the hyper-parameters. Architectures differing only in unreachable Choices build the same
    model from the same seed (the same NE), so they are one trial, not several."""
    arch = config.arch
    doc = {
        "choices": {str(c): arch.choices[c].to_dict() for c in arch.reachable()},
        "hparams": config.hparam_dict,
    }
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()
