"""The options of structured attention: one schema for every place that sets them.

:class:`StructureConfig` is the single definition of each option's name,
default, help text and range check.  fairseq's ``--struct-*`` flags
(:func:`add_arguments`), the Hydra ``model.*`` keys of ``structmt-run`` (the
pipeline's ``ModelSpec`` derives its fields from :func:`spec_fields`) and the
``--struct-*`` list the pipeline passes to ``fairseq-train``
(:func:`to_fairseq_args`) are all generated from it, and :meth:`StructureConfig.problems`
is the one place that checks the values, naming the option the way the user
wrote it (``--struct-window`` or ``model.window``).

Its code uses neither fairseq nor Hydra (importing it, as any ``structmt`` module, first
imports the package, which registers the model with fairseq).
"""

from __future__ import annotations

import argparse
import math
import numbers
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from .structure import CrossBand, Structure, parse_role_mix, parse_role_spec, roles_from_file

PREFIX = "struct_"
#: the kernels a structured block can run on (``choose_impl`` in functional.py picks for ``auto``)
IMPLS = ("auto", "reference", "efficient", "triton")
#: the attention blocks whose self-attention ``--struct-apply`` can structure
BLOCKS = ("encoder", "decoder")


def flag(name: str) -> str:
    """``struct_cross_window`` → ``--struct-cross-window``."""
    return "--" + name.replace("_", "-")


def short(name: str) -> str:
    """``struct_cross_window`` → ``cross_window`` (the pipeline's ``model.*`` key)."""
    return name.removeprefix(PREFIX)


@dataclass(frozen=True)
class Naming:
    """How a message names the options: fairseq's flags (the plugin's, whose roles option also takes the JSON
    itself) or structmt-run's ``model.*`` keys (whose ``model.heads_from`` takes a file)."""

    name: Callable[[str], str]
    json_roles: bool


FAIRSEQ_NAMES = Naming(flag, json_roles=True)
RUN_NAMES = Naming(lambda name: f"model.{short(name)}", json_roles=False)


def _option(default: Any, help: str, check: Callable[[Any], bool] | None = None, rule: str = "") -> Any:
    return field(default=default, metadata={"help": help, "check": check, "rule": rule})


@dataclass(frozen=True)
class StructureConfig:
    """Every structured-attention option, its default, help text and range."""

    struct_window: int = _option(3, "band half-width w of syntactic and rare heads", lambda v: v >= 0, "must be >= 0")
    struct_rare: int = _option(2, "number r of rare-token columns (rare heads)", lambda v: v >= 0, "must be >= 0")
    struct_heads: str = _option(
        "auto",
        "head role mix per layer, e.g. 'pos:1,syn:2,rare:1'; ';' separates per-layer mixes; "
        "'auto' = H/4 positional, max(1, H/4) rare (if r > 0), the rest syntactic",
    )
    struct_heads_from: str = _option(
        "",
        "JSON file with per-layer role mixes {'encoder': [...], 'decoder': [...]} "
        "(written by structmt-analyze as roles.json); overrides --struct-heads; the model stores the mixes "
        "themselves, so its checkpoints do not depend on the file",
    )
    struct_pos_window: int = _option(
        1, "band half-width of positional heads (0 = identity)", lambda v: v >= 0, "must be >= 0"
    )
    struct_error: str = _option(
        "none", "sparse error term: 'none' or 'sink:K' (the first K keys, each weight <= --struct-error-eps)"
    )
    struct_error_eps: float = _option(
        0.05, "weight bound of each error-term key", lambda v: 0.0 < v < 1.0, "must lie in (0, 1)"
    )
    struct_apply: str = _option("encoder,decoder", "attention blocks to structure: encoder,decoder")
    struct_cross_window: int = _option(
        -1,
        "structured cross-attention: target position i sees the source band |j - c(i)| <= W, "
        "c(i) = round(slope * i) counted from the first real source token and clamped to the last; "
        "-1 keeps cross-attention dense",
        lambda v: v >= -1,
        "must be >= 0, or -1 for dense cross-attention",
    )
    struct_cross_slope: float = _option(
        1.0,
        "slope of the cross-attention band's centre line: a fixed source/target length ratio (not the pair's "
        "own, which decoding does not know), e.g. 0.97 for the Multi30k en-de train set",
        lambda v: math.isfinite(v) and v > 0,
        "must be finite and > 0 (source/target length ratio)",
    )
    struct_impl: str = _option(
        "auto",
        "kernel: reference (dense mask; decoding steps attend over candidate keys, as efficient), efficient "
        "(candidate keys; C++ kernel for float32 CPU tensors without attention dropout, gathered keys "
        "elsewhere; never Triton), triton (candidate keys; Triton kernel on CUDA) or auto (triton on CUDA when "
        "Triton >= 3.2 is installed and the GPU is of compute capability 7.0 or newer, else efficient where the "
        "C++ kernel applies, otherwise efficient or "
        "reference by length)",
        lambda v: v in IMPLS,
        f"choose from {IMPLS}",
    )

    @classmethod
    def from_args(cls, args: Any) -> StructureConfig:
        """The options of a fairseq namespace (unset ones take their defaults)."""
        return cls(**{f.name: _value(args, f.name, f.default) for f in fields(cls)})

    def problems(self, name: Callable[[str], str] = lambda n: flag(n)) -> list[str]:
        """Every invalid value, one message each, naming the option with ``name(field_name)``."""
        bad = []
        for f in fields(self):
            value, check = getattr(self, f.name), f.metadata["check"]
            if check is not None and not check(value):
                bad.append(f"{name(f.name)}={value!r} {f.metadata['rule']}")
        try:
            sinks = self.error_term()[0]
        except ValueError as err:
            bad.append(f"{name('struct_error')}={self.struct_error!r} {err}")
        else:
            if sinks and not sinks * self.struct_error_eps < 1.0:
                bad.append(
                    f"{name('struct_error_eps')}={self.struct_error_eps!r}: sinks * eps must lie in (0, 1), "
                    f"got {sinks} * {self.struct_error_eps}"
                )
        try:
            self.blocks()
        except ValueError as err:
            bad.append(f"{name('struct_apply')}={self.struct_apply!r} {err}")
        if self.struct_heads != "auto" and not self.struct_heads_from:
            try:
                for mix in self.struct_heads.split(";"):
                    if mix.strip():
                        parse_role_spec(mix)
            except ValueError as err:
                bad.append(f"{name('struct_heads')}={self.struct_heads!r}: {err}")
        if self.struct_heads_from:
            try:
                for block in self.blocks():
                    roles_from_file(self.struct_heads_from, block)
            except ValueError as err:
                bad.append(f"{name('struct_heads_from')}={self.struct_heads_from!r}: {err}")
        return bad

    def validate(self, name: Callable[[str], str] = lambda n: flag(n)) -> StructureConfig:
        """Raise one ``ValueError`` listing every invalid value; return ``self`` when all are valid."""
        bad = self.problems(name)
        if bad:
            raise ValueError("invalid structured-attention options: " + "; ".join(bad))
        return self

    def error_term(self) -> tuple[int, float]:
        """``(sinks, eps)`` of ``--struct-error``: ``none`` → ``(0, 0.0)``, ``sink:K`` → ``(K, eps)``."""
        if self.struct_error == "none":
            return 0, 0.0
        kind, _, count = self.struct_error.partition(":")
        if kind != "sink" or not count.isdigit() or int(count) < 1:
            raise ValueError("must be 'none' or 'sink:K' with an integer K >= 1")
        return int(count), self.struct_error_eps

    def without_effect(self, roles: set[str]) -> list[str]:
        """The options set away from their default that change nothing in a model whose structured heads have
        ``roles`` (one message each, naming the option and why), and rare-token heads without a column."""
        unused = {
            "struct_window": ("syntactic" not in roles and "rare" not in roles, "no head is syntactic or rare"),
            # under --struct-heads auto, r = 0 is what leaves the rare heads out: an effect
            "struct_rare": ("rare" not in roles and self.explicit_roles(), "no head is rare"),
            "struct_pos_window": ("positional" not in roles, "no head is positional"),
            "struct_error_eps": (self.struct_error == "none", "there is no error term (--struct-error none)"),
            "struct_cross_slope": (self.struct_cross_window < 0, "cross-attention is dense (no --struct-cross-window)"),
            "struct_heads": (bool(self.struct_heads_from), "--struct-heads-from gives the heads' roles"),
        }
        notes = [
            f"{flag(f.name)}={getattr(self, f.name)!r} has no effect: {unused[f.name][1]}"
            for f in fields(self)
            if f.name in unused and unused[f.name][0] and getattr(self, f.name) != f.default
        ]
        if "rare" in roles and self.struct_rare == 0:  # the other way round: a role without effect
            notes.append(
                f"{flag('struct_rare')}=0: the rare-token heads have no rare column, so they attend as syntactic "
                f"heads (band w={self.struct_window}); set {flag('struct_rare')} above 0, or give them the syn role"
            )
        return notes

    def explicit_roles(self) -> bool:
        """Whether the heads' roles are given (``--struct-heads`` a mix, or ``--struct-heads-from``), not derived
        from r by ``auto``."""
        return self.struct_heads != "auto" or bool(self.struct_heads_from)

    def blocks(self) -> list[str]:
        """The attention blocks whose self-attention is structured."""
        blocks = [b.strip() for b in self.struct_apply.split(",") if b.strip()]
        unknown = [b for b in blocks if b not in BLOCKS]
        if not blocks:
            raise ValueError(
                f"names no attention block; choose one or both of {', '.join(BLOCKS)} (a model with none structured "
                "is the dense transformer: --arch transformer_…, structmt-run model=dense_…)"
            )
        if unknown:
            raise ValueError(
                f"names unknown attention block(s) {unknown}; choose from {', '.join(BLOCKS)} "
                "(cross-attention: --struct-cross-window)"
            )
        return blocks

    def cross_band(self) -> CrossBand | None:
        """The structured cross-attention band, or None for dense cross-attention."""
        if self.struct_cross_window < 0:
            return None
        return CrossBand(self.struct_cross_window, self.struct_cross_slope)

    def role_mixes(
        self, block: str, num_heads: int, num_layers: int | None, names: Naming = FAIRSEQ_NAMES
    ) -> list[list[str]]:
        """One list of head roles per layer of ``block`` (``num_layers=None``: one per mix given); an error names
        the options with ``names``."""
        if self.struct_heads_from:
            option = names.name("struct_heads_from")
            spec = ";".join(roles_from_file(self.struct_heads_from, block, option=option))
        elif self.struct_heads != "auto":
            spec, option = self.struct_heads, names.name("struct_heads")
        else:
            spec, option = default_role_mix(num_heads, self.struct_rare), names.name("struct_heads")
        try:
            return parse_role_mix(spec, num_heads, num_layers, option=option)
        except ValueError as err:
            if self.struct_heads_from:
                raise ValueError(f"the {block}'s self-attention: {err}") from None
            raise ValueError(f"the {block}'s self-attention: {err}. {own_mixes_hint(names)}") from None

    def layer_structures(
        self,
        block: str,
        num_heads: int,
        num_layers: int,
        layers_to_keep: list[int] | None = None,
        names: Naming = FAIRSEQ_NAMES,
    ) -> list[Structure]:
        """One :class:`Structure` per layer of ``block``.

        With fairseq's ``--*-layers-to-keep`` pruning, ``layers_to_keep`` lists the kept
        layers of the full stack and each keeps its own role mix.
        """
        sinks, eps = self.error_term()
        if layers_to_keep is None:
            mixes = self.role_mixes(block, num_heads, num_layers, names)
        else:
            given = self.role_mixes(block, num_heads, None, names)
            full = len(given) if len(given) > 1 else max(layers_to_keep) + 1
            if any(not 0 <= i < full for i in layers_to_keep):
                raise ValueError(f"--{block}-layers-to-keep {layers_to_keep}: the role mixes cover {full} layers")
            mixes = [given[i if len(given) > 1 else 0] for i in layers_to_keep]
        return [
            Structure.from_roles(
                roles,
                window=self.struct_window,
                pos_window=self.struct_pos_window,
                rare=self.struct_rare,
                causal=block == "decoder",
                sinks=sinks,
                sink_eps=eps,
            )
            for roles in mixes
        ]


def own_mixes_hint(names: Naming) -> str:
    """How to give each block and layer a mix of its own, in ``names``."""
    roles = """{"encoder": ["pos:1,syn:2,rare:1", ...], "decoder": [...]}"""
    per_layer = "one mix per layer"
    given = f", or the JSON itself: '{roles}' ({per_layer})" if names.json_roles else f" ({roles}, {per_layer})"
    return (
        f"{names.name('struct_heads')} gives the encoder and the decoder the same mixes; for mixes of their own give "
        f"{names.name('struct_heads_from')} a roles file{given}"
    )


def default_role_mix(num_heads: int, rare: int) -> str:
    """``auto``: a quarter positional heads, a quarter (at least one, if ``rare``) rare heads, the rest syntactic."""
    pos = num_heads // 4
    rare_heads = max(1, num_heads // 4) if rare > 0 else 0
    syn = num_heads - pos - rare_heads
    if syn < 0:
        pos, syn = 0, num_heads - rare_heads
    return f"pos:{pos},syn:{syn},rare:{rare_heads}"


def _value(args: Any, name: str, default: Any) -> Any:
    """``args.<name>`` as the type of its ``default``: fairseq's ``--model-overrides`` and ``load_model``'s overrides
    can give a number as text (``{'struct_window': '5'}``), which is converted, or refused naming the option."""
    value = getattr(args, name, None)
    if value is None:
        return default
    kind = type(default)
    if kind not in (int, float):
        return value
    if isinstance(value, str):  # read as a number; an integer option then takes only a whole one
        try:
            value = float(value)
        except ValueError:
            value = None
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is float and number:
        return float(value)
    if kind is int and number and float(value).is_integer():
        return int(value)
    raise ValueError(f"{flag(name)}={getattr(args, name)!r} is not {'an integer' if kind is int else 'a number'}")


def spec_fields() -> list[tuple[str, type, Any]]:
    """``(short name, type, dataclass field)`` of every option, for the pipeline's ``ModelSpec``."""
    return [(short(f.name), type(f.default), field(default=f.default)) for f in fields(StructureConfig)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``--struct-*`` flag, without defaults (:func:`fill_defaults` sets them, as
    fairseq's architecture functions do for the transformer's own options)."""
    for f in fields(StructureConfig):
        parser.add_argument(
            flag(f.name),
            type=type(f.default),
            metavar=type(f.default).__name__.upper(),
            help=(f"{f.metadata['help']} (default: {f.default!r})"),
        )


def misnamed_options(keys: Iterable[str]) -> str:
    """Why settings (or ``--model-overrides``) with ``keys`` name an option wrongly ("" when none does): a
    ``struct_*`` key that is no option (misspelt: its value would be set beside the options, unread), or
    structmt-run's short name of one (``window``, which fairseq's settings never read)."""
    known = {f.name for f in fields(StructureConfig)}
    stray = sorted(k for k in keys if k.startswith(PREFIX) and k not in known)
    if stray:
        return (
            f"{', '.join(stray)}: no structmt option of that name (a misspelt --model-overrides key?); the options "
            f"are {', '.join(sorted(known))}"
        )
    pipeline_names = sorted(k for k in keys if PREFIX + k in known)
    if pipeline_names:
        return (
            f"{', '.join(pipeline_names)}: structmt-run's name of an option; fairseq's settings (and "
            f"--model-overrides) name it {', '.join(PREFIX + k for k in pipeline_names)}"
        )
    return ""


def fill_defaults(args: Any) -> None:
    """Set the ``--struct-*`` options that the command line left unset to their defaults."""
    for f in fields(StructureConfig):
        if getattr(args, f.name, None) is None:
            setattr(args, f.name, f.default)


def describe(config: StructureConfig) -> str:
    """Every ``--struct-*`` option of ``config`` and its value, defaults included, as a command line spells it."""
    return " ".join(f"{flag(f.name)} {shlex.quote(str(getattr(config, f.name)))}" for f in fields(config))


def to_fairseq_args(config: StructureConfig) -> list[str]:
    """The ``--struct-*`` command-line arguments of ``config``; options at their default are omitted."""
    out = []
    for f in fields(config):
        value = getattr(config, f.name)
        if value != f.default:
            out += [flag(f.name), str(value)]
    return out


def markdown_table() -> str:
    """Every option as a markdown table (docs/plugin.md holds it; a test checks they agree)."""
    rows = ["| fairseq option | structmt-run key | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(StructureConfig):
        help_text = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| `{flag(f.name)}` | `model.{short(f.name)}` | `{f.default!r}` | {help_text} |")
    return "\n".join(rows) + "\n"
