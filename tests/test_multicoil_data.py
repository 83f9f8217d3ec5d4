"""Multi-coil data: the demo's simulated coil arrays (normalised birdcage maps, noise at
the stated SNR, the stores of a multi-coil file, seeded), the input stores of multi-coil
data against NumPy (the coil k-space under the mask, the RSS zero-filled image), single-
coil undersampling unchanged, and the config: specs unchanged, the option checked, multi-coil
data going to multi-coil networks (E2E-VarNet) only, in the reconstruction task."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdmri.batch import check_complex
from kdmri.config import load_config, validate
from kdmri.crosschecks import is_multicoil
from kdmri.data import prepare as prepare_module
from kdmri.data.coils import birdcage_sensitivities, coil_settings, simulate_coils
from kdmri.data.prepare import prepare_dataset, undersample_store
from kdmri.data.readers import dataset_spec
from kdmri.data.store import (
    StoreWriter,
    coil_count,
    derive_per_slice_key,
    read_store,
    store_info,
    write_store,
)
from kdmri.errors import KdmriError
from kdmri.keys import SPLITS
from kdmri.masks import MASK_ATTR, create_mask_func
from kdmri.models import build_model
from kdmri.mri import undersample, zero_filled

REPO = Path(__file__).resolve().parents[1]
SIZE, COILS = 32, 4
#: A small demo with simulated coils: one subject per split, a few slices each.
DEMO = {"format": "demo", "size": SIZE, "subjects": {"train": 1, "val": 1, "test": 1},
        "max_slices": 3, "simulated_coils": {"count": COILS, "snr_db": 25, "seed": 3}}


# NumPy's centred orthonormal FFTs, written here (float64)
def np_fft2c(x: np.ndarray) -> np.ndarray:
    shifted = np.fft.ifftshift(x, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def np_ifft2c(k: np.ndarray) -> np.ndarray:
    shifted = np.fft.ifftshift(k, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def np_rss(coil_images: np.ndarray) -> np.ndarray:
    return np.sqrt((np.abs(coil_images.astype(np.complex128)) ** 2).sum(axis=-3))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.abs(x) ** 2)))


def blob(slices: int = 2, shape=(SIZE, SIZE)) -> np.ndarray:
    """Magnitude slices: a bright ellipse with texture on a zero background, max 1."""
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    inside = (y / 0.75) ** 2 + (x / 0.6) ** 2 < 1
    images = [inside * (0.6 + 0.4 * np.cos((s + 2) * x) * np.sin(3 * y)) for s in range(slices)]
    return (np.stack(images) / np.max(images)).astype(np.float32)


@pytest.fixture(scope="module")
def demo_stores(tmp_path_factory) -> SimpleNamespace:
    """The small demo with simulated coils, prepared, and its test split undersampled."""
    root = tmp_path_factory.mktemp("mcdemo")
    cfg = validate({"datasets": {"mc": DEMO}})["datasets"]["mc"]
    info = prepare_dataset("mc", cfg, root / "data", progress=False)
    mask = create_mask_func("random", 4)((SIZE, SIZE), seed=0)
    params = {"kind": "random", "acceleration": 4, "seed": 0}
    undersample_store(root / "data" / "test.h5", mask, root / "in.h5", mask_params=params)
    return SimpleNamespace(root=root, cfg=cfg, info=info, mask=mask, params=params,
                           data=root / "data", inputs=root / "in.h5")


# ---------------------------------------------------------------- the simulation
def test_simulated_maps_are_normalised_birdcage_maps():
    from sigpy.mri import birdcage_maps

    maps = birdcage_sensitivities(8, (SIZE, SIZE))
    assert maps.shape == (8, SIZE, SIZE) and maps.dtype == np.complex64
    power = (np.abs(maps.astype(np.complex128)) ** 2).sum(axis=0)
    on_object = blob(1)[0] > 0
    np.testing.assert_allclose(power[on_object], 1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(power, 1, rtol=0, atol=1e-5)  # and everywhere else
    # sigpy's birdcage maps, up to a positive factor per pixel
    raw = birdcage_maps((8, SIZE, SIZE))
    ratio = maps / raw
    np.testing.assert_allclose(ratio.imag, 0, atol=1e-5)
    np.testing.assert_allclose(ratio.real, ratio.real[:1].repeat(8, axis=0), rtol=1e-4)


def test_noise_free_coil_images_are_the_maps_times_a_smooth_phase_image():
    volume = blob(2)
    coils = simulate_coils(volume, COILS, None, seed=(0, 1))
    assert coils.shape == (2, COILS, SIZE, SIZE) and coils.dtype == np.complex64
    np.testing.assert_allclose(np_rss(coils), volume, rtol=0, atol=1e-5)  # sum |S_c|^2 = 1
    maps = birdcage_sensitivities(COILS, (SIZE, SIZE))
    image = (np.conj(maps)[None] * coils).sum(axis=1)  # S^H S x = x
    inside = volume > 0.2
    np.testing.assert_allclose(np.abs(image)[inside], volume[inside], rtol=0, atol=1e-5)
    assert np.ptp(np.angle(image[0])[inside[0]]) > 0.1  # not a real image
    # smooth: neighbouring pixels of the object differ little in phase
    step = np.abs(np.angle(image[0, 1:] * np.conj(image[0, :-1])))[inside[0, 1:] & inside[0, :-1]]
    assert step.max() < 0.5
    np.testing.assert_allclose(np.angle(image[1] * np.conj(image[0]))[inside[0] & inside[1]], 0,
                               atol=1e-4)  # one phase per volume


@pytest.mark.parametrize("snr_db", [10.0, 30.0])
def test_noise_is_at_the_stated_snr(snr_db):
    """SNR = 20 log10(rms of the noise-free k-space / std of the complex noise), measured
    from a noisy and a noise-free volume of the same seed (the same phase)."""
    volume = blob(2)
    clean = np_fft2c(simulate_coils(volume, COILS, None, seed=(4, 2)))
    noisy = np_fft2c(simulate_coils(volume, COILS, snr_db, seed=(4, 2)))
    noise = noisy - clean
    measured = 20 * np.log10(rms(clean) / rms(noise))
    assert abs(measured - snr_db) < 0.5
    assert abs(noise.real.std() / noise.imag.std() - 1) < 0.1  # circular: half in each part
    assert abs(noise.mean()) < 0.1 * rms(noise)
    other = np_fft2c(simulate_coils(volume, COILS, snr_db, seed=(4, 3))) - clean
    assert not np.allclose(other, noise)


def test_the_same_seed_gives_the_same_coils():
    volume = blob(2)
    first = simulate_coils(volume, COILS, 20, seed=(1, 2, 0, 5))
    np.testing.assert_array_equal(first, simulate_coils(volume, COILS, 20, seed=(1, 2, 0, 5)))
    assert not np.array_equal(first, simulate_coils(volume, COILS, 20, seed=(1, 2, 0, 6)))


# ----------------------------------------------------------- the prepared stores
def test_the_demo_with_coils_is_stored_as_a_multicoil_file(demo_stores):
    info = demo_stores.info
    assert info["coils"] == COILS and info["complex"] is False
    assert info["sensitivity_maps"] is None
    assert json.loads((demo_stores.data / "info.json").read_text())["coils"] == COILS
    for split in SPLITS:
        path = demo_stores.data / f"{split}.h5"
        keys = store_info(path)["keys"]
        n = keys["target"][0][0]
        assert 1 <= n <= DEMO["max_slices"]
        assert keys["target"] == ((n, SIZE, SIZE), "float32")
        assert keys["coils"] == ((n, COILS, SIZE, SIZE), "complex64")
        assert coil_count(path) == COILS
        store = read_store(path, ["target", "coils"])
        kspace = np_fft2c(store["coils"])  # the coil k-space, transformed here
        np.testing.assert_allclose(store["target"], np_rss(np_ifft2c(kspace)), rtol=0, atol=1e-5)
        assert store["target"].max() <= 1 + 1e-6  # normalised by the volume's maximum
        assert np.abs(store["coils"].imag).max() > 0.01  # complex coil images


def test_the_same_seed_prepares_the_same_data(demo_stores, tmp_path):
    prepare_dataset("mc", demo_stores.cfg, tmp_path / "again", progress=False)
    for split in SPLITS:
        first = read_store(demo_stores.data / f"{split}.h5", ["target", "coils"])
        again = read_store(tmp_path / "again" / f"{split}.h5", ["target", "coils"])
        for key in ("target", "coils"):
            np.testing.assert_array_equal(again[key], first[key])


# ------------------------------------------------------------- undersampling
def test_the_input_store_holds_the_masked_coil_kspace_and_the_rss_zero_filled_image(demo_stores):
    data = read_store(demo_stores.data / "test.h5", ["target", "coils", "volume", "slice"])
    inputs = read_store(demo_stores.inputs, ["kspace", "zf", "target", "mask", "volume", "slice"])
    n = data["target"].shape[0]
    keys = store_info(demo_stores.inputs)["keys"]
    assert set(keys) == {"kspace", "zf", "target", "mask", "volume", "slice"}
    assert keys["kspace"] == ((n, COILS, SIZE, SIZE), "complex64")
    assert keys["zf"] == ((n, SIZE, SIZE), "float32")
    assert keys["mask"] == ((SIZE, SIZE), "float32")
    mask = demo_stores.mask
    expected = mask * np_fft2c(data["coils"])
    np.testing.assert_allclose(inputs["kspace"], expected, rtol=0, atol=1e-5)
    assert (inputs["kspace"][..., mask == 0] == 0).all()  # nothing where not sampled
    assert (np.abs(inputs["kspace"][..., mask == 1]) > 0).mean() > 0.99
    np.testing.assert_allclose(inputs["zf"], np_rss(np_ifft2c(expected)), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(inputs["target"], data["target"])
    np.testing.assert_array_equal(inputs["mask"], mask)
    for key in ("volume", "slice", "volume_names"):
        np.testing.assert_array_equal(inputs[key], data[key])
    attrs = store_info(demo_stores.inputs)["attrs"]
    assert json.loads(attrs[MASK_ATTR]) == demo_stores.params
    assert coil_count(demo_stores.inputs) == COILS
    assert not np.allclose(inputs["zf"], inputs["target"], atol=1e-2)  # aliased


def test_multicoil_undersampling_in_blocks_keeps_the_maps(tmp_path, monkeypatch):
    """Five slices in blocks of two (the last one short), with maps: every slice as NumPy
    computes it, and the maps copied."""
    rng = np.random.default_rng(7)
    shape = (5, 3, 12, 10)
    coils = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    with StoreWriter(tmp_path / "d.h5", (12, 10), coils=3) as writer:
        writer.add_volume("a", np_rss(coils[:2]).astype(np.float32), coils=coils[:2])
        writer.add_volume("b", np_rss(coils[2:]).astype(np.float32), coils=coils[2:])
    derive_per_slice_key(tmp_path / "d.h5", "maps", "coils", lambda c: c / 3, "complex64")
    monkeypatch.setattr(prepare_module, "MULTICOIL_BLOCK", 2)
    mask = np.zeros((12, 10), np.float32)
    mask[:, [0, 4, 5, 8]] = 1
    undersample_store(tmp_path / "d.h5", mask, tmp_path / "in.h5")
    inputs = read_store(tmp_path / "in.h5", ["kspace", "zf", "target", "maps", "slice"])
    expected = mask * np_fft2c(coils)
    np.testing.assert_allclose(inputs["kspace"], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(inputs["zf"], np_rss(np_ifft2c(expected)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(inputs["target"], np_rss(coils), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(inputs["maps"], read_store(tmp_path / "d.h5", ["maps"])["maps"])
    np.testing.assert_array_equal(inputs["slice"], [0, 1, 0, 1, 2])
    assert list(inputs["volume_names"]) == ["a", "b"]
    with pytest.raises(KdmriError, match=r"d.h5: images of \(12, 10\) but the mask is \(12, 12\)"):
        undersample_store(tmp_path / "d.h5", np.ones((12, 12), np.float32), tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize("complex_target", [False, True])
def test_single_coil_undersampling_is_unchanged(tmp_path, complex_target):
    """The input store of single-coil data is, byte for byte, what the single-coil path
    has always written: zf = IFFT(m * FFT(target)) with write_store."""
    rng = np.random.default_rng(3)
    target = rng.random((3, 16, 16)).astype(np.float32)
    if complex_target:
        target = (target * np.exp(1j * rng.random((3, 16, 16)))).astype(np.complex64)
    with StoreWriter(tmp_path / "d.h5", (16, 16), dtype=str(target.dtype)) as writer:
        writer.add_volume("v", target)
    mask = create_mask_func("equispaced", 4)((16, 16), seed=0)
    params = {"kind": "equispaced", "acceleration": 4}
    undersample_store(tmp_path / "d.h5", mask, tmp_path / "in.h5", mask_params=params)
    zf = zero_filled(undersample(torch.from_numpy(target), torch.from_numpy(mask)))
    write_store(tmp_path / "reference.h5",
                {"zf": zf.numpy(), "target": target, "mask": mask.astype(np.float32),
                 "volume": np.zeros(3, np.int32), "slice": np.arange(3, dtype=np.int32)},
                attrs={"volume_names": ["v"], MASK_ATTR: json.dumps(params, sort_keys=True)})
    assert (tmp_path / "in.h5").read_bytes() == (tmp_path / "reference.h5").read_bytes()
    assert set(store_info(tmp_path / "in.h5")["keys"]) == {"zf", "target", "mask", "volume", "slice"}


def test_a_multicoil_input_store_goes_to_multicoil_networks_only(demo_stores, stores):
    single = stores.inputs_dir / "train.h5"
    with pytest.raises(KdmriError, match=r"in.h5: multi-coil inputs \(4 coils, key 'kspace'\); "
                                         r"the network takes single-coil images"):
        check_complex(demo_stores.inputs, SimpleNamespace(complex=False))
    check_complex(single, SimpleNamespace(complex=False))  # as before
    varnet = build_model({"family": "varnet", "cascades": 1, "chans": 2, "pools": 1,
                          "sens_chans": 2, "sens_pools": 1})
    check_complex(demo_stores.inputs, varnet)
    with pytest.raises(KdmriError, match=r"train.h5: single-coil inputs .*the network "
                                         r"reconstructs multi-coil k-space"):
        check_complex(single, varnet)


# ------------------------------------------------------------------ the config
def test_the_prepare_spec_of_an_existing_dataset_is_unchanged():
    demo = validate({"datasets": {"demo": {"format": "demo", "size": 64}}})["datasets"]["demo"]
    assert dataset_spec(demo) == {
        "contrast": "t1", "format": "demo", "max_slices": 100000, "noise": 0.0,
        "normalization": {"kind": "max", "percentile": 99.5}, "orientations": ["axial"],
        "seed": 0, "size": 64, "subjects": {"test": 2, "train": 8, "val": 2}, "voxel_mm": 2.0,
    }
    assert "simulated_coils" not in demo  # no default: the config is as it was
    off = validate({"datasets": {"d": {"format": "demo", "simulated_coils": {"count": 0}}}})
    assert coil_settings(off["datasets"]["d"]) is None
    assert "simulated_coils" not in dataset_spec(off["datasets"]["d"])
    on = validate({"datasets": {"d": {"format": "demo", "simulated_coils": {}}}})["datasets"]["d"]
    assert dataset_spec(on)["simulated_coils"] == {"count": 8, "snr_db": 30, "seed": 0}
    config = load_config(REPO / "config" / "config.yaml")
    assert not any(is_multicoil(d) for d in config["datasets"].values())
    assert all("simulated_coils" not in d for d in config["datasets"].values())


def test_multicoil_datasets_are_known_and_the_option_is_checked():
    def check(datasets: dict, tasks: dict | None = None) -> None:
        validate({"datasets": datasets, "tasks": tasks or {}})

    coils = {"count": 4}
    demo = validate({"datasets": {"d": {"format": "demo", "simulated_coils": coils}}})
    assert is_multicoil(demo["datasets"]["d"])
    assert not is_multicoil(validate({"datasets": {"d": {"format": "demo"}}})["datasets"]["d"])
    fastmri = {"format": "fastmri", "path": "/x", "source": "kspace"}
    assert not is_multicoil(validate({"datasets": {"f": fastmri}})["datasets"]["f"])
    with pytest.raises(KdmriError, match=r"'datasets.f.simulated_coils': simulated coils are an "
                                         r"option of format demo, found format 'fastmri'"):
        check({"f": {**fastmri, "simulated_coils": coils}})
    with pytest.raises(KdmriError, match=r"'datasets.d.noise': 0.05 with simulated_coils"):
        check({"d": {"format": "demo", "noise": 0.05, "simulated_coils": coils}})
    check({"d": {"format": "demo", "noise": 0.05, "simulated_coils": {"count": 0}}})  # off
    with pytest.raises(KdmriError, match=r"'tasks.recon.teacher.complex': dataset 'd' "
                                         r"\(tasks.recon.datasets.0\) is multi-coil"):
        check({"d": {"format": "demo", "simulated_coils": coils}}, {"recon": {"datasets": ["d"]}})
    with pytest.raises(KdmriError, match=r"'tasks.recon.evaluate_on.0': 'm' is multi-coil "
                                         r"data and 'd' \(trained on\) magnitude"):
        check({"d": {"format": "demo"}, "m": {"format": "demo", "simulated_coils": coils}},
              {"recon": {"datasets": ["d"], "evaluate_on": ["m"]}})
    with pytest.raises(KdmriError, match=r"simulated_coils.*snr_db"):
        check({"d": {"format": "demo", "simulated_coils": {"snr_db": "high"}}})


VARNET = {"family": "varnet", "cascades": 2, "chans": 4}


def test_multicoil_data_and_multicoil_networks_go_together():
    """A multi-coil dataset trains and evaluates E2E-VarNet in the reconstruction task;
    every other pairing is refused in one line naming the key."""
    def check(data: dict | None = None, models: list | None = None, **task) -> dict:
        return validate({"datasets": data or {"m": {"format": "demo", "simulated_coils": {}}},
                         "tasks": {"recon": {"datasets": ["m"], **task}} if "sr" not in task
                         else {"sr": {"datasets": ["m"], **task["sr"]}},
                         "models": models or ["zf", "teacher", "student", "kd", "kd_fitnets"]})

    nets = {"teacher": VARNET, "student": {**VARNET, "chans": 2}, "pairs": [[3, 3]]}
    config = check(**nets)
    assert config["tasks"]["recon"]["teacher"]["complex"] is False
    check(**nets, compression={"students": {"s": {"net": {**VARNET, "chans": 3}}}})
    # a single-coil network on multi-coil data without the options it takes them with,
    # named by its key (DC-CNN and the U-Net: tests/test_multicoil_sense.py)
    with pytest.raises(KdmriError, match=r"'tasks.recon.student.complex': dataset 'm' "
                                         r"\(tasks.recon.datasets.0\) is multi-coil "
                                         r"\(simulated_coils\); family dccnn takes it with "
                                         r"complex: true"):
        check(teacher=VARNET)
    with pytest.raises(KdmriError, match=r"'tasks.recon.compression.students.s.net.dc': .*"
                                         r"family unet takes it with dc: false"):
        check(**nets, compression={"students": {"s": {"net": {"family": "unet"}}}})
    with pytest.raises(KdmriError, match=r"which tasks.recon.compression.students.s.net "
                                         r"\(family python\) does not take"):
        check(**nets, compression={"students": {"s": {"net": {"family": "python",
                                                               "target": "m:C"}}}})
    # E2E-VarNet on single-coil data; a fastmri k-space dataset is left to its stores
    with pytest.raises(KdmriError, match=r"'tasks.recon.teacher.family': family varnet "
                                         r"reconstructs multi-coil k-space, and dataset 'd' "
                                         r"\(tasks.recon.datasets.0\) is single-coil"):
        check({"d": {"format": "demo"}}, datasets=["d"], **nets)
    fastmri = {"f": {"format": "fastmri", "path": "/x", "source": "kspace"}}
    check(fastmri, datasets=["f"], **nets)
    # super-resolution, complex networks and the student-friendly teacher
    with pytest.raises(KdmriError, match=r"'tasks.sr.datasets.0': dataset 'm' is multi-coil "
                                         r"\(simulated_coils\), which task 'sr' does not take"):
        check(sr={})
    with pytest.raises(KdmriError, match=r"'tasks.sr.teacher.family': family varnet "
                                         r"reconstructs multi-coil k-space in task\(s\) recon, "
                                         r"not in 'sr'"):
        check(sr={"teacher": VARNET, "student": VARNET})
    with pytest.raises(KdmriError, match=r"'tasks.recon.teacher.complex': family varnet "
                                         r".*complex must be false"):
        check(**{**nets, "teacher": {**VARNET, "complex": True}})
    with pytest.raises(KdmriError, match=r"'tasks.recon.teacher.family': kd_sft needs the "
                                         r"student-friendly teacher.*family varnet reconstructs "
                                         r"multi-coil k-space and is not supported"):
        check(models=["zf", "kd_sft"], **nets)
