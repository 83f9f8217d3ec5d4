"""Tests for kdmri.data.store (HDF5 slice stores) and kdmri.io.atomic_path."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from kdmri.data.store import SliceDataset, StoreWriter, read_store, store_info, write_store
from kdmri.errors import KdmriError
from kdmri.io import atomic_path


def arrays(n=5, shape=(8, 6), seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    zf = (rng.standard_normal((n, *shape)) + 1j * rng.standard_normal((n, *shape))).astype(
        np.complex64
    )
    return {
        "target": rng.random((n, *shape)).astype(np.float32),
        "zf": zf,
        "mask": (rng.random(shape) < 0.5).astype(np.float32),
        "volume": np.array([0, 0, 0, 1, 1][:n], dtype=np.int32),
        "slice": np.array([0, 1, 2, 0, 1][:n], dtype=np.int32),
    }


def raises_naming(path, match=None):
    """pytest.raises(KdmriError) whose message must also contain ``path``."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(KdmriError, match=match)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            assert str(path) in str(self.info.value), str(self.info.value)
            return handled

    return _Check()


def test_write_read_round_trip(tmp_path):
    data = arrays()
    path = tmp_path / "sub" / "store.h5"
    attrs = {"volume_names": ["a", "b"], "dataset": "demo", "pairs": [[3, 2]]}
    write_store(path, data, attrs=attrs)
    back = read_store(path, ["target", "zf", "mask", "volume", "slice"])
    for key, value in data.items():
        assert back[key].dtype == value.dtype, key
        np.testing.assert_array_equal(back[key], value)
    assert back["volume_names"].tolist() == ["a", "b"]
    info = store_info(path)
    assert info["n_slices"] == 5
    assert info["keys"]["zf"] == ((5, 8, 6), "complex64")
    assert info["attrs"] == {"volume_names": ["a", "b"], "dataset": "demo", "pairs": [[3, 2]]}
    with h5py.File(path, "r") as handle:  # one slice per chunk, the mask in one chunk
        assert handle["target"].chunks == (1, 8, 6)
        assert handle["mask"].chunks == (8, 6)
        assert all(handle[key].fletcher32 for key in data)  # every byte checksummed
    assert [p.name for p in path.parent.iterdir()] == ["store.h5"]


def test_store_writer_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    first, second = rng.random((3, 8, 8)), rng.random((2, 8, 8))
    path = tmp_path / "train.h5"
    with StoreWriter(path, (8, 8), attrs={"dataset": "tiny"}) as writer:
        writer.add_volume("sub-a", first)
        writer.add_volume("sub-b", second)
        assert not path.exists()  # renamed into place only when complete
    back = read_store(path, ["target", "volume", "slice"])
    np.testing.assert_allclose(back["target"], np.concatenate([first, second]).astype(np.float32))
    assert back["target"].dtype == np.float32
    assert back["volume"].tolist() == [0, 0, 0, 1, 1]
    assert back["slice"].tolist() == [0, 1, 2, 0, 1]
    assert back["volume_names"].tolist() == ["sub-a", "sub-b"]
    assert store_info(path)["attrs"]["dataset"] == "tiny"


def test_store_writer_rejects_wrong_shape_and_leaves_nothing(tmp_path):
    path = tmp_path / "train.h5"
    with pytest.raises(KdmriError, match="sub-x"), StoreWriter(path, (8, 8)) as writer:
        writer.add_volume("sub-x", np.zeros((2, 8, 9)))
    assert list(tmp_path.iterdir()) == []


def test_fixture_stores(stores):
    info = store_info(stores.inputs_dir / "train.h5")
    assert info["keys"]["zf"] == ((8, 16, 16), "complex64")
    assert info["keys"]["mask"] == ((16, 16), "float32")
    back = read_store(stores.inputs_dir / "train.h5", ["target", "mask"])
    np.testing.assert_array_equal(back["target"], stores.targets["train"])
    np.testing.assert_array_equal(back["mask"], stores.mask)
    assert back["volume_names"].tolist() == ["train-00", "train-01"]


@pytest.mark.parametrize("keys", [["zf", "target"], ["target"]])
def test_slice_dataset_in_memory_and_chunked_agree(stores, keys):
    path = stores.inputs_dir / "train.h5"
    memory = SliceDataset(path, keys=keys, extra=["mask"], in_memory=True)
    chunked = SliceDataset(path, keys=keys, extra=["mask"], in_memory=False)
    assert memory.in_memory and not chunked.in_memory
    assert len(memory) == len(chunked) == 8
    order = np.random.default_rng(0).permutation(8)
    for indices in (order[:3], order[3:], order):
        a, b = memory.batch(indices), chunked.batch(indices)
        assert sorted(a) == sorted(b) == sorted(keys)
        for key in keys:
            assert a[key].dtype == b[key].dtype
            assert torch.equal(a[key], b[key]), key
    target = torch.from_numpy(stores.targets["train"])
    if "target" in keys:
        assert torch.equal(chunked.batch(order)["target"], target[order])
    assert torch.equal(memory.extra["mask"], chunked.extra["mask"])
    assert torch.equal(memory[5]["target"], chunked[5]["target"])
    np.testing.assert_array_equal(memory.volume, [0, 0, 0, 0, 1, 1, 1, 1])


def test_slice_dataset_pickles_without_handle(stores):
    dataset = SliceDataset(stores.inputs_dir / "val.h5", keys=["target"], in_memory=False)
    first = dataset.batch([2, 0])
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handle is None
    assert torch.equal(clone.batch([2, 0])["target"], first["target"])


@pytest.mark.parametrize("in_memory", [True, False])
def test_missing_key_raises_naming_file(tmp_path, in_memory):
    data = arrays()
    del data["zf"]
    path = tmp_path / "nozf.h5"
    write_store(path, data)
    with raises_naming(path, match="missing key 'zf'"):
        read_store(path, ["zf"])
    with raises_naming(path, match="missing key 'zf'"):
        SliceDataset(path, keys=["zf"], in_memory=in_memory)
    with raises_naming(path, match="missing key 'zf'"):
        SliceDataset(path, keys=["target"], extra=["mask", "zf"], in_memory=in_memory)


@pytest.mark.parametrize("in_memory", [True, False])
def test_wrong_ndim_raises_naming_file(tmp_path, in_memory):
    data = arrays()
    data["target"] = data["target"][:, 0]  # (N, W): one dim short
    path = tmp_path / "flat.h5"
    write_store(path, data)
    with raises_naming(path, match="'target' must have 3 dims"):
        read_store(path, ["target"])
    with raises_naming(path, match="'target' must have 3 dims"):
        SliceDataset(path, keys=["target"], in_memory=in_memory)


@pytest.mark.parametrize("in_memory", [True, False])
def test_nan_values_raise_naming_file(tmp_path, in_memory):
    data = arrays()
    data["target"][3, 2, 1] = np.nan
    path = tmp_path / "nan.h5"
    write_store(path, data)
    with raises_naming(path, match="NaN"):
        read_store(path, ["target"])
    with raises_naming(path, match="NaN"):
        SliceDataset(path, keys=["target"], in_memory=in_memory).batch([0, 3])
    data = arrays()
    data["zf"][1, 0, 0] = complex(np.inf, 0)
    write_store(path, data)
    with raises_naming(path, match="NaN or infinite"):
        read_store(path, ["zf"])


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_file_raises_naming_file(tmp_path, fraction):
    path = tmp_path / "truncated.h5"
    write_store(path, arrays(n=5, shape=(32, 32)))
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(int(size * fraction))
    with raises_naming(path):
        read_store(path, ["target", "zf"])
    with raises_naming(path):
        SliceDataset(path, keys=["target", "zf"]).batch(np.arange(5))
    with raises_naming(path):
        SliceDataset(path, keys=["target", "zf"], in_memory=False).batch(np.arange(5))


def test_non_hdf5_file_raises_naming_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not an HDF5 file\n")
    with raises_naming(path, match="not a readable HDF5 file"):
        read_store(path, ["target"])
    with raises_naming(path, match="not a readable HDF5 file"):
        SliceDataset(path, keys=["target"])
    with raises_naming(path, match="not a readable HDF5 file"):
        store_info(path)


def test_missing_file_raises_naming_file(tmp_path):
    path = tmp_path / "absent.h5"
    with raises_naming(path, match="not found"):
        read_store(path, ["target"])
    with raises_naming(path, match="not found"):
        SliceDataset(path, keys=["target"])


def test_per_slice_lengths_must_agree(tmp_path):
    data = arrays()
    data["slice"] = data["slice"][:4]
    path = tmp_path / "ragged.h5"
    write_store(path, data)
    with raises_naming(path, match="differ in length"):
        read_store(path, ["target", "slice"])


# ---------------------------------------------------------------------- atomic_path
def test_atomic_path_leaves_no_file_when_body_raises(tmp_path):
    path = tmp_path / "out" / "file.txt"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(path) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("boom")
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_atomic_path_leaves_old_file_untouched_when_body_raises(tmp_path):
    path = tmp_path / "file.h5"
    write_store(path, arrays())
    before = path.read_bytes()
    with pytest.raises(ValueError), atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as handle:
            handle["target"] = np.zeros((1, 2, 2))
        raise ValueError("interrupted")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["file.h5"]
    # a failing write_store leaves the old store as it was, too
    with pytest.raises(TypeError):
        write_store(path, {"target": np.zeros((2, 2, 2)), "bad": object()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["file.h5"]


def test_atomic_path_replaces_on_success(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")
    with atomic_path(path) as tmp:
        assert tmp != path and tmp.parent == path.parent
        tmp.write_text("new")
        assert path.read_text() == "old"
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]
