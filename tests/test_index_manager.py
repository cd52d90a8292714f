"""CollectionManager: name validation before any file system access, idempotent create,
conflicts, deletion, reopening, leftovers and unreadable collections."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from index import (CollectionConfig, CollectionConflict, CollectionManager, CollectionNotFound,
                   DocumentIn, IndexConfig, InvalidConfig, InvalidName, StorageError)
from index.collection import Collection

BAD_NAMES = ["", "../evil", "..", ".", "a/b", "/abs", "a\\b", "nul\x00byte", "x" * 65, "a b",
             "ünï", "name\n", ".hidden", "a.b", "~", "${HOME}", 5, None, b"bytes"]


def entries(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_never_reach_the_file_system(name: object, tmp_path: Path) -> None:
    data = tmp_path / "data"
    manager = CollectionManager(data)
    before = entries(tmp_path)
    for call in (lambda: manager.create(name, {"dim": 4}),  # type: ignore[arg-type]
                 lambda: manager.get(name),  # type: ignore[arg-type]
                 lambda: manager.delete(name)):  # type: ignore[arg-type]
        with pytest.raises(InvalidName) as info:
            call()
        assert info.value.http_status == 400 and info.value.type == "invalid_name"
    assert entries(tmp_path) == before
    manager.close_all()


def test_good_names(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path)
    for name in ("a", "A-b_9", "x" * 64, "-", "_"):
        c, created = manager.create(name, {"dim": 4})
        assert created and c.directory == tmp_path / "collections" / name
    assert manager.names() == sorted(["a", "A-b_9", "x" * 64, "-", "_"])
    manager.close_all()


def test_create_is_idempotent_and_conflicts_are_reported(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path)
    config = {"dim": 8, "metric": "dot", "model": "minilm",
              "index": {"type": "hnsw", "M": 16, "efSearch": 64}}
    c1, created1 = manager.create("docs", config)
    c2, created2 = manager.create("docs", {**config, "index": {"type": "hnsw", "m": 16,
                                                               "ef_search": 64,
                                                               "ef_construction": 200}})
    assert created1 and not created2 and c1 is c2
    for different in ({**config, "dim": 9}, {**config, "metric": "cosine"},
                      {**config, "model": "mpnet"}, {**config, "index": {"type": "flat"}},
                      {**config, "index": {"type": "hnsw", "M": 32}}):
        with pytest.raises(CollectionConflict) as info:
            manager.create("docs", different)
        assert info.value.http_status == 409
        assert info.value.details["existing"] == c1.config.to_dict()
    manager.close_all()
    # Still idempotent after a restart (the config was persisted).
    manager = CollectionManager(tmp_path)
    c3, created3 = manager.create("docs", CollectionConfig(8, "dot", "minilm",
                                                           IndexConfig("hnsw", {"m": 16,
                                                                                "ef_search": 64})))
    assert not created3 and c3.uid == c1.uid and c3.created_at == c1.created_at
    manager.close_all()


@pytest.mark.parametrize("config, fragment", [
    ({"dim": 0}, "dim must be"), ({"dim": "8"}, "dim must be"), ({}, "dim is required"),
    ({"dim": 8, "metric": "hamming"}, "unknown metric"),
    ({"dim": 8, "index": {"type": "lsh"}}, "unknown index type"),
    ({"dim": 8, "index": {"type": "hnsw", "nlist": 4}}, "unknown parameter 'nlist'"),
    ({"dim": 8, "index": {"type": "hnsw", "M": 1}}, "between 4 and 128"),
    ({"dim": 8, "index": {"type": "ivf", "nlist": 4, "nprobe": 8}}, "nprobe cannot exceed"),
    ({"dim": 8, "colour": "red"}, "unknown collection settings: colour"),
])
def test_invalid_configs(config: dict, fragment: str, tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path)
    with pytest.raises(InvalidConfig, match=fragment):
        manager.create("c", config)
    assert manager.names() == [] and not (tmp_path / "collections" / "c").exists()


def test_delete_removes_files_and_invalidates_handles(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("gone", {"dim": 4})
    c.upsert([DocumentIn(id="a", text="a", vector=np.ones(4))])
    keep, _ = manager.create("keep", {"dim": 4})
    manager.delete("gone")
    assert not (tmp_path / "collections" / "gone").exists()
    assert sorted(os.listdir(tmp_path / "collections")) == ["keep"]
    with pytest.raises(CollectionNotFound):
        manager.get("gone")
    with pytest.raises(CollectionNotFound):
        manager.delete("gone")
    with pytest.raises(CollectionNotFound):  # an old handle is dead, not silently writable
        c.upsert([DocumentIn(id="b", text="b", vector=np.ones(4))])
    with pytest.raises(CollectionNotFound):
        c.search(np.ones(4))
    # The name can be reused with another config: a new, empty collection.
    again, created = manager.create("gone", {"dim": 6})
    assert created and again.count() == 0 and again.uid != c.uid
    assert [x.name for x in manager.list()] == ["gone", "keep"]
    manager.close_all()


def test_reopen_leftovers_and_unreadable_collections(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("ok", {"dim": 4})
    c.upsert([DocumentIn(id="a", text="a", vector=np.ones(4), metadata={"x": 1})])
    manager.create("broken", {"dim": 4})
    manager.close_all()
    root = tmp_path / "collections"
    (root / ".tmp-123").mkdir()  # an interrupted create
    (root / ".trash-456").mkdir()  # an interrupted delete
    (root / "broken" / "config.json").write_text("{not json")
    manager = CollectionManager(tmp_path)
    assert manager.names() == ["ok"] and "broken" in manager.failed
    assert not (root / ".tmp-123").exists() and not (root / ".trash-456").exists()
    assert manager.get("ok").get_document("a").metadata == {"x": 1}
    with pytest.raises(StorageError) as info:
        manager.create("broken", {"dim": 4})
    assert info.value.http_status == 503
    manager.delete("broken")  # an unreadable collection can still be deleted
    assert not (root / "broken").exists()
    record = json.loads((root / "ok" / "config.json").read_text())
    assert record["name"] == "ok" and record["config"]["dim"] == 4
    manager.close_all()


def test_a_collection_cannot_be_opened_twice(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path)
    c, _ = manager.create("c", {"dim": 4})
    with pytest.raises(StorageError, match="open in another process"):
        Collection(c.directory, "c", c.config, uid=c.uid, created_at=c.created_at)
    second = CollectionManager(tmp_path)  # e.g. a second server on the same data dir
    assert second.names() == [] and "c" in second.failed
    manager.close_all()
