"""``jaxsplit zoo [NAME] [--input-size H W]``: the model zoo and its layer tables."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import tyro

from .. import zoo
from ..console import make_console
from ..layers import total_macs, total_work
from . import options


@dataclasses.dataclass
class ZooArgs:
    """List the zoo models, or print one model's layer table and totals."""

    name: tyro.conf.Positional[Optional[str]] = None
    """Model name (omit to list the zoo)."""
    input_size: Optional[tuple[int, int]] = None
    """Input height and width (default: the model's usual size)."""
    json: bool = False
    """Print the layer table as JSON (the instance format's 'layers')."""


def main(argv: Sequence[str]) -> int:
    from rich.table import Table

    args = options.parse(ZooArgs, list(argv), "jaxsplit zoo")
    console = make_console()
    if args.name is None:
        table = Table(title="model zoo", title_justify="left")
        for col in ("model", "default input", "layers", "GMACs", "GFLOP", "published GMACs @224"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for name in zoo.names():
            layers = zoo.get(name)
            pub = zoo.PUBLISHED_MACS.get(name)
            table.add_row(name, "x".join(map(str, zoo.ZOO_DEFAULT_SIZE[name])), str(len(layers)),
                          f"{total_macs(layers) / 1e9:.3f}", f"{total_work(layers) / 1e9:.3f}",
                          f"{pub / 1e9:.2f}" if pub else "-")
        console.print(table)
        return 0
    layers = zoo.get(args.name, args.input_size)
    if args.json:
        print(json.dumps({"layers": [layer.to_dict() for layer in layers]}, indent=1))
        return 0
    size = args.input_size or zoo.ZOO_DEFAULT_SIZE[args.name]
    table = Table(title=f"{args.name} at {size[0]}x{size[1]}", title_justify="left")
    for col in ("#", "name", "type", "in (CxHxW)", "out (CxHxW)", "kernel", "stride", "padding t,b,l,r",
                "dil", "groups", "MMACs"):
        table.add_column(col, justify="right" if col in ("#", "MMACs", "groups") else "left")
    for i, l in enumerate(layers):
        table.add_row(str(i), l.name, l.kind, f"{l.in_channels}x{l.in_height}x{l.in_width}",
                      "x".join(map(str, l.output_shape)), "x".join(map(str, l.kernel)),
                      "x".join(map(str, l.stride)), ",".join(map(str, l.padding)),
                      "x".join(map(str, l.dilation)), str(l.groups), f"{l.macs / 1e6:.1f}")
    console.print(table)
    console.print(f"total: {len(layers)} layers, {total_macs(layers) / 1e9:.3f} GMACs, "
                  f"{total_work(layers) / 1e9:.3f} GFLOP (pool operations included)")
    return 0
