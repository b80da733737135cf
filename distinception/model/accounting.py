"""Table 1 of the paper, reproduced by measuring the built model.

Parameters are counted on the module behind each row; multiply-adds are measured with
`torch.utils.flop_counter.FlopCounterMode` on a one-image forward pass (FLOPs / 2), never counted
by hand, so the report stays true to whatever the code builds. FlopCounterMode counts
convolutions and matrix products only, which is what a multiply-add is here: bias adds, ReLU,
LRN, BatchNorm and pooling are not.

The paper's printed columns and the exact dense counts (`table1.csv`, shipped with the package)
are shown beside the measured ones when the build is the one the paper describes: faithful
variant, 224 x 224, width 1, 1000 classes.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distinception.config import GOOGLENET, ModelConfig
from distinception.model.archs import build_model
from distinception.model.googlenet import AUX, AuxPool, GoogLeNet

PAPER_INPUT_SIZE = 224
PAPER_NUM_CLASSES = 1000

CONV1_NOTE = (
    "conv1: the paper prints 2.7K params / 34M ops, which fits a depthwise-separable 7x7 conv "
    "with depth multiplier 8 (2,712 weights, 34.0M MACs), not the dense 7x7 conv "
    "(9,472 params, 118M MACs) that Caffe, torchvision and this model build."
)


@dataclass(frozen=True)
class PaperRow:
    """One row of `table1.csv`: the paper's printed columns and the exact dense-build counts."""

    name: str
    in_depth: int
    out_hw: int
    out_depth: int
    n1x1: int | None
    n3x3red: int | None
    n3x3: int | None
    n5x5red: int | None
    n5x5: int | None
    pool_proj: int | None
    paper_params_k: float
    paper_ops_m: float
    exact_params: int
    exact_macs: int


def _int_or_none(text: str) -> int | None:
    return int(text) if text.strip() else None


@functools.cache
def load_table1() -> tuple[PaperRow, ...]:
    """Table 1 as shipped in the package (comment lines start with '#')."""
    text = resources.files("distinception.model").joinpath("table1.csv").read_text("utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows = []
    for rec in csv.DictReader(lines):
        rows.append(
            PaperRow(
                name=rec["name"],
                in_depth=int(rec["in_depth"]),
                out_hw=int(rec["out_hw"]),
                out_depth=int(rec["out_depth"]),
                n1x1=_int_or_none(rec["n1x1"]),
                n3x3red=_int_or_none(rec["n3x3red"]),
                n3x3=_int_or_none(rec["n3x3"]),
                n5x5red=_int_or_none(rec["n5x5red"]),
                n5x5=_int_or_none(rec["n5x5"]),
                pool_proj=_int_or_none(rec["pool_proj"]),
                paper_params_k=float(rec["paper_params_k"]),
                paper_ops_m=float(rec["paper_ops_m"]),
                exact_params=int(rec["exact_params"]),
                exact_macs=int(rec["exact_macs"]),
            )
        )
    return tuple(rows)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-adds of one call of `module` on `inputs`, as FlopCounterMode measures them."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() // 2


def _paper_build(variant: str, input_size: int, width: float, num_classes: int) -> bool:
    return (
        variant == "faithful"
        and input_size == PAPER_INPUT_SIZE
        and width == 1.0
        and num_classes == PAPER_NUM_CLASSES
    )


def summarize(
    variant: str = "faithful",
    input_size: int = 224,
    width: float = 1.0,
    num_classes: int = 1000,
) -> dict[str, Any]:
    """Params and multiply-adds per Table-1 row of the model this configuration builds.

    Returns a plain dict (for logging as an artifact) with keys `variant`, `input_size`, `width`,
    `num_classes`, `rows` (one dict per row: name, out_hw, out_depth, params, macs,
    paper_params_k, paper_ops_m, exact_params, exact_macs; the last four are None unless the
    build is the paper's), `totals` and `notes`.
    """
    if input_size < 32:
        raise ValueError(f"input_size={input_size!r}: expected an integer >= 32")
    # Weights do not change any count; keep the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        model = GoogLeNet(num_classes, variant=variant, width=width, aux=True).eval()
    table = model.table1_modules()
    inputs: dict[str, tuple[torch.Tensor, ...]] = {}
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in table:
        hooks.append(module.register_forward_pre_hook(_capture_inputs(inputs, name)))
        hooks.append(module.register_forward_hook(_capture_output(outputs, name)))
    x = torch.zeros(1, 3, input_size, input_size)
    try:
        total_macs = count_macs(model, x)
    finally:
        for hook in hooks:
            hook.remove()

    paper: dict[str, PaperRow] = {}
    if _paper_build(variant, input_size, width, num_classes):
        paper = {row.name: row for row in load_table1()}
    rows = []
    for name, module in table:
        out = outputs[name]
        ref = paper.get(name)
        rows.append(
            {
                "name": name,
                "out_hw": out.shape[-1] if out.dim() == 4 else 1,
                "out_depth": out.shape[1],
                "params": count_params(module),
                "macs": count_macs(module, *inputs[name]),
                "paper_params_k": ref.paper_params_k if ref else None,
                "paper_ops_m": ref.paper_ops_m if ref else None,
                "exact_params": ref.exact_params if ref else None,
                "exact_macs": ref.exact_macs if ref else None,
            }
        )

    aux_heads = model.aux_heads()
    aux_params = [count_params(head) for _, head in aux_heads]
    attach = dict(zip(("aux1", "aux2"), AUX.attach_to, strict=True))
    aux_macs = [count_macs(head, outputs[attach[name]]) for name, head in aux_heads]
    params_with_aux = count_params(model)
    totals = {
        "params_no_aux": params_with_aux - sum(aux_params),
        "params_with_aux": params_with_aux,
        "aux_params": aux_params,
        "aux_macs": aux_macs,
        "macs": total_macs,
        "paper_params_k": round(sum(r.paper_params_k for r in paper.values()), 1)
        if paper
        else None,
        "paper_ops_m": round(sum(r.paper_ops_m for r in paper.values()), 1) if paper else None,
    }
    aux_map = outputs[attach["aux1"]].shape[-1]
    return {
        "variant": variant,
        "input_size": input_size,
        "width": width,
        "num_classes": num_classes,
        "rows": rows,
        "totals": totals,
        "notes": _notes(variant, rows, bool(paper), aux_map),
    }


def _capture_inputs(store: dict[str, tuple[torch.Tensor, ...]], name: str) -> Any:
    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        store[name] = args

    return hook


def _capture_output(store: dict[str, torch.Tensor], name: str) -> Any:
    def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        store[name] = output

    return hook


def _notes(variant: str, rows: list[dict[str, Any]], paper: bool, aux_map: int) -> list[str]:
    notes = [
        CONV1_NOTE,
        "MACs are FlopCounterMode FLOPs / 2 for one image: convolutions and linear layers only; "
        "bias adds, ReLU, LRN, BatchNorm and pooling are not multiply-adds.",
        "Aux heads run only in training: their params are outside the rows and the no-aux "
        "total, and their MACs outside the MAC total.",
    ]
    if variant == "bn":
        notes.append(
            "bn variant: BatchNorm after every conv (conv bias off, 2 params per channel) and "
            "no LRN; a named deviation from the paper, so the paper's columns are not shown."
        )
    elif not paper:
        notes.append(
            "The paper's columns are shown only for the faithful variant at 224 x 224, width 1, "
            "1000 classes."
        )
    if paper:
        notes.append(
            "paper K is read as x1024 params; rows where our count is more than 5% off the "
            "printed one: " + (", ".join(_paper_gaps(rows)) or "none")
        )
    pool = AuxPool()
    if pool.uses_paper_pool(aux_map, aux_map):
        notes.append(f"Aux heads pool {aux_map}x{aux_map} maps with the paper's 5x5/3 average.")
    else:
        notes.append(
            f"Aux heads pool {aux_map}x{aux_map} maps adaptively to 4x4: the paper's 5x5/3 "
            "average gives 4x4 only on 14..16 px maps."
        )
    return notes


def _paper_gaps(rows: list[dict[str, Any]]) -> list[str]:
    gaps = []
    for row in rows:
        for label, ours, printed in (
            ("params", row["params"], row["paper_params_k"] * 1024),
            ("ops", row["macs"], row["paper_ops_m"] * 1e6),
        ):
            rel = ours / printed - 1
            if abs(rel) > 0.05:
                gaps.append(f"{row['name']} {label} ({rel:+.1%})")
    return gaps


def _fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _fmt_float(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _aligned(lines: list[tuple[str, ...]]) -> list[str]:
    """Header, rule, body rows, rule, total row: the first column left-aligned, numbers right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rule = "  ".join("-" * w for w in widths)

    def render(line: tuple[str, ...]) -> str:
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    return [render(lines[0]), rule, *map(render, lines[1:-1]), rule, render(lines[-1])]


def summarize_model(cfg: ModelConfig, num_classes: int = 1000) -> dict[str, Any]:
    """The summary of whatever `cfg.arch` builds. GoogLeNet gets `summarize` (Table-1 rows beside
    the paper's); any other arch gets params and multiply-adds per top-level block of the
    built model (`rows`: name, params, macs) and `totals`, measured the same way."""
    if cfg.arch == GOOGLENET:
        return {"arch": cfg.arch} | summarize(cfg.variant, cfg.input_size, cfg.width, num_classes)
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, num_classes).eval()
    x = torch.zeros(1, 3, cfg.input_size, cfg.input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    # FlopCounterMode names each module by its path under the root class's name.
    by_module = counter.get_flop_counts()
    root = type(model).__name__
    rows = [
        {
            "name": name,
            "params": count_params(child),
            "macs": sum(by_module.get(f"{root}.{name}", {}).values()) // 2,
        }
        for name, child in model.named_children()
    ]
    return {
        "arch": cfg.arch,
        "input_size": cfg.input_size,
        "width": cfg.width,
        "num_classes": num_classes,
        "rows": rows,
        "totals": {"params": count_params(model), "macs": counter.get_total_flops() // 2},
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A summary as an aligned text table: for GoogLeNet our counts beside the paper's."""
    if summary.get("arch", GOOGLENET) != GOOGLENET:
        lines = [("block", "params", "MACs")]
        lines += [(r["name"], _fmt_int(r["params"]), _fmt_int(r["macs"])) for r in summary["rows"]]
        totals = summary["totals"]
        lines.append(("total", _fmt_int(totals["params"]), _fmt_int(totals["macs"])))
        size = summary["input_size"]
        title = (
            f"{summary['arch']}, {size}x{size} input, width {summary['width']:g}, "
            f"{summary['num_classes']} classes"
        )
        return "\n".join([title, "", *_aligned(lines)])
    header = (
        "row",
        "out",
        "depth",
        "params",
        "paper K",
        "exact params",
        "MACs",
        "paper M",
        "exact MACs",
        "check",
    )
    lines: list[tuple[str, ...]] = [header]
    for row in summary["rows"]:
        check = "-"
        if row["exact_params"] is not None:
            same = row["params"] == row["exact_params"] and row["macs"] == row["exact_macs"]
            check = "ok" if same else "DIFFERS"
        lines.append(
            (
                row["name"],
                str(row["out_hw"]),
                str(row["out_depth"]),
                _fmt_int(row["params"]),
                _fmt_float(row["paper_params_k"]),
                _fmt_int(row["exact_params"]),
                _fmt_int(row["macs"]),
                _fmt_float(row["paper_ops_m"]),
                _fmt_int(row["exact_macs"]),
                check,
            )
        )
    totals = summary["totals"]
    rows = summary["rows"]
    has_exact = bool(rows) and rows[0]["exact_params"] is not None
    lines.append(
        (
            "total",
            "",
            "",
            _fmt_int(totals["params_no_aux"]),
            _fmt_float(totals["paper_params_k"]),
            _fmt_int(sum(r["exact_params"] for r in rows) if has_exact else None),
            _fmt_int(totals["macs"]),
            _fmt_float(totals["paper_ops_m"]),
            _fmt_int(sum(r["exact_macs"] for r in rows) if has_exact else None),
            "",
        )
    )
    title = (
        f"GoogLeNet, {summary['variant']} variant, {summary['input_size']}x{summary['input_size']}"
        f" input, width {summary['width']:g}, {summary.get('num_classes', 1000)} classes"
    )
    out = [title, "", *_aligned(lines), ""]
    heads = ", ".join(
        f"{name} {_fmt_int(p)} params / {_fmt_int(m)} MACs"
        for name, p, m in zip(
            ("aux1 (after 4a)", "aux2 (after 4d)"),
            totals["aux_params"],
            totals["aux_macs"],
            strict=False,
        )
    )
    out.append(f"aux heads: {heads or 'none'}")
    out.append(f"params with aux heads (training): {_fmt_int(totals['params_with_aux'])}")
    out.append("")
    out.append("notes:")
    out += [f"- {note}" for note in summary["notes"]]
    return "\n".join(out)
