"""The reference packages' own usage through ``fastsort.compat``, against the installed references.

``diffsort==0.2.0`` / ``difftopk==0.2.0`` code must run unchanged on ``fastsort.compat``:

* their README snippets, verbatim (read from the installed packages' metadata and executed
  once with ``import difftopk`` / ``import diffsort`` resolving to the reference and once to
  ``fastsort.compat``);
* a few steps of their training scripts (difftopk ``experiments/train_imagenet.py`` and
  ``train_cifar100.py``, diffsort ``experiments/main.py``: the same loss construction, model,
  optimiser and step, on synthetic tensors of their shapes; smaller batches and embeddings);
* annealing through the attributes user code reaches for (``DiffSortNet.steepness``,
  ``loss_fn.top_k_net.steepness``, ``loss_fn.sort_fn.tau``; ``inverse_temperature`` is read at
  construction only, in both);
* the reference modules and names (``difftopk.functional``, ``.networks``, ``.losses``,
  ``diffsort.bitonic_network``, ``get_sorting_network``, ``sorting_network``): the network
  descriptions equal the references', and ``sort`` / ``topk`` run the references' own ones;
* ``art_lambda=None`` (difftopk's README) and the error both raise for it with ``logistic_phi``.

Without ``torch_sparse`` difftopk's sparse networks cannot run: difftopk's ``'bitonic'`` loss is
compared with its ``'bitonic__non_sparse'`` (the same network, the same numbers) and the
``splitter_selection`` runs with fastsort's own dense float64 reference of the network
(``helpers.dense_network``) as the loss's ``top_k_net``.

Tolerances: the references run in float32 (their scripts' dtype), so values agree to
``rtol = 1e-5`` and gradients to ``1e-5`` of their largest entry (different summation orders);
the smooth top-k loss's k = 1 gradient is checked against float64 finite differences.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import io
import math
import re
import subprocess
import sys

import pytest
import torch

from fastsort.compat import diffsort as fs_diffsort
from fastsort.compat import difftopk as fs_difftopk
from helpers import assert_close, dense_network, default_dtype, one_thread

diffsort = pytest.importorskip("diffsort")
with contextlib.redirect_stdout(io.StringIO()):  # difftopk prints when torch_sparse is missing
    difftopk = pytest.importorskip("difftopk")
try:
    import torch_sparse  # noqa: F401

    HAVE_TORCH_SPARSE = True
except ImportError:
    HAVE_TORCH_SPARSE = False

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),  # difftopk's
    pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning"),  # difftopk's get_sparse_net
]

F32 = dict(rtol=1e-5, atol=1e-6)
F32_GRAD = dict(rtol=1e-4, atol_of_max=1e-5)
LIBS = {"reference": (diffsort, difftopk), "fastsort": (fs_diffsort, fs_difftopk)}


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


# --------------------------------------------------------------------------- README snippets, verbatim
def readme_snippets(package: str):
    """The ```python blocks of ``package``'s README (its long description in the installed metadata)."""
    text = importlib.metadata.metadata(package).json["description"]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_snippet(code: str, lib: str, seed: int = 0) -> dict:
    """Execute ``code`` as a user script that did ``import torch, diffsort, difftopk``, with the two
    packages being the references (``lib='reference'``) or ``fastsort.compat``'s; returns its globals
    (``'_stdout'``: what it printed)."""
    ds, dt = LIBS[lib]
    saved = {name: sys.modules.get(name) for name in ("diffsort", "difftopk")}
    out = io.StringIO()
    torch.manual_seed(seed)
    try:
        sys.modules["diffsort"], sys.modules["difftopk"] = ds, dt
        namespace = {"__name__": "__readme__"}
        with contextlib.redirect_stdout(out):
            exec("import torch\nimport diffsort\nimport difftopk\n" + code, namespace)
    finally:
        for name, module in saved.items():
            sys.modules[name] = module
    namespace["_stdout"] = out.getvalue()
    return namespace


def test_readmes_have_the_snippets():
    assert len(readme_snippets("difftopk")) == 3 and len(readme_snippets("diffsort")) == 1


def test_difftopk_readme_loss_with_art_lambda_none():
    """difftopk's README builds its loss with ``art_lambda=None``; the loss must train as difftopk's."""
    code = readme_snippets("difftopk")[0]
    assert "art_lambda=None" in code
    losses = {lib: run_snippet(code, lib)["loss_fn"] for lib in LIBS}
    g = torch.Generator().manual_seed(1)
    outputs = torch.randn(64, 1000, generator=g) * 3
    labels = torch.randint(0, 1000, (64,), generator=g)
    results = {}
    for lib, loss_fn in losses.items():
        x = outputs.clone().requires_grad_()
        loss = loss_fn(x, labels)
        loss.backward()
        results[lib] = (loss.detach(), x.grad)
    assert_close(results["fastsort"][0], results["reference"][0], **F32, what="loss")
    assert_close(results["fastsort"][1], results["reference"][1], **F32_GRAD, what="gradient")


def test_difftopk_readme_diff_topk_net():
    """The README's ``DiffTopkNet(..., sparse=True)`` and its ``print(x @ sorter(x)[1][0])``.  Without
    ``torch_sparse`` difftopk runs it with ``sparse=False`` (the same network and numbers)."""
    code = readme_snippets("difftopk")[1]
    ours = run_snippet(code, "fastsort")
    theirs = run_snippet(code if HAVE_TORCH_SPARSE else code.replace("sparse=True", "sparse=False"), "reference")
    assert ours["_stdout"].startswith("tensor(")
    assert torch.equal(ours["x"], theirs["x"])
    out, ref = ours["sorter"](ours["x"])[1], theirs["sorter"](theirs["x"])[1]
    assert out.shape == ref.shape == (1, 16, 5)
    assert_close(out, ref, **F32, what="X_topk")
    assert_close(ours["x"] @ out[0], theirs["x"] @ ref[0], rtol=1e-5, atol=1e-3, what="printed top-5 values")


def test_difftopk_readme_neuralsort_softsort():
    code = readme_snippets("difftopk")[2]
    x = torch.randn(8, 12, dtype=torch.float64)
    ours, theirs = run_snippet(code, "fastsort")["sorter"], run_snippet(code, "reference")["sorter"]
    assert type(ours).__name__ == type(theirs).__name__ == "SoftSort"
    assert_close(ours(x), theirs(x), rtol=1e-9, atol=1e-12, what="SoftSort(tau=2.)")
    ns_ours = fs_difftopk.NeuralSort(tau=2.)
    assert_close(ns_ours(x.float()), difftopk.NeuralSort(tau=2.)(x.float()), rtol=1e-5, atol=2e-6,
                 what="NeuralSort(tau=2.)")


def test_diffsort_readme():
    code = readme_snippets("diffsort")[0]
    assert "from diffsort import DiffSortNet" in code
    ours, theirs = run_snippet(code, "fastsort"), run_snippet(code, "reference")
    assert ours["_stdout"].startswith("tensor(") and theirs["_stdout"].startswith("tensor(")
    assert type(ours["sorter"]) is fs_diffsort.DiffSortNet
    assert_close(ours["sorted_vectors"], theirs["sorted_vectors"], **F32, what="sorted_vectors")
    assert_close(ours["permutation_matrices"], theirs["permutation_matrices"], **F32, what="permutation_matrices")
    G = torch.randn(1, 16, 16)
    grads = [torch.autograd.grad((ns["permutation_matrices"] * G).sum(), ns["vectors"])[0] for ns in (ours, theirs)]
    assert_close(grads[0], grads[1], **F32_GRAD, what="gradient")


# --------------------------------------------------------------------------- the training scripts
class DenseReferenceNet(torch.nn.Module):
    """A ``top_k_net`` from fastsort's float64 dense reference of a network (``helpers.dense_network``),
    for the networks difftopk only has in its torch_sparse form."""

    def __init__(self, kind, n, k, steepness, distribution, art_lambda):
        super().__init__()
        self.kind, self.n, self.k = kind, n, k
        self.steepness, self.distribution, self.art_lambda = steepness, distribution, art_lambda

    def forward(self, x):
        _, X = dense_network(x.double(), self.kind, self.distribution, self.steepness,
                             k=self.k if self.kind == "splitter_selection" else None, art_lambda=self.art_lambda)
        return None, X[:, :, -self.k:].to(x.dtype)


def make_loss(lib: str, method: str, it, p_k, n, m, distribution, art_lambda, top1_mode):
    """The loss as the scripts build it (``smooth_hard_topk``: ``SmoothHardTopKLoss``).  The
    reference of ``bitonic`` is difftopk's ``bitonic__non_sparse``; that of ``splitter_selection``
    fastsort's loss with the dense reference network as its ``top_k_net``."""
    dt = LIBS[lib][1]
    if method == "smooth_hard_topk":
        return dt.SmoothHardTopKLoss(n, len(p_k), tau=it, device="cpu")
    if lib == "reference" and method == "bitonic":
        method = "bitonic__non_sparse"
    if lib == "reference" and method == "splitter_selection":
        loss = fs_difftopk.TopKCrossEntropyLoss(method, it, p_k, n, m=m, distribution=distribution,
                                                art_lambda=art_lambda, device="cpu", top1_mode=top1_mode)
        loss.top_k_net = DenseReferenceNet(method, m or n, len(p_k), it, distribution, art_lambda)
        return loss
    return dt.TopKCrossEntropyLoss(diffsort_method=method, inverse_temperature=it, p_k=p_k, n=n, m=m,
                                   distribution=distribution, art_lambda=art_lambda, device="cpu",
                                   top1_mode=top1_mode)




def in_dtype(loss_fn, dtype):
    """The reference loss made to run in ``dtype``: difftopk's dense top-k sweep multiplies by its
    float32 network matrices (converted here) and starts from a default-dtype ``torch.eye`` (the
    caller sets the default dtype)."""
    net = getattr(loss_fn, "top_k_net", None)
    if dtype == torch.float64 and isinstance(net, difftopk.DiffTopkNet):
        net.sorting_network = [[m.double() for m in layer] for layer in net.sorting_network]
    return loss_fn


def train(loss_fn, model, batches, lr, anneal=None):
    """The scripts' step: ``outputs = model(x); loss = loss_fn(outputs, labels); optim.zero_grad();
    loss.backward(); optim.step()``; returns the losses and the gradients of every step.
    ``anneal(loss_fn, step)`` is called before each step."""
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    losses, grads = [], []
    for step, (x, labels) in enumerate(batches):
        if anneal is not None:
            anneal(loss_fn, step)
        outputs = model(x)
        loss = loss_fn(outputs, labels)
        optim.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        optim.step()
        losses.append(loss.detach())
    return losses, grads


# the training comparisons run in float64 where the reference can (NeuralSort's only runs in
# float32): logistic_phi's comparator slope grows like |d|^-lambda for close values, so float32
# rounding of the wire values (different summation orders) moves single gradients by percents
F64 = dict(rtol=1e-9, atol=1e-12)
F64_GRAD = dict(rtol=1e-8, atol_of_max=1e-9)


def compare_training(configure, batches, make_model, lr, anneal=None, dtype=torch.float64):
    """Train a copy of the same model with the reference's and with fastsort's loss; compare every step."""
    model = make_model().to(dtype)
    batches = [(x.to(dtype), labels) for x, labels in batches]
    runs = {}
    with default_dtype(dtype):
        for lib in LIBS:
            runs[lib] = train(in_dtype(configure(lib), dtype), copy.deepcopy(model), batches, lr, anneal)
    (ref_losses, ref_grads), (our_losses, our_grads) = runs["reference"], runs["fastsort"]
    tol, grad_tol = (F64, F64_GRAD) if dtype == torch.float64 else (F32, F32_GRAD)
    for step, (a, b) in enumerate(zip(our_losses, ref_losses)):
        assert torch.isfinite(a) and a.dtype == dtype
        assert_close(a, b, **tol, what=f"loss at step {step}")
    for step, (ga, gb) in enumerate(zip(our_grads, ref_grads)):
        for i, (a, b) in enumerate(zip(ga, gb)):
            assert_close(a, b, **grad_tol, what=f"gradient of parameter {i} at step {step}")


def embedding_batches(n_batches, batch_size, dim, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, dim, generator=g), torch.randint(0, num_classes, (batch_size,), generator=g))
            for _ in range(n_batches)]


# train_imagenet.py: the README's hyper-parameters (Tables 2, 3, 5), 1000 classes, m = 16
IMAGENET = [
    ("bitonic", 1.0, [.2, .2, .2, .2, .2], "logistic_phi", .5),
    ("splitter_selection", 1.0, [.2, .2, .2, .2, .2], "logistic_phi", .5),
    ("bitonic", .5, [.25, 0., 0., 0., .75], "logistic", .5),
    ("odd_even", 2.0, [.5, 0., 0., 0., .5], "cauchy", None),  # the README's loss, art_lambda=None
    ("bitonic__non_sparse", 1.0, [.1, 0., 0., 0., .9], "logistic_phi", .5),
    ("neuralsort", .5, [.5, 0., 0., 0., .5], None, .5),
    ("softsort", .5, [1., 0., 0., 0., 0.], None, .5),
    ("smooth_hard_topk", 1.0, [0., 0., 0., 0., 1.], None, .5),
]


@pytest.mark.parametrize("method, it, p_k, distribution, art_lambda", IMAGENET, ids=[c[0] for c in IMAGENET])
def test_train_imagenet_steps(method, it, p_k, distribution, art_lambda):
    """train_imagenet.py: ``torch.nn.Linear(embedding_dim, num_classes)``, Adam ``lr = 10 ** -4.5``,
    ``top1_mode='sm'``; batch 100 (the script's 500) of 64-d embeddings (the script's 2048+)."""
    C = 1000
    batches = embedding_batches(3, 100, 64, C, seed=len(method))
    configure = lambda lib: make_loss(lib, method, it, p_k, C, 16, distribution, art_lambda, "sm")  # noqa: E731
    dtype = torch.float32 if method == "neuralsort" else torch.float64
    compare_training(configure, batches, lambda: torch.nn.Linear(64, C), lr=10 ** -4.5, dtype=dtype)


CIFAR = [
    ("bitonic", .5, [.2, .2, .2, .2, .2], "logistic_phi", .5),
    ("splitter_selection", .5, [.25, 0., 0., 0., .75], "logistic_phi", .5),
    ("neuralsort", .0625, [.5, 0., 0., 0., .5], None, .5),
    ("softsort", .0625, [.2, .2, .2, .2, .2], None, .5),
    ("smooth_hard_topk", 1.0, [0., 0., 0., 0., 1.], None, .5),
]


@pytest.mark.parametrize("method, it, p_k, distribution, art_lambda", CIFAR, ids=[c[0] for c in CIFAR])
def test_train_cifar100_steps(method, it, p_k, distribution, art_lambda):
    """train_cifar100.py: 100 classes, no preselection, ``top1_mode='smce'``, Adam ``lr = 1e-3``; a small
    conv net on batches of 16 synthetic 3x32x32 images (the script's ResNet18 at batch 128)."""
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 100, (16,), generator=g))
               for _ in range(3)]

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                                   torch.nn.Flatten(), torch.nn.Linear(32, 100))

    configure = lambda lib: make_loss(lib, method, it, p_k, 100, None, distribution, art_lambda, "smce")  # noqa: E731
    dtype = torch.float32 if method == "neuralsort" else torch.float64
    compare_training(configure, batches, make_model, lr=1e-3, dtype=dtype)


@pytest.mark.parametrize("method, n, steepness, distribution", [
    ("odd_even", 5, 10.0, "cauchy"),  # -n 5 -m odd_even -s 10 (MNIST and SVHN)
    ("bitonic", 16, 20.0, "cauchy"),  # -n 16 -m bitonic -s 20
    ("odd_even", 8, 10.0, "logistic_phi"),
])
def test_diffsort_main_steps(method, n, steepness, distribution):
    """diffsort's experiments/main.py: ``sorter = DiffSortNet(sorting_network_type=..., size=n, device=...,
    steepness=..., art_lambda=...)``, scores ``model(data).squeeze(2)``, ``BCELoss`` of the permutation
    matrix against ``one_hot(argsort(targets)).transpose(-2, -1)``, Adam ``lr = 10 ** -3.5``; a linear
    scorer on batches of 20 synthetic 28x28 digits (the script's CNN at batch 100)."""
    # logistic_phi's slope is unbounded at d = 0, so two correct float32 implementations (the reference's
    # dense products, fastsort's CPU kernels) differ by percents on single gradient entries: compare in float64
    dtype = torch.float64 if distribution == "logistic_phi" else torch.float32
    g = torch.Generator().manual_seed(n)
    data = [(torch.rand(20, n, 28 * 28, generator=g, dtype=dtype), torch.rand(20, n, generator=g)) for _ in range(3)]
    torch.manual_seed(0)
    model = torch.nn.Linear(28 * 28, 1).to(dtype)
    runs = {}
    for lib, (ds, _) in LIBS.items():
        sorter = ds.DiffSortNet(sorting_network_type=method, size=n, device="cpu", steepness=steepness,
                                art_lambda=0.25, distribution=distribution)
        m = copy.deepcopy(model)
        optim = torch.optim.Adam(m.parameters(), lr=10 ** -3.5)
        losses, grads = [], []
        for x, targets in data:
            outputs = m(x).squeeze(2)
            _, perm_prediction = sorter(outputs)
            perm_ground_truth = torch.nn.functional.one_hot(torch.argsort(targets, dim=-1)).transpose(-2, -1).to(dtype)
            loss = torch.nn.BCELoss()(perm_prediction, perm_ground_truth)
            optim.zero_grad()
            loss.backward()
            grads.append(m.weight.grad.clone())
            optim.step()
            losses.append(loss.detach())
        runs[lib] = losses, grads
    for a, b in zip(runs["fastsort"][0], runs["reference"][0]):
        assert_close(a, b, **F32, what="BCE loss")
    for a, b in zip(runs["fastsort"][1], runs["reference"][1]):
        assert_close(a, b, **F32_GRAD, what="weight gradient")


# --------------------------------------------------------------------------- annealing through attributes
@pytest.mark.parametrize("method, attribute", [
    ("odd_even", "top_k_net.steepness"),
    ("bitonic__non_sparse", "top_k_net.steepness"),
    ("neuralsort", "sort_fn.tau"),
    ("odd_even", "inverse_temperature"),  # read at construction only, in both
    ("neuralsort", "inverse_temperature"),
])
def test_anneal_loss_attributes(method, attribute):
    C = 200
    batches = embedding_batches(4, 32, 16, C, seed=3)
    configure = lambda lib: make_loss(lib, method, 2.0, [.5, 0., 0., 0., .5], C, 16, "cauchy", .25, "sm")  # noqa: E731
    owner_name, _, name = attribute.rpartition(".")

    def anneal(loss_fn, step):
        owner = loss_fn.get_submodule(owner_name) if owner_name else loss_fn
        setattr(owner, name, [2.0, 4.0, 0.5, 9.0][step])

    compare_training(configure, batches, lambda: torch.nn.Linear(16, C), lr=1e-2, anneal=anneal,
                     dtype=torch.float32 if method == "neuralsort" else torch.float64)
    # and the annealed attribute is what the step used: the loss differs from the unannealed one
    if name != "inverse_temperature":
        losses = {}
        outputs = batches[0][0] @ torch.randn(16, C, generator=torch.Generator().manual_seed(0))
        for value in (2.0, 9.0):
            loss_fn = make_loss("fastsort", method, 2.0, [.5, 0., 0., 0., .5], C, 16, "cauchy", .25, "sm")
            setattr(loss_fn.get_submodule(owner_name), name, value)
            losses[value] = loss_fn(outputs, batches[0][1])
        assert not torch.isclose(losses[2.0], losses[9.0])


@pytest.mark.parametrize("lib_attr", ["steepness", "distribution", "art_lambda"])
def test_anneal_network_attributes(lib_attr):
    x = torch.randn(6, 12)
    values = {"steepness": [1.0, 30.0], "distribution": ["logistic", "gaussian"], "art_lambda": [0.1, 0.9]}
    for value in values[lib_attr]:
        outs = []
        for ds, dt in LIBS.values():
            sorter = ds.DiffSortNet("bitonic", 12, distribution="logistic_phi")
            topk = dt.DiffTopkNet("odd_even", 12, 3, distribution="logistic_phi")
            for module in (sorter, topk):
                setattr(module, lib_attr, value)
            outs.append((sorter(x)[1], topk(x)[1]))
        for a, b in zip(*outs):
            assert_close(a, b, **F32, what=f"{lib_attr}={value}")


# --------------------------------------------------------------------------- modules, names, descriptions
def test_reference_module_layout():
    names = {
        "difftopk": ["DiffTopkNet", "topk", "get_sorting_network", "SmoothTopKLoss", "SmoothHardTopKLoss",
                     "SoftSort", "NeuralSort", "TopKCrossEntropyLoss"],
        "diffsort": ["DiffSortNet", "sort", "bitonic_network", "odd_even_network", "get_sorting_network"],
    }
    for pkg, ours in (("difftopk", fs_difftopk), ("diffsort", fs_diffsort)):
        ref = {"difftopk": difftopk, "diffsort": diffsort}[pkg]
        for name in names[pkg]:
            assert hasattr(ref, name) and hasattr(ours, name), name
    import fastsort.compat.difftopk.functional as f
    import fastsort.compat.difftopk.losses as losses
    import fastsort.compat.difftopk.networks as networks
    from fastsort.compat.diffsort import functional, networks as ds_networks

    assert losses.TopKCrossEntropyLoss is fs_difftopk.TopKCrossEntropyLoss
    assert f.topk is fs_difftopk.topk and functional.sort is fs_diffsort.sort
    assert networks.get_sorting_network is fs_difftopk.get_sorting_network
    assert ds_networks.bitonic_network is fs_diffsort.bitonic_network
    for sub in ("difftopk", "neuralsort", "softsort", "smooth_topk"):
        assert hasattr(fs_difftopk, sub) and hasattr(difftopk, sub)
    with pytest.raises(AttributeError, match="fastsort.relaxations.relax_alpha"):
        f.s_best


def test_submodules_import_from_anywhere(tmp_path):
    """``import fastsort.compat.difftopk.functional`` works from outside the source tree."""
    code = ("import fastsort.compat.difftopk.functional, fastsort.compat.difftopk.losses, "
            "fastsort.compat.difftopk.networks, fastsort.compat.diffsort.networks, fastsort.compat.diffsort.functional")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, timeout=120)


def _same_description(a, b):
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            if isinstance(x, torch.Tensor):
                assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.is_sparse == y.is_sparse
                x, y = (x.to_dense(), y.to_dense()) if x.is_sparse else (x, y)
                assert torch.equal(x, y)
            else:
                assert x.dtype == y.dtype and x.shape == y.shape and (x == y).all()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16, 33])
def test_network_descriptions_equal_the_references(n):
    _same_description(fs_diffsort.bitonic_network(n), diffsort.bitonic_network(n))
    _same_description(fs_diffsort.odd_even_network(n), diffsort.odd_even_network(n))
    for kind in ("bitonic", "odd_even"):
        _same_description(fs_diffsort.get_sorting_network(kind, n, "cpu"), diffsort.get_sorting_network(kind, n, "cpu"))
        _same_description(fs_difftopk.get_sorting_network(kind, n, "cpu"), difftopk.get_sorting_network(kind, n, "cpu"))
        ours, theirs = fs_diffsort.DiffSortNet(kind, n), diffsort.DiffSortNet(kind, n)
        _same_description(ours.sorting_network, theirs.sorting_network)
    _same_description(fs_difftopk.networks.sparse_bitonic_network(n), difftopk.networks.sparse_bitonic_network(n))
    _same_description(fs_difftopk.get_sorting_network("sparse_bitonic", n, "cpu"),
                      difftopk.get_sorting_network("sparse_bitonic", n, "cpu"))
    for k in sorted({1, (n + 1) // 2, n}):
        with contextlib.redirect_stdout(io.StringIO()):  # difftopk prints the layer count
            ref = difftopk.networks.sparse_splitter_selection_network(n, k)
            ref_net = difftopk.DiffTopkNet("splitter_selection", n, k, sparse=True).sorting_network
        _same_description(fs_difftopk.networks.sparse_splitter_selection_network(n, k), ref)
        _same_description(fs_difftopk.DiffTopkNet("splitter_selection", n, k, sparse=True).sorting_network, ref_net)


@pytest.mark.parametrize("kind, n", [("bitonic", 13), ("odd_even", 9)])
def test_sort_runs_the_references_description(kind, n):
    """``diffsort.sort`` on diffsort's own (float64) network description."""
    x = torch.randn(4, n, dtype=torch.float64)
    net = [[m.double() for m in layer] for layer in diffsort.get_sorting_network(kind, n, "cpu")]
    for dist in ("cauchy", "logistic_phi"):
        ours, theirs = fs_diffsort.sort(net, x, 7.0, 0.4, dist), diffsort.sort(net, x, 7.0, 0.4, dist)
        for a, b in zip(ours, theirs):
            assert_close(a, b, rtol=1e-9, atol=1e-12, what=f"sort {kind} {dist}")
    _, X = fs_difftopk.topk(net, x, 3, 7.0)  # difftopk.topk on the same description
    assert_close(X, diffsort.sort(net, x, 7.0)[1][:, :, -3:], rtol=1e-9, atol=1e-12, what="topk")


def test_topk_runs_sparse_descriptions():
    """``difftopk.topk(..., sparse=True)`` on difftopk's sparse descriptions (built without torch_sparse),
    against fastsort's dense reference of the same network."""
    x = torch.randn(3, 20, dtype=torch.float64)
    with contextlib.redirect_stdout(io.StringIO()):
        nets = {"splitter_selection": difftopk.get_sorting_network("sparse_splitter_selection", 20, "cpu", 4),
                "bitonic": difftopk.get_sorting_network("sparse_bitonic", 20, "cpu")}
    for kind, net in nets.items():
        _, X = fs_difftopk.topk(net, x, 4, 6.0, sparse=True)
        ref = dense_network(x, kind, "cauchy", 6.0, k=4 if kind == "splitter_selection" else None)[1][:, :, -4:]
        assert_close(X, ref, rtol=1e-9, atol=1e-12, what=kind)


def test_assigned_sorting_network():
    """What the forward runs is the assigned description (a float64 copy: the same; another network of
    the size: that one, as in diffsort); anything else is refused with a clear error."""
    x = torch.randn(3, 8, dtype=torch.float64)
    ours, theirs = fs_diffsort.DiffSortNet("bitonic", 8), diffsort.DiffSortNet("bitonic", 8)
    before = ours(x)[1]
    ours.sorting_network = [[m.double() for m in layer] for layer in ours.sorting_network]
    assert torch.equal(ours(x)[1], before)
    odd_even = [[m.double() for m in layer] for layer in diffsort.get_sorting_network("odd_even", 8, "cpu")]
    ours.sorting_network = theirs.sorting_network = odd_even
    assert_close(ours(x)[1], theirs(x)[1], rtol=1e-9, atol=1e-12, what="assigned odd_even network")
    assert ours.sorting_network is odd_even
    broken = [[m.clone() for m in layer] for layer in odd_even]
    broken[0][2][0, 0] = 0.7
    with pytest.raises(NotImplementedError, match="not made of comparators"):
        ours.sorting_network = broken
    with pytest.raises(NotImplementedError, match="not one of fastsort's networks"):
        ours.sorting_network = odd_even[:-1]
    with pytest.raises(NotImplementedError, match="for a network of 8 wires"):
        ours.sorting_network = diffsort.get_sorting_network("bitonic", 9, "cpu")


def test_descriptions_are_built_lazily():
    """The references build ``O(n^2 D)`` matrices in the constructor (~0.45 GB at n = 1024); compat only
    when ``sorting_network`` is read."""
    net = fs_difftopk.DiffTopkNet("bitonic", 1024, 5)
    assert net._sorting_network is None
    assert net(torch.randn(2, 1024))[1].shape == (2, 1024, 5)
    assert net._sorting_network is None


# --------------------------------------------------------------------------- art_lambda=None
@pytest.mark.parametrize("distribution", ["cauchy", "logistic"])
def test_art_lambda_none_works_without_logistic_phi(distribution):
    x = torch.randn(4, 10)
    for build in (lambda lib: LIBS[lib][0].DiffSortNet("bitonic", 10, art_lambda=None, distribution=distribution),
                  lambda lib: LIBS[lib][1].DiffTopkNet("odd_even", 10, 3, art_lambda=None, distribution=distribution)):
        ours, theirs = build("fastsort")(x)[1], build("reference")(x)[1]
        assert_close(ours, theirs, **F32, what=distribution)


def test_art_lambda_none_with_logistic_phi_fails_at_the_call_as_in_the_references():
    x, labels = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    for lib in LIBS:
        ds, dt = LIBS[lib]
        modules = [ds.DiffSortNet("odd_even", 10, art_lambda=None, distribution="logistic_phi"),  # builds fine
                   dt.DiffTopkNet("bitonic", 10, 3, art_lambda=None, distribution="logistic_phi"),
                   dt.TopKCrossEntropyLoss("odd_even", 2.0, [.5, .5], 10, art_lambda=None,
                                           distribution="logistic_phi")]
        for module in modules:
            with pytest.raises(TypeError, match=None if lib == "reference" else "art_lambda is None"):
                module(x, labels) if isinstance(module, dt.TopKCrossEntropyLoss) else module(x)


# --------------------------------------------------------------------------- a replaced top_k_net / sort_fn
class SoftSortColumns(torch.nn.Module):
    """A user's ``sort_fn``: SoftSort of the negated scores, transposed (diffsort's layout)."""

    def __init__(self, tau):
        super().__init__()
        self.sorter = difftopk.SoftSort(tau=tau)

    def forward(self, x):
        return self.sorter(-x).transpose(-2, -1)


@pytest.mark.parametrize("top1_mode", ["sm", "smce", "sort"])
def test_replaced_top_k_net_and_sort_fn_are_called(top1_mode):
    """User code that swaps the loss's network or sort function (or makes NeuralSort hard) gets
    difftopk's loss of it."""
    C, p_k = 30, [.25, .25, .5]
    x = torch.randn(6, C, dtype=torch.float64)
    labels = torch.arange(6) * 4
    replacements = [("odd_even", "top_k_net", DenseReferenceNet("bitonic", 10, 3, 5.0, "cauchy", .25)),
                    ("neuralsort", "sort_fn", SoftSortColumns(0.7)),
                    ("neuralsort", "sort_fn.hard", True)]
    for method, attr, replacement in replacements:
        losses = []
        for dt in (fs_difftopk, difftopk):
            loss_fn = dt.TopKCrossEntropyLoss(method, 2.0, p_k, C, m=10, distribution="cauchy", top1_mode=top1_mode)
            owner_name, _, name = attr.rpartition(".")
            setattr(loss_fn.get_submodule(owner_name) if owner_name else loss_fn, name, replacement)
            z = x.float() if attr == "sort_fn.hard" else x  # difftopk's NeuralSort runs in float32 only
            losses.append(loss_fn(z, labels))
        tol = dict(rtol=1e-5, atol=1e-6) if attr == "sort_fn.hard" else dict(rtol=1e-9, atol=1e-12)
        assert_close(losses[0], losses[1], **tol, what=f"{method} {attr} {top1_mode}")


# --------------------------------------------------------------------------- smooth top-k, k = 1
@pytest.mark.parametrize("tau", [1.0, 0.5])
@pytest.mark.parametrize("cls", ["SmoothTopKLoss", "SmoothHardTopKLoss"])
def test_smooth_topk_k1_gradient_is_exact(cls, tau):
    """fastsort's gradient is the exact one (float64 central differences).  difftopk's hand-written
    backward takes ``d log e_0 / dx = 1`` instead of 0, so every non-label logit of sample ``b`` gets
    ``-sigmoid(z_b) / B`` more (``z_b`` the softplus argument, ``1 / tau + logsumexp_{c != y}(x_c / tau)
    - x_y / tau`` for k = 1; ~ ``-1 / B`` as ``z_b`` is mostly large); documented in the compat class."""
    B, C = 4, 7
    x = torch.randn(B, C, dtype=torch.float64)
    labels = torch.tensor([0, 3, 6, 2])
    ours, theirs = getattr(fs_difftopk, cls)(C, 1, tau), getattr(difftopk, cls)(C, 1, tau)
    xa = x.clone().requires_grad_()
    ours(xa, labels).backward()
    xb = x.clone().requires_grad_()
    theirs(xb, labels).backward()
    fd = torch.zeros_like(x)
    h = 1e-6
    for i in range(B):
        for j in range(C):
            e = torch.zeros_like(x)
            e[i, j] = h
            fd[i, j] = (ours(x + e, labels) - ours(x - e, labels)) / (2 * h)
    assert_close(xa.grad, fd, rtol=1e-6, atol=1e-8, what="fastsort vs finite differences")
    not_label = torch.ones_like(x, dtype=torch.bool).scatter_(1, labels[:, None], False)
    others = x.masked_fill(~not_label, -math.inf) / tau
    z = 1 / tau + torch.logsumexp(others, 1) - x.gather(1, labels[:, None]).squeeze(1) / tau
    offset = (-torch.sigmoid(z) / B).unsqueeze(1).expand(B, C)
    assert_close((xb.grad - xa.grad)[not_label], offset[not_label], rtol=1e-9, atol=1e-12, what="difftopk's offset")
    assert_close((xb.grad - xa.grad)[~not_label], torch.zeros(B, dtype=torch.float64), atol=1e-12,
                 what="label entries")
    assert math.isclose(float(ours(x, labels)), float(theirs(x, labels)), rel_tol=1e-10)
