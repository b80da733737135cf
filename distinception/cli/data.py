"""`model summary` and `data generate|import|inspect`: the model and the data, without Ray."""

from __future__ import annotations

import argparse
import json
from typing import Any


def cmd_model_summary(args: argparse.Namespace) -> int:
    from distinception.config import ModelConfig

    cfg = ModelConfig(
        arch=args.arch, variant=args.variant, width=args.width, input_size=args.input_size
    )
    # Imported once the config is checked: it loads torch, 2-3 s a mistaken name need not wait.
    from distinception.model.accounting import format_summary, summarize_model

    summary = summarize_model(cfg, num_classes=args.num_classes)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    from distinception.config import DataConfig
    from distinception.data.generated import generate_dataset

    DataConfig(
        classes=args.classes,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        image_size=args.size,
    )
    manifest = generate_dataset(
        args.out,
        classes=args.classes,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        size=args.size,
        seed=args.seed,
        progress=True,
    )
    print(f"wrote {args.out}: {manifest.num_classes} classes, counts {manifest.counts}")
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    options = {
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "shard_rows": args.shard_rows,
        "progress": True,
    }
    if args.engine == "ray":
        from distinception.importing import import_tree_on_ray

        report = import_tree_on_ray(args.src, args.out, address=args.address, **options)
    else:
        from distinception.data.importer import import_tree

        report = import_tree(args.src, args.out, workers=args.workers, **options)
    print(report.format())
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from distinception.data.importer import inspect_dataset

    print(inspect_dataset(args.path, args.grid))
    return 0


def add_parsers(sub: Any) -> None:
    """Add model and data to the main command's subparsers `sub`."""
    model = sub.add_parser("model", help="inspect the model").add_subparsers(
        dest="model_command", required=True, metavar="SUBCOMMAND"
    )
    p = model.add_parser(
        "summary", help="params and multiply-adds per Table-1 row (per block for other archs)"
    )
    p.add_argument(
        "--arch", default="googlenet", help="googlenet, torchvision:NAME or package.module:function"
    )
    p.add_argument("--variant", default="faithful", choices=["faithful", "bn"])
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="one machine-readable JSON object")
    p.set_defaults(func=cmd_model_summary)

    data = sub.add_parser("data", help="create and inspect Parquet data shards").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND"
    )
    p = data.add_parser("generate", help="write the built-in generated data set")
    p.add_argument("--out", default="data/generated")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_generate)

    p = data.add_parser("import", help="turn an ImageFolder/ImageNet-style tree into shards")
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: a pool of processes here; ray: shard tasks spread over a Ray cluster",
    )
    p.add_argument("--workers", type=int, default=2, help="processes of the local engine")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster for --engine ray (auto, ray://host:10001 or host:port); "
        "default: the job's cluster, else a local Ray",
    )
    p.add_argument("--shard-rows", type=int, default=2048, help="images per shard file")
    p.set_defaults(func=cmd_data_import)

    p = data.add_parser("inspect", help="print a manifest summary and write a sample grid PNG")
    p.add_argument("path")
    p.add_argument("--grid", default=None, help="where to write the sample grid PNG")
    p.set_defaults(func=cmd_data_inspect)
