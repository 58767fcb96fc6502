"""Training and evaluation of the demo's classification heads, and the report (table, JSON, plot).

Every loss trains the same head from the same initial weights, on the same
batch order, with the same optimiser and learning-rate schedule (Adam, cosine
decay to 0 over the run); only the loss differs.  With ``init_ce_epochs`` the
head is first trained with cross-entropy, and every loss then continues from
that checkpoint (with a fresh optimiser), as the paper fine-tunes ImageNet
models.  Everything that is not a timing is deterministic for a seed.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import FeatureData, Features, require

__all__ = ["Head", "LossSpec", "RunResult", "make_losses", "seed_everything", "evaluate", "train_head",
           "run_all", "format_table", "report_dict", "write_plot", "machine_info"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class Head(torch.nn.Module):
    """A linear classifier, or a one-hidden-layer MLP, on fixed features.

    The first layer is a ``[n_features, width]`` matrix: sparse inputs
    (``(cols, offsets, vals)`` from :meth:`Features.take`) go through
    ``embedding_bag``, which touches only the non-zero rows, dense inputs
    through a matrix product.  Its initialisation is ``torch.nn.Linear``'s.

    Args:
        n_features: input dimension.
        n_classes: number of logits.
        hidden: width of the hidden layer (ReLU), or ``None`` for a linear head.
    """

    def __init__(self, n_features: int, n_classes: int, hidden: Optional[int] = None):
        super().__init__()
        width = hidden or n_classes
        bound = 1.0 / math.sqrt(n_features)
        self.weight = torch.nn.Parameter(torch.empty(n_features, width).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        self.out = torch.nn.Linear(hidden, n_classes) if hidden else None

    def forward(self, x) -> torch.Tensor:
        if isinstance(x, tuple):
            cols, offsets, vals = x
            h = F.embedding_bag(cols, self.weight, offsets, mode="sum", per_sample_weights=vals) + self.bias
        else:
            h = x @ self.weight + self.bias
        if self.out is not None:
            h = self.out(torch.relu(h))
        return h


@dataclass
class LossSpec:
    """A loss to compare: its table name, a factory, and its settings (for the JSON report)."""

    name: str
    make: Callable[[], torch.nn.Module]
    config: Dict[str, object]


def _fmt_pk(p_k: Sequence[float]) -> str:
    return "[" + ",".join(f"{v:g}".replace("0.", ".") for v in p_k) + "]"


def make_losses(which: Sequence[str], *, p_k: Sequence[float] = (0.5, 0, 0, 0, 0.5), method: str = "bitonic",
                m: Optional[int] = 16, top1_mode: str = "sm", inverse_temperature: float = 1.0,
                smooth_k: int = 5, smooth_tau: float = 1.0) -> List[LossSpec]:
    """The losses named in ``which`` (``ce``, ``topk``, ``smooth``), in that order.

    ``topk`` is :class:`fastsort.TopKCrossEntropyLoss` with the given settings (the
    defaults are the paper's ImageNet ones), ``smooth`` :class:`fastsort.SmoothTopKLoss`.
    The losses are constructed once here, so bad settings fail before any training.
    """
    import fastsort

    specs = []
    for w in which:
        if w == "ce":
            specs.append(LossSpec("CrossEntropy", torch.nn.CrossEntropyLoss, {"loss": "ce"}))
        elif w == "topk":
            kw = dict(m=m, inverse_temperature=inverse_temperature, top1_mode=top1_mode)
            fastsort.TopKCrossEntropyLoss(list(p_k), method, **kw)
            name = (f"TopK {method} P_K={_fmt_pk(p_k)} m={m if m is not None else 'all'} {top1_mode}"
                    f" it={inverse_temperature:g}")
            specs.append(LossSpec(name, lambda kw=kw: fastsort.TopKCrossEntropyLoss(list(p_k), method, **kw),
                                  {"loss": "topk", "p_k": [float(v) for v in p_k], "method": method, **kw}))
        elif w == "smooth":
            fastsort.SmoothTopKLoss(smooth_k, tau=smooth_tau)
            specs.append(LossSpec(f"SmoothTopK k={smooth_k} tau={smooth_tau:g}",
                                  lambda: fastsort.SmoothTopKLoss(smooth_k, tau=smooth_tau),
                                  {"loss": "smooth", "k": smooth_k, "tau": smooth_tau}))
        else:
            raise ValueError(f"--losses: unknown loss {w!r}; choose from ce, topk, smooth")
    if not specs:
        raise ValueError("--losses: give at least one of ce, topk, smooth")
    return specs


@dataclass
class RunResult:
    """One training run: final test accuracies (%), timings, and the per-epoch history."""

    loss: str
    top1: float
    top5: float
    ms_per_step: float
    total_s: float
    history: List[Dict[str, float]] = field(default_factory=list)
    config: Dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, object]:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5, "ms_per_step": self.ms_per_step,
                "total_s": self.total_s, "history": self.history, "config": self.config}


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: Features, y: torch.Tensor, batch_size: int = 4096) -> Dict[str, float]:
    """Top-1 and top-5 accuracy (%) of ``model`` on ``(x, y)``."""
    model.eval()
    hit1 = hit5 = 0
    n = len(y)
    for i in range(0, n, batch_size):
        rows = torch.arange(i, min(i + batch_size, n), device=y.device)
        logits = model(x.take(rows))
        yy = y[rows]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 += int((top[:, 0] == yy).sum())
        hit5 += int((top == yy[:, None]).any(dim=1).sum())
    model.train()
    return {"top1": 100.0 * hit1 / n, "top5": 100.0 * hit5 / n}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_head(model: torch.nn.Module, loss_fn: torch.nn.Module, data: FeatureData, *, epochs: int,
               batch_size: int, lr: float, seed: int, desc: str, progress: bool = True,
               weight_decay: float = 0.0) -> RunResult:
    """Train ``model`` in place with ``loss_fn`` and return its :class:`RunResult`.

    Adam with a per-step cosine decay of ``lr`` to 0; the batch order comes from ``seed``.
    ``ms_per_step`` is the mean wall time of forward, loss, backward and update (synchronised
    on CUDA); ``total_s`` includes the batching and the per-epoch test evaluation.
    """
    tqdm = require("tqdm").tqdm
    device = data.train_y.device
    n = len(data.train_y)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total_steps)))
    order = torch.Generator().manual_seed(seed)
    history: List[Dict[str, float]] = []
    step_time = 0.0
    t_start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, leave=True, dynamic_ncols=True)
    try:
        for epoch in range(1, epochs + 1):
            perm = torch.randperm(n, generator=order).to(device)
            loss_sum = torch.zeros((), device=device)
            for i in range(0, n, batch_size):
                rows = perm[i:i + batch_size]
                xb, yb = data.train_x.take(rows), data.train_y[rows]
                _sync(device)
                t0 = time.perf_counter()
                loss = loss_fn(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                _sync(device)
                step_time += time.perf_counter() - t0
                loss_sum += loss.detach() * len(rows)
                bar.update(1)
            acc = evaluate(model, data.test_x, data.test_y)
            history.append({"epoch": epoch, "train_loss": float(loss_sum) / n, **acc})
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.4f}", top1=f"{acc['top1']:.2f}",
                            top5=f"{acc['top5']:.2f}")
    finally:
        bar.close()
    total = time.perf_counter() - t_start
    last = history[-1] if history else evaluate(model, data.test_x, data.test_y)
    return RunResult(desc, last["top1"], last["top5"], 1e3 * step_time / max(total_steps, 1), total, history)


def run_all(data: FeatureData, losses: Sequence[LossSpec], *, epochs: int, batch_size: int = 256,
            lr: float = 0.01, seed: int = 0, hidden: Optional[int] = None, init_ce_epochs: int = 0,
            progress: bool = True, weight_decay: float = 0.0) -> Dict[str, object]:
    """Train one head per loss (from scratch, or from a shared cross-entropy checkpoint).

    Returns ``{"runs": [RunResult, ...], "init": RunResult or None}``; ``init`` is the
    cross-entropy warm start of ``init_ce_epochs`` epochs when given.
    """
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("init_ce_epochs", init_ce_epochs)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if epochs < 1 or batch_size < 1 or init_ce_epochs < 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and init_ce_epochs >= 0, got "
                         f"{epochs}, {batch_size}, {init_ce_epochs}")
    seed_everything(seed)
    start = Head(data.n_features, data.n_classes, hidden).to(data.train_y.device)
    init = None
    if init_ce_epochs:
        init = train_head(start, torch.nn.CrossEntropyLoss(), data, epochs=init_ce_epochs, batch_size=batch_size,
                          lr=lr, seed=seed, desc="CrossEntropy warm start", progress=progress,
                          weight_decay=weight_decay)
        init.config = {"loss": "ce", "epochs": init_ce_epochs}
    state = copy.deepcopy(start.state_dict())
    runs = []
    for spec in losses:
        seed_everything(seed)
        model = Head(data.n_features, data.n_classes, hidden).to(data.train_y.device)
        model.load_state_dict(state)
        # a different batch order than the warm start's (seed + 1), the same one for every loss
        res = train_head(model, spec.make(), data, epochs=epochs, batch_size=batch_size, lr=lr,
                         seed=seed + 1 if init_ce_epochs else seed, desc=spec.name, progress=progress,
                         weight_decay=weight_decay)
        res.config = dict(spec.config)
        runs.append(res)
    return {"runs": runs, "init": init}


def format_table(runs: Sequence[RunResult], init: Optional[RunResult] = None) -> str:
    """The results as a Markdown table (accuracies on the test set)."""
    w = max([len(r.loss) for r in runs] + [4])
    lines = [f"| {'loss':<{w}} | top-1 % | top-5 % | ms/step | total s |",
             f"|{'-' * (w + 2)}|--------:|--------:|--------:|--------:|"]
    for r in runs:
        lines.append(f"| {r.loss:<{w}} | {r.top1:7.2f} | {r.top5:7.2f} | {r.ms_per_step:7.2f} | {r.total_s:7.1f} |")
    if init is not None:
        n = init.config.get("epochs")
        lines.append(f"(all runs continue from a cross-entropy warm start of {n} epoch{'' if n == 1 else 's'}: "
                     f"top-1 {init.top1:.2f} %, top-5 {init.top5:.2f} %, {init.total_s:.1f} s)")
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def machine_info(device: torch.device) -> Dict[str, object]:
    """Where the numbers were measured: CPU (and GPU) name, torch and fastsort versions, git commit."""
    import fastsort

    info: Dict[str, object] = {"cpu": cpu_name(), "cpu_threads": torch.get_num_threads(),
                               "device": str(device), "gpu": None, "python": platform.python_version(),
                               "torch": torch.__version__, "fastsort": fastsort.__version__,
                               "commit": _git_commit()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def report_dict(data: FeatureData, result: Dict[str, object], config: Dict[str, object],
                device: torch.device) -> Dict[str, object]:
    """The JSON report: runs, data summary, settings and machine."""
    init = result["init"]
    return {"runs": [r.as_dict() for r in result["runs"]], "init": init.as_dict() if init is not None else None,
            "data": data.info(), "config": config, "machine": machine_info(device)}


def write_plot(runs: Sequence[RunResult], path: str, title: str = "", init: Optional[RunResult] = None) -> None:
    """A PNG of test top-1 and top-5 accuracy per epoch, one line per loss (Agg canvas, no pyplot)."""
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    offset = len(init.history) if init is not None else 0
    for ax, key in zip(axes, ("top1", "top5")):
        if init is not None:
            ax.plot([h["epoch"] for h in init.history], [h[key] for h in init.history], "k--",
                    label="CrossEntropy warm start")
        # each run's line starts at the checkpoint it continues from
        start = [(offset, init.history[-1][key])] if init is not None and init.history else []
        for r in runs:
            pts = start + [(offset + h["epoch"], h[key]) for h in r.history]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=r.loss)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test {'top-1' if key == 'top1' else 'top-5'} accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
