"""``lzn shards SOURCE OUT``: build webdataset shards (digits, cifar10, folder, captions; map adds a key)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.convert import (
    default_workers,
    load_function,
    map_split,
    write_captions,
    write_cifar10,
    write_folder,
)
from ..data.digits import CAPTION_SETS, write_digits

HELP = "build webdataset shards: digits, cifar10, folder, captions; map: add a key to shards"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lzn shards {digits,cifar10,folder,captions}``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    p = sub.add_parser("digits", parents=[common], help="scikit-learn's bundled 8x8 digits (no download)")
    p.add_argument("out", help="output directory, e.g. data/digits")
    p.add_argument("--test-size", type=int, default=300, help="test images (stratified; default 300)")
    p.add_argument("--seed", type=int, default=0, help="split and caption seed (default 0)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument(
        "--captions",
        choices=CAPTION_SETS,
        default="templates",
        help="templates: the digit's name ('a handwritten seven', default); attributes: the digit and what "
        "its pixels show, per-class terciles of stroke weight, slant, width, position ('a thin, upright, "
        "narrow 7, left of centre')",
    )
    p = sub.add_parser("cifar10", parents=[common], help="the official cifar-10-python.tar.gz")
    p.add_argument("tarball", help="path to cifar-10-python.tar.gz")
    p.add_argument("out", help="output directory, e.g. data/cifar10")
    p.add_argument("--shard-size", type=int, default=5000, help="samples per shard (default 5000)")
    for name, arg, help_ in (
        ("folder", "root", "image folder ROOT/<class>/<image>"),
        ("captions", "jsonl", 'JSONL file of {"image": path, "caption": text}'),
    ):
        p = sub.add_parser(name, parents=[common], help=help_)
        p.add_argument(arg, help=help_)
        p.add_argument("out", help="output directory")
        p.add_argument("--split", default="train", help="split name of the shards (default train)")
        p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
        if name == "folder":
            p.add_argument(
                "--short-side",
                type=int,
                default=None,
                help="keep each image's aspect, resized so its shorter side has this many pixels (ImageNet: "
                "256 or more); default: one size for all, the most common one",
            )
            p.add_argument(
                "--keep-sizes", action="store_true", help="keep every image at its full size (no common size)"
            )
            p.add_argument(
                "--workers",
                type=int,
                default=None,
                help=f"processes that read and encode images (default: the CPUs, at most 8; here "
                f"{default_workers()}); the shards are the same bytes for any number",
            )
    p = sub.add_parser(
        "map",
        parents=[common],
        help="run FUNCTION(key, {ext: bytes}) -> {ext: bytes} over shards to add keys",
    )
    p.add_argument("pattern", help="input shards, e.g. 'data/digits/train-*.tar' (quote the glob)")
    p.add_argument("out", help="output directory (may be the input's own: the split is replaced on success)")
    p.add_argument("--fn", required=True, help="package.module:function or path/to/file.py:function")
    p.add_argument("--split", default="train", help="split name of the output shards (default train)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")


def run(args: argparse.Namespace) -> int:
    """Run ``lzn shards``: convert, then print one summary line per split."""
    progress = None if not args.no_progress else False
    kw = {"shard_size": args.shard_size, "progress": progress}
    if args.source == "digits":
        meta = write_digits(args.out, test_size=args.test_size, seed=args.seed, captions=args.captions, **kw)
    elif args.source == "cifar10":
        meta = write_cifar10(args.tarball, args.out, **kw)
    elif args.source == "map":
        fn = load_function(args.fn)
        meta = map_split(args.pattern, args.out, fn, split=args.split, source=args.fn, **kw)
    elif args.source == "folder":
        meta = write_folder(
            args.root,
            args.out,
            split=args.split,
            short_side=args.short_side,
            keep_sizes=args.keep_sizes,
            workers=args.workers,
            **kw,
        )
    else:
        meta = write_captions(args.jsonl, args.out, split=args.split, **kw)
    for split, n in meta["splits"].items():
        if args.source in ("folder", "captions", "map") and split != args.split:
            continue
        print(f"{args.out}: {split} {n} samples ({Path(args.out) / (split + '-*.tar')})")
    return 0
