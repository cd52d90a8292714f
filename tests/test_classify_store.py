"""ClassifierStore: atomic JSON + .npy persistence, crash leftovers, corruption, name safety;
and the few-shot head itself (no encoder needed: synthetic embeddings)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from app.errors import ApiError
from app.services.classifiers import ClassifierStore, cross_validate, train_head


def _head(seed=0, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2, dim))
    x = np.vstack([c + 0.3 * rng.standard_normal((10, dim)) for c in centres])
    y = np.repeat([0, 1], 10)
    return x, y, centres, train_head(x, y, ["a", "b"], centres, prior_weight=1.0)


def test_head_learns_and_cross_validates():
    x, y, centres, head = _head()
    p = head.predict_proba(x / np.linalg.norm(x, axis=1, keepdims=True))
    assert np.allclose(p.sum(axis=1), 1) and (p.argmax(axis=1) == y).mean() == 1.0
    cv = cross_validate(x, y, ["a", "b"], centres, 1.0)
    assert cv["folds"] == 5 and cv["accuracy"] == 1.0 and cv["per_label"]["a"]["support"] == 10
    # three labels: multinomial regression
    rng = np.random.default_rng(1)
    c3 = rng.standard_normal((3, 8))
    x3 = np.vstack([c + 0.2 * rng.standard_normal((4, 8)) for c in c3])
    h3 = train_head(x3, np.repeat([0, 1, 2], 4), ["a", "b", "c"], c3, prior_weight=0.0)
    assert h3.coef.shape == (3, 8) and (h3.predict_proba(x3).argmax(1) == np.repeat([0, 1, 2], 4)).all()


def test_save_load_round_trip_without_pickle(tmp_path):
    x, _, _, head = _head()
    store = ClassifierStore(tmp_path)
    meta = store.save("clf_1", {"labels": ["a", "b"], "model": "m"}, head)
    assert meta["created"] is True
    files = sorted(p.relative_to(tmp_path / "classifiers" / "clf_1").as_posix()
                   for p in (tmp_path / "classifiers" / "clf_1").rglob("*") if p.is_file())
    v = meta["version"]
    assert files == ["classifier.json"] + [f"v-{v}/{k}.npy" for k in
                                           ("coef", "intercept", "label_vectors", "prototypes")]
    fresh = ClassifierStore(tmp_path)          # as after a restart
    meta2, head2 = fresh.load("clf_1")
    assert meta2["version"] == v and np.allclose(head2.predict_proba(x), head.predict_proba(x))
    again = fresh.save("clf_1", {"labels": ["a", "b"], "model": "m"}, head)
    assert again["created"] is False and again["version"] != v
    assert not (tmp_path / "classifiers" / "clf_1" / f"v-{v}").exists()   # old version gone


def test_crash_leftovers_are_cleaned_and_never_visible(tmp_path):
    _, _, _, head = _head()
    store = ClassifierStore(tmp_path)
    meta = store.save("keep", {"labels": ["a", "b"], "model": "m"}, head)
    root = tmp_path / "classifiers"
    # a crash during a retrain: a staged version and a tmp json, never committed
    (root / "keep" / ".tmp-abc").mkdir()
    (root / "keep" / "v-deadbeef").mkdir()
    (root / "keep" / ".classifier.json.tmp").write_text("{}")
    # a crash during a first training: a directory without classifier.json
    (root / "half").mkdir()
    (root / "half" / "v-1").mkdir()
    (root / ".trash-1").mkdir()
    assert [m["name"] for m in store.list()] == ["keep"]
    with pytest.raises(ApiError) as err:
        store.meta("half")
    assert err.value.status == 404
    ClassifierStore(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["keep"]
    assert sorted(p.name for p in (root / "keep").iterdir()) == ["classifier.json", f"v-{meta['version']}"]


def test_corrupt_arrays_are_detected(tmp_path):
    _, _, _, head = _head()
    store = ClassifierStore(tmp_path)
    meta = store.save("c", {"labels": ["a", "b"], "model": "m"}, head)
    path = tmp_path / "classifiers" / "c" / f"v-{meta['version']}" / "coef.npy"
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ApiError) as err:
        ClassifierStore(tmp_path).load("c")
    assert err.value.status == 503 and err.value.type == "classifier_corrupt"
    (tmp_path / "classifiers" / "c" / "classifier.json").write_text('{"format": 1}')
    with pytest.raises(ApiError) as err:
        ClassifierStore(tmp_path).meta("c")      # incomplete: treated as absent (and cleaned up)
    assert err.value.status == 404
    store.save("c", {"labels": ["a", "b"], "model": "m"}, head)
    (tmp_path / "classifiers" / "c" / "classifier.json").write_text("not json")
    with pytest.raises(ApiError) as err:
        ClassifierStore(tmp_path).meta("c")
    assert err.value.status == 404


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 65, ".hidden", "a\x00b", "a b", None])
def test_names_never_reach_the_file_system(tmp_path, name):
    store = ClassifierStore(tmp_path)
    _, _, _, head = _head()
    with pytest.raises(ApiError) as err:
        store.save(name, {"labels": ["a", "b"]}, head)
    assert err.value.status == 400 and err.value.type == "invalid_name"
    with pytest.raises(ApiError):
        store.delete(name)
    assert list((tmp_path / "classifiers").iterdir()) == []
    assert not (tmp_path / "x").exists()


def test_metadata_is_json(tmp_path):
    _, _, _, head = _head()
    ClassifierStore(tmp_path).save("j", {"labels": ["a", "b"], "model": "m"}, head)
    meta = json.loads((tmp_path / "classifiers" / "j" / "classifier.json").read_text())
    assert meta["format"] == 1 and set(meta["arrays"]) == {"coef", "intercept", "prototypes",
                                                           "label_vectors"}
