import numpy as np
import pytest

from flanbuild.pipeline import mixer
from flanbuild.errors import FlanbuildError
from flanbuild.catalog.tasks import Cluster

CLUSTERS = {c.name: c for c in [
    Cluster("nli", also_remove=("paraphrase",)), Cluster("paraphrase", also_remove=("nli",)),
    Cluster("reading_comprehension", also_remove=("rcc",)), Cluster("commonsense", also_remove=("rcc",)),
    Cluster("rcc", also_remove=("reading_comprehension", "commonsense")), Cluster("sentiment"),
]}


def test_flan_extra_removals():
    assert mixer.excluded_clusters(CLUSTERS, ("nli",), True) == ({"nli"}, {"paraphrase"})
    assert mixer.excluded_clusters(CLUSTERS, ("commonsense",), True) == ({"commonsense"}, {"rcc"})
    assert mixer.excluded_clusters(CLUSTERS, ("rcc",), True) == ({"rcc"}, {"reading_comprehension", "commonsense"})
    assert mixer.excluded_clusters(CLUSTERS, ("nli", "paraphrase"), True) == ({"nli", "paraphrase"}, set())
    assert mixer.excluded_clusters(CLUSTERS, ("nli",), False) == ({"nli"}, set())
    with pytest.raises(FlanbuildError, match="unknown held-out cluster 'nope'"):
        mixer.excluded_clusters(CLUSTERS, ("nope",), True)
    with pytest.raises(FlanbuildError, match="at least one"):
        mixer.excluded_clusters(CLUSTERS, (), True)


def test_examples_proportional_with_caps():
    available = {"big": 100_000, "mid": 5_000, "small": 1_000}
    plan = mixer.plan_train(available, dict.fromkeys(available, "x"), mixer.MixConfig())
    assert plan["big"].used == 30_000  # task cap
    assert plan["big"].rate == 3_000 and plan["mid"].rate == 3_000 and plan["small"].rate == 1_000  # rate cap
    assert {n: p.count for n, p in plan.items()} == {"big": 3000, "mid": 3000, "small": 1000}
    assert sum(p.share for p in plan.values()) == pytest.approx(1.0)
    assert plan["small"].share == pytest.approx(1000 / 7000)


def test_no_caps_temperature_and_weights():
    available = {"a": 9000, "b": 1000}
    flat = mixer.plan_train(available, {"a": "x", "b": "y"}, mixer.MixConfig(rate_cap=0, task_cap=0))
    assert flat["a"].share == pytest.approx(0.9)
    hot = mixer.plan_train(available, {"a": "x", "b": "y"}, mixer.MixConfig(rate_cap=0, temperature=2.0))
    assert hot["a"].share == pytest.approx(3 / 4)  # sqrt(9000) : sqrt(1000) = 3 : 1
    w = mixer.plan_train(available, {"a": "x", "b": "y"},
                         mixer.MixConfig(rate_cap=0, task_weights={"b": 9.0}, train_size=1000))
    assert w["a"].share == pytest.approx(0.5) and w["a"].count + w["b"].count == 1000
    assert w["b"].count == 500
    cl = mixer.plan_train(available, {"a": "x", "b": "y"}, mixer.MixConfig(rate_cap=0, cluster_weights={"x": 1 / 9}))
    assert cl["a"].share == pytest.approx(0.5)


def test_apportion_sums_exactly():
    plan = mixer.plan_train({f"t{i}": 7 + i for i in range(7)}, {f"t{i}": "c" for i in range(7)},
                            mixer.MixConfig(train_size=1001, max_epochs=0))
    assert sum(p.count for p in plan.values()) == 1001


@pytest.mark.parametrize("kw", [dict(task_cap=-1), dict(temperature=0), dict(task_weights={"a": 0}),
                                dict(cluster_weights={"x": -1.0}), dict(train_size=0)])
def test_bad_mix_config(kw):
    with pytest.raises(FlanbuildError):
        mixer.MixConfig(**kw)


def test_no_training_data_is_an_error():
    with pytest.raises(FlanbuildError, match="no training data"):
        mixer.plan_train({"a": 0}, {"a": "x"}, mixer.MixConfig())


def test_select_rows_seeded_capped_and_repeating():
    valid = np.arange(0, 1000, 2)  # 500 rows survive a filter
    a = mixer.select_rows(0, "t", "train", valid, used=300, count=100)
    assert len(a) == 100 and np.all(np.diff(a) > 0) and set(a) <= set(valid)
    assert np.array_equal(a, mixer.select_rows(0, "t", "train", valid, 300, 100))
    assert not np.array_equal(a, mixer.select_rows(1, "t", "train", valid, 300, 100))
    pool = set(mixer.select_rows(0, "t", "train", valid, 300, 300))
    assert set(a) <= pool  # the sample nests inside the capped pool
    rep = mixer.select_rows(0, "t", "train", valid, used=300, count=750)
    values, counts = np.unique(rep, return_counts=True)
    assert len(values) == 300 and sorted(set(counts)) == [2, 3] and counts.sum() == 750


def test_select_rows_equals_the_ranking_it_defines():
    """The partition-based selection gives exactly the rows of the full seeded ranking."""
    rng = np.random.default_rng(7)
    for n in (1, 2, 17, 1000):
        valid = np.sort(rng.choice(5 * n, size=n, replace=False))
        if n > 2:
            valid = valid[::-1].copy()  # usable rows come sorted, but the selection must not depend on it
        for used, count in ((n, n), (n, 3 * n + 1), (max(1, n // 3), n), (n + 5, 2), (1, 4), (n, 1)):
            pool = mixer.ranked_pool(0, "t", "train", valid, used)
            full, rest = divmod(count, len(pool))
            expected = np.sort(np.concatenate([np.tile(pool, full), pool[:rest]]))
            assert np.array_equal(mixer.select_rows(0, "t", "train", valid, used, count), expected), (n, used, count)
        for cap in (1, n // 2, n - 1):
            if cap:
                expected = np.sort(mixer.ranked_pool(0, "t", "eval", valid, cap))
                assert np.array_equal(mixer.select_eval(0, "t", valid, cap), expected)


def test_select_eval_cap():
    valid = np.arange(50)
    assert np.array_equal(mixer.select_eval(0, "t", valid, 0), valid)
    capped = mixer.select_eval(0, "t", valid, 10)
    assert len(capped) == 10 and np.all(np.diff(capped) > 0)


def test_submixture_weights_and_max_epochs():
    from flanbuild.catalog.recipes import Submixture

    subs = {"a": Submixture("a", weight=0.75, task_cap=100), "b": Submixture("b", weight=0.25, task_cap=10)}
    available = {"a1": 500, "a2": 50, "b1": 1000}
    groups = {"a1": "a", "a2": "a", "b1": "b"}
    plan = mixer.plan_train(available, dict.fromkeys(available, "x"), mixer.MixConfig(max_epochs=0), groups, subs)
    assert plan["a1"].used == 100 and plan["b1"].used == 10  # per-submixture task caps
    assert plan["a1"].share + plan["a2"].share == pytest.approx(0.75)
    assert plan["a1"].share == pytest.approx(0.75 * 100 / 150) and plan["b1"].share == pytest.approx(0.25)
    total = 160  # sum of the capped rates
    assert sum(p.count for p in plan.values()) == total and plan["b1"].count == 40  # b1 repeats 4 times
    limited = mixer.plan_train(available, dict.fromkeys(available, "x"), mixer.MixConfig(max_epochs=2), groups, subs)
    assert limited["b1"].count == 20 and limited["a1"].count == plan["a1"].count
    overridden = mixer.plan_train(available, dict.fromkeys(available, "x"), mixer.MixConfig(task_cap=0, max_epochs=0), groups, subs)
    assert overridden["a1"].used == 500
