"""`dinolab curate` and its stages: search against brute force, planted duplicates, decontamination,
retrieval, hierarchical balancing quotas, the command line end to end on a tiny generated pool
(duplicates, an unreadable file, bad inputs as one-line errors), and the curated list trained on
(data.file_list, --symlinks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_faiss, random_rgb, save_image
from PIL import Image

import dinolab.curate.search as search_module
from dinolab.cli import main
from dinolab.config import ConfigError
from dinolab.curate import (
    balanced_quotas,
    balanced_sample,
    deduplicate,
    duplicate_pairs,
    hierarchical_kmeans,
    knn,
    normalized,
    retrieve_clusters,
    retrieve_per_image,
    too_close,
)
from dinolab.curate.pipeline import GRID_GAP, THUMBNAIL
from dinolab.data import ImageList, build_dataset
from dinolab.data.datasets import read_file_list
from dinolab.data.stats import measure_images, resolve_from_images
from dinolab.hub import dinov2_vits14, save_backbone
from dinolab.hub.export import MissingExtraError
from dinolab.train import fit

BACKENDS = ["exact", pytest.param("faiss", marks=needs_faiss)]


def unit_rows(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return normalized(np.random.default_rng(seed).standard_normal((n, dim)))


def with_planted_copies(base: np.ndarray, originals: np.ndarray, noise: float, seed: int = 1) -> np.ndarray:
    """`base` followed by a slightly perturbed copy of each row in `originals`."""
    rng = np.random.default_rng(seed)
    copies = base[originals] + noise * rng.standard_normal((len(originals), base.shape[1])).astype(np.float32)
    return normalized(np.concatenate([base, copies]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_is_brute_force_top_k(backend: str) -> None:
    base, queries = unit_rows(300), unit_rows(25, seed=1)
    sims, idx = knn(queries, base, 7, backend, block=64)  # several query and base blocks
    brute = queries @ base.T
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(brute, expected, 1), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_pairs_are_the_thresholded_knn_graph(backend: str) -> None:
    x = with_planted_copies(unit_rows(150), np.arange(0, 150, 5), noise=0.2)
    brute = x @ x.T
    np.fill_diagonal(brute, -np.inf)
    nearest = np.argsort(-brute, axis=1, kind="stable")[:, :3]
    expected = {(i, int(j)) for i in range(len(x)) for j in nearest[i] if brute[i, j] >= 0.9}
    found = duplicate_pairs(x, 0.9, neighbors=3, backend=backend)
    assert {tuple(p) for p in found.tolist()} == expected and len(found) == len(expected) > 0


def test_a_group_larger_than_the_neighbour_count_is_found_whole() -> None:
    x = unit_rows(40)
    x[10:30] = x[10]  # 20 identical rows, 4 neighbours each
    assert deduplicate(x, 0.99, neighbors=4).groups == [list(range(10, 30))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_planted_near_duplicates_are_found(backend: str) -> None:
    originals = np.arange(3, 200, 10)
    x = with_planted_copies(unit_rows(200, dim=64), originals, noise=0.02)
    result = deduplicate(x, threshold=0.95, backend=backend)
    assert result.groups == [[int(o), 200 + i] for i, o in enumerate(originals)]
    assert len(result.keep) == 200 and set(result.keep) == set(range(200))  # every copy dropped, originals kept


def test_exact_duplicate_group_keeps_its_first_member() -> None:
    x = unit_rows(50)
    x[[17, 40]] = x[5]
    result = deduplicate(x, threshold=0.99)
    assert result.groups == [[5, 17, 40]]
    assert 5 in result.keep and 17 not in result.keep and 40 not in result.keep and len(result.keep) == 48


def test_threshold_outside_cosine_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        deduplicate(unit_rows(5), threshold=1.5)


def test_too_close_flags_copies_of_reference_images() -> None:
    pool = unit_rows(100)
    reference = normalized(pool[[10, 20]] + 0.01)
    close, nearest = too_close(pool, reference, 0.95)
    assert np.flatnonzero(close).tolist() == [10, 20] and nearest[[10, 20]].tolist() == [0, 1]



def test_too_close_over_several_reference_sets_equals_one_concatenated_search() -> None:
    pool = unit_rows(100)
    first, second = normalized(pool[[10, 20]] + 0.01), normalized(pool[[20, 30]] + 0.02)
    together = too_close(pool, np.concatenate([first, second]), 0.95)
    separately = too_close(pool, [first, second], 0.95)
    for a, b in zip(together, separately, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.flatnonzero(separately[0]).tolist() == [10, 20, 30]


def test_per_image_retrieval_is_the_union_of_true_neighbours() -> None:
    pool, seed = unit_rows(400), unit_rows(12, seed=2)
    expected = np.unique(np.argsort(-(seed @ pool.T), axis=1)[:, :4])
    np.testing.assert_array_equal(retrieve_per_image(pool, seed, 4), expected)


def test_cluster_retrieval_stays_in_the_seed_region() -> None:
    rng = np.random.default_rng(0)
    centers = normalized(rng.standard_normal((4, 16))) * 10
    pool = normalized(np.repeat(centers, 50, axis=0) + rng.standard_normal((200, 16)))  # 4 blobs of 50
    seed = normalized(centers[[1]] + rng.standard_normal((5, 16)))
    kept = retrieve_clusters(pool, seed, clusters=4)
    assert kept.tolist() == list(range(50, 100))
    assert len(retrieve_clusters(pool, seed, clusters=4, per_cluster=10)) == 10


def test_balanced_quotas_fill_evenly() -> None:
    assert balanced_quotas([1, 5, 10, 3], 12).tolist() == [1, 4, 4, 3]
    assert balanced_quotas([100, 100, 1], 11).tolist() == [5, 5, 1]
    assert balanced_quotas([4, 4], 8).tolist() == [4, 4]
    with pytest.raises(ValueError):
        balanced_quotas([2, 2], 5)


def test_balanced_sample_follows_the_cluster_quotas() -> None:
    # 6 leaves of sizes 40, 5, 30, 3, 3, 100 under 2 top clusters {0, 1, 2} and {3, 4, 5}
    leaf_sizes = [40, 5, 30, 3, 3, 100]
    leaf = np.repeat(np.arange(6), leaf_sizes)
    top = np.array([0, 0, 0, 1, 1, 1])[leaf]
    sample = balanced_sample([leaf, top], target=60, random_seed=3)
    assert len(sample) == len(set(sample)) == 60
    assert np.bincount(top[sample]).tolist() == [30, 30]  # the target split evenly over the top clusters
    assert np.bincount(leaf[sample], minlength=6).tolist() == [13, 5, 12, 3, 3, 24]  # then over their leaves
    assert balanced_quotas([40, 5, 30], 30).tolist() == [13, 5, 12]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hierarchical_kmeans_nests_levels(backend: str) -> None:
    x = unit_rows(300)
    leaf, top = hierarchical_kmeans(x, [20, 4], backend)
    assert len(np.unique(leaf)) <= 20 and len(np.unique(top)) <= 4
    for c in np.unique(leaf):  # every leaf cluster lies inside one top cluster
        assert len(np.unique(top[leaf == c])) == 1
    with pytest.raises(ValueError, match="finest"):
        hierarchical_kmeans(x, [4, 20])


def test_balanced_target_larger_than_the_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="--target 11"):
        balanced_sample([np.zeros(10, dtype=int)], target=11)


# ---------------------------------------------------------------- the command line, on image folders


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    # without LayerScale: at random init its 1e-5 gains make every [CLS] token the same
    model = dinov2_vits14(depth=1, embed_dim=32, num_heads=2, img_size=28, layerscale_init=None)
    return save_backbone(model, tmp_path / "tiny.safetensors")


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    """12 random images, image 3 copied twice (exact duplicates), and one file that is not an image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pool"
    images = [random_rgb(rng, 32, 32) for _ in range(12)]
    for i, image in enumerate(images):
        save_image(root / f"img{i:02d}.png", image)
    save_image(root / "copies" / "a.png", images[3])
    save_image(root / "copies" / "b.png", images[3])
    (root / "broken.png").write_bytes(b"not a png")
    save_image(tmp_path / "benchmark" / "leak.png", images[7])
    save_image(tmp_path / "seed" / "s.png", images[9])
    return root


def run_curate(pool: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    """A random-init model puts all images close together (cosine ~0.98 for random noise): only exact copies
    are above the 0.9999 thresholds used here."""
    return main(["curate", "--pool", str(pool), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--image-size", "28", "--device", "cpu", "--precision", "fp32", "--quiet",
                 "--dedup-threshold", "0.9999", "--exclude-threshold", "0.9999", *extra])


def test_cli_deduplicates_decontaminates_and_skips_unreadable(pool: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean.txt"
    assert run_curate(pool, checkpoint, out, "--exclude", str(tmp_path / "benchmark")) == 0
    kept = out.read_text().splitlines()
    expected = [pool / "copies/a.png"] + [pool / f"img{i:02d}.png" for i in range(12) if i not in (3, 7)]
    assert kept == [str(p) for p in expected]  # one of the 3 copies (the first path) kept, the leak gone
    report = json.loads((tmp_path / "clean.report.json").read_text())
    assert report["sizes"] == {"pool": 15, "embedded": 14, "deduplicated": 12, "decontaminated": 11}
    assert report["unreadable"] == [str(pool / "broken.png")]
    assert report["duplicate_examples"] == [[str(pool / "copies/a.png"), str(pool / "copies/b.png"),
                                             str(pool / "img03.png")]]
    assert report["excluded_examples"] == [[str(pool / "img07.png"), str(tmp_path / "benchmark" / "leak.png")]]
    assert set(report["seconds"]) == {"embedded", "deduplicated", "decontaminated"}
    assert (tmp_path / "clean.duplicates.txt").read_text().count("\t") == 2
    # one picture row per example: the duplicate group of 3, the leak beside the evaluation image it matched
    assert report["outputs"]["duplicates_picture"] == str(tmp_path / "clean.duplicates.png")
    for name, rows in (("duplicates", 1), ("excluded", 1)):
        with Image.open(tmp_path / f"clean.{name}.png") as picture:
            assert picture.height == rows * (THUMBNAIL + GRID_GAP)
    assert "retrieved_picture" not in report["outputs"] and not (tmp_path / "clean.retrieved.png").exists()


def test_cli_retrieves_and_balances_reusing_embeddings(pool: Path, checkpoint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "curated.txt"
    assert run_curate(pool, checkpoint, out, "--seed", str(tmp_path / "seed"), "--retrieve", "image",
                      "--neighbors", "3") == 0
    kept = out.read_text().splitlines()
    assert len(kept) == 3 and str(pool / "img09.png") in kept  # the seed's own copy is its nearest
    report = json.loads((tmp_path / "curated.report.json").read_text())
    assert report["retrieved_examples"][0][:2] == [str(tmp_path / "seed" / "s.png"), str(pool / "img09.png")]
    assert (tmp_path / "curated.retrieved.png").is_file()
    monkeypatch.setattr("dinolab.curate.pipeline.embed_folder", lambda *a, **k: pytest.fail("embedded again"))
    assert run_curate(pool, checkpoint, out, "--balance", "kmeans", "--clusters", "4,2", "--target", "5") == 0
    assert len(set(out.read_text().splitlines())) == 5
    assert json.loads((tmp_path / "curated.report.json").read_text())["sizes"]["balanced"] == 5
    assert run_curate(pool, checkpoint, out, "--seed", str(tmp_path / "seed"), "--retrieval-clusters", "3") == 0
    report = json.loads((tmp_path / "curated.report.json").read_text())
    assert report["retrieval"] == "cluster" and str(pool / "img09.png") in out.read_text().splitlines()


@pytest.mark.parametrize(("case", "message"), [
    ("empty pool", "pool folder: no images found"),
    ("empty seed", "seed folder: no images found"),
    ("not a backbone", "not a ViT backbone"),
    ("target too large", "--target 100 is more than the 12 images"),
    ("faiss missing", "pip install 'dinolab[faiss]'"),
    ("target without balance", "--balance kmeans and --target N go together"),
    ("everything excluded", "within --exclude-threshold"),
    ("levels that grow", "--clusters go from the finest level to the coarsest"),
])
def test_cli_bad_input_is_a_one_line_error(case: str, message: str, pool: Path, checkpoint: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    extra = {
        "empty seed": ["--seed", str(tmp_path / "empty")],
        "target too large": ["--balance", "kmeans", "--clusters", "4", "--target", "100"],
        "faiss missing": ["--search", "faiss"],
        "target without balance": ["--target", "3"],
        "everything excluded": ["--exclude", str(pool)],
        "levels that grow": ["--balance", "kmeans", "--clusters", "4,20", "--target", "3"],
    }.get(case, [])
    if case == "not a backbone":
        from safetensors.numpy import save_file

        save_file({"head.weight": np.zeros((2, 2), dtype=np.float32)}, str(tmp_path / "head.safetensors"))
        checkpoint = tmp_path / "head.safetensors"
    if case == "faiss missing":
        monkeypatch.setattr(search_module, "faiss_available", lambda: False)
    source = tmp_path / "empty" if case == "empty pool" else pool
    assert run_curate(source, checkpoint, tmp_path / "out.txt", *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("dinolab: error:") and message in err and "Traceback" not in err


def test_missing_faiss_still_searches_exactly_with_a_hint_then_an_error_for_large_pools(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(search_module, "faiss_available", lambda: False)
    x = unit_rows(60)
    assert search_module.choose_index("auto", len(x)) == "exact" and not caplog.records
    assert len(knn(x, x, 2)[1]) == 60
    monkeypatch.setattr(search_module, "FAISS_MIN_BASE", 50)
    assert search_module.choose_index("auto", len(x)) == "exact"
    assert "pip install 'dinolab[faiss]'" in caplog.text
    monkeypatch.setattr(search_module, "IVF_MIN_BASE", 60)  # where exact search would take hours
    with pytest.raises(MissingExtraError, match=r"pip install 'dinolab\[faiss\]', or insist with --search exact"):
        search_module.choose_index("auto", len(x))
    assert search_module.choose_index("exact", len(x)) == "exact"
    with pytest.raises(MissingExtraError, match="--search ivf needs faiss"):
        search_module.choose_index("ivf", len(x))


@needs_faiss
def test_the_index_follows_the_pool_size(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("FAISS_MIN_BASE", 100), ("IVF_MIN_BASE", 1000), ("IVFPQ_MIN_BASE", 20_000)):
        monkeypatch.setattr(search_module, name, value)
    choose = search_module.choose_index
    assert [choose("auto", n) for n in (99, 100, 999, 1000, 19_999, 20_000)] == [
        "exact", "flat", "flat", "ivf", "ivf", "ivfpq"]
    assert choose("faiss", 10) == "flat" and choose("ivf", 10) == "ivf"
    assert choose("ivfpq", 5000) == "ivf"  # too few vectors to train PQ's codebooks
    assert search_module.ivf_lists(1_000_000) == 4000 and search_module.ivf_lists(100) == 2
    assert search_module.pq_subvectors(384) == 96 and search_module.pq_subvectors(30) == 6


def clustered_rows(n: int, dim: int = 16, centers: int = 100, seed: int = 0) -> np.ndarray:
    """Unit rows around `centers` random directions: the structure real embeddings have and IVF relies on."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dim))
    return normalized(means[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, dim)))


@needs_faiss
@pytest.mark.parametrize(("kind", "min_recall"), [("ivf", 0.95), ("ivfpq", 0.9)])
def test_approximate_indexes_find_most_true_neighbours_with_exact_similarities(kind: str, min_recall: float) -> None:
    base, queries = clustered_rows(10_000), clustered_rows(300, seed=1)
    k = 10
    exact_sims, exact_idx = knn(queries, base, k, "exact")
    sims, idx = knn(queries, base, k, kind)  # nprobe 32 of 256 lists
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(idx.tolist(), exact_idx.tolist(), strict=True)])
    assert recall >= min_recall, recall
    found = idx >= 0
    np.testing.assert_allclose(sims[found], np.einsum("qd,qkd->qk", queries, base[np.maximum(idx, 0)])[found],
                               atol=1e-5)  # what is reported is the true similarity (re-scored for PQ)
    assert (np.diff(sims, axis=1) <= 1e-6).all() and (sims[:, 0] <= exact_sims[:, 0] + 1e-5).all()
    if kind == "ivf":  # nprobe trades time for recall (the same lists for IVF-PQ, which takes longer to build)
        low = knn(queries, base, k, kind, nprobe=1)[1]
        assert np.mean([len(set(a) & set(b)) / k for a, b in zip(low.tolist(), exact_idx.tolist(),
                                                                 strict=True)]) < recall


# ---------------------------------------------------------------- the file list trains


def test_curated_list_trains_on_exactly_its_images(pool: Path, checkpoint: Path, tmp_path: Path, make_config) -> None:
    out = tmp_path / "curated.txt"
    assert run_curate(pool, checkpoint, out) == 0
    listed = out.read_text().splitlines()
    assert len(listed) == 12 and all(Path(p).is_absolute() for p in listed)  # 15 files: 2 copies, 1 unreadable
    cfg = make_config("listed", data={"dataset": "folder", "file_list": str(out), "path": ""},
                      optim={"epochs": 1, "batch_size": 2, "warmup_epochs": 0})
    assert [str(f) for f in build_dataset(cfg.data, 1).files] == listed
    result = fit(cfg, quiet=True)
    metrics = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 6  # 12 images / batch 2: the folder's 14 readable images would make 7 steps


def test_file_list_resolves_relative_paths_against_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png"):
        save_image(tmp_path / "data" / name, random_rgb(rng))
    listing = tmp_path / "data" / "list.txt"
    listing.write_text("a.png\n\nsub/b.png\n")
    monkeypatch.chdir(tmp_path)  # not the list's folder
    dataset = ImageList("data/list.txt", size=16)
    assert dataset.files == [Path("data/a.png"), Path("data/sub/b.png")] and dataset.labels.tolist() == [-1, -1]
    assert dataset[1][0].shape == (3, 16, 16)
    assert measure_images(read_file_list(listing)).total == 2  # what data.auto measures for a list


@pytest.mark.parametrize(("content", "message"), [
    (None, r"does not exist \(write one with dinolab curate --out\)"),
    ("\n  \n", "names no images: it is empty"),
    ("a.png\nb.png\nc.png\nd.png\ne.png\nkept.png\n", "5 of the 6 files listed in"),
])
def test_bad_file_lists_say_what_is_wrong(content: str | None, message: str, tmp_path: Path) -> None:
    save_image(tmp_path / "kept.png", random_rgb(np.random.default_rng(0)))
    listing = tmp_path / "list.txt"
    if content is not None:
        listing.write_text(content)
    with pytest.raises((FileNotFoundError, ValueError), match=message) as err:
        ImageList(listing, size=16)
    if "5 of" in message:  # the first few missing files are named, not all
        assert str(tmp_path / "c.png") in str(err.value) and "d.png" not in str(err.value)


def test_data_auto_measures_the_list_and_names_a_missing_one(make_config, tmp_path: Path) -> None:
    cfg = make_config(data={"dataset": "folder", "auto": True, "file_list": str(tmp_path / "gone.txt"), "path": ""})
    with pytest.raises(FileNotFoundError, match="file list .*gone.txt does not exist"):
        resolve_from_images(cfg, quiet=True)


def test_file_list_needs_the_folder_dataset(make_config) -> None:
    with pytest.raises(ConfigError, match="data.file_list"):
        make_config(data={"file_list": "curated.txt"})  # the tiny config's dataset is fmnist


def test_symlink_folder_mirrors_the_list_and_is_replaced_by_a_rerun(pool: Path, checkpoint: Path,
                                                                    tmp_path: Path) -> None:
    out, links = tmp_path / "curated.txt", tmp_path / "links"
    assert run_curate(pool, checkpoint, out, "--symlinks", str(links)) == 0
    linked = sorted(p for p in links.rglob("*") if p.is_symlink())
    assert [str(p.readlink()) for p in linked] == out.read_text().splitlines()
    assert (links / "copies" / "a.png").is_symlink()  # at its path under the pool
    assert run_curate(pool, checkpoint, out, "--symlinks", str(links), "--balance", "kmeans", "--clusters", "4",
                      "--target", "5") == 0
    assert len([p for p in links.rglob("*") if p.is_symlink()]) == 5  # the first run's links are gone
    save_image(links / "real.png", random_rgb(np.random.default_rng(0)))
    assert run_curate(pool, checkpoint, out, "--symlinks", str(links)) == 1  # would be trained on too


def test_curate_writes_absolute_paths_for_a_relative_pool(pool: Path, checkpoint: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_curate(Path("pool"), checkpoint, Path("lists/curated.txt")) == 0
    listed = (tmp_path / "lists" / "curated.txt").read_text().splitlines()
    assert listed[0] == str(pool / "copies" / "a.png")
    assert len(ImageList(tmp_path / "lists" / "curated.txt", size=16)) == 12  # read from elsewhere, still found
