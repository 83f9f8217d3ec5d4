"""DC-CNN and the U-Net on multi-coil data: DC-CNN on the SENSE coil-combined image with
multi-coil data consistency (its forward against a NumPy re-computation), the U-Net
without DC on the RSS zero-filled image (against NumPy's RSS), ESPIRiT maps of the demo's
simulated coils, the batches the input stores give, and the refusals of the config checks
and of the stores."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from kdmri.apply import apply_model
from kdmri.batch import check_complex, forward, input_keys, make_batch
from kdmri.checkpoints import write_model_file
from kdmri.config import validate
from kdmri.data.prepare import prepare_dataset, undersample_store
from kdmri.data.store import SliceDataset, read_store
from kdmri.errors import KdmriError
from kdmri.export import export_model
from kdmri.inference import run_model
from kdmri.masks import create_mask_func
from kdmri.models import DCCNN, build_model, coil_input, flops_per_slice
from tests.oracles import np_fft2c, np_ifft2c

CPU = torch.device("cpu")
SIZE, COILS = 32, 4
DEMO = {"format": "demo", "size": SIZE, "subjects": {"train": 1, "val": 1, "test": 1},
        "max_slices": 3, "simulated_coils": {"count": COILS, "snr_db": 30, "seed": 1},
        "sensitivity_maps": {"kind": "espirit"}}
DCCNN_NET = {"family": "dccnn", "cascades": 2, "convs": 3, "channels": 4, "complex": True}
UNET_NET = {"family": "unet", "chans": 2, "num_pool_layers": 2, "dc": False}
VARNET_NET = {"family": "varnet", "cascades": 2, "chans": 2, "pools": 2, "sens_chans": 2,
              "sens_pools": 1}


def np_sense_adjoint(kspace: np.ndarray, maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``sum_c conj(S_c) F^H (m y_c)``, (N, C, H, W) -> (N, H, W), float64."""
    return (maps.conj() * np_ifft2c(kspace * mask)).sum(axis=1)


def np_rss(coil_images: np.ndarray) -> np.ndarray:
    return np.sqrt((np.abs(coil_images) ** 2).sum(axis=1))


def random_maps(rng, n: int, coils: int, size: int) -> np.ndarray:
    """Random maps normalised over the coils, zero on a border (as ESPIRiT's crop)."""
    maps = rng.standard_normal((n, coils, size, size)) + 1j * rng.standard_normal(
        (n, coils, size, size))
    maps /= np.sqrt((np.abs(maps) ** 2).sum(axis=1, keepdims=True))
    maps[..., :2, :] = 0
    return maps


def test_a_multicoil_dccnn_is_its_cascades_and_multicoil_dc_written_out():
    """The forward on a SENSE batch: A^H y as two channels, then per cascade x + CNN(x)
    and ``x <- sum_c conj(S_c) F^H (m y_c + (1 - m) F(S_c x))``, then |x|; NumPy does the
    FFTs, the coil sums and the blend in float64 (the CNN: the model's own layers)."""
    rng = np.random.default_rng(0)
    n, h = 2, 16
    torch.manual_seed(0)
    model = DCCNN(cascades=2, convs=3, channels=4, complex=True).eval()
    with torch.no_grad():
        for p in model.parameters():  # not the near-identity initialisation
            p.normal_(0, 0.2)
    maps = random_maps(rng, n, 3, h)
    mask = (rng.random(h) < 0.4).astype(np.float64)
    mask[h // 2 - 2:h // 2 + 2] = 1
    mask = np.broadcast_to(mask, (h, h)).copy()
    kspace = (rng.standard_normal((n, 3, h, h)) + 1j * rng.standard_normal((n, 3, h, h))) * mask
    target = np.abs(rng.standard_normal((n, h, h)))

    batch = make_batch(None, torch.from_numpy(mask).float(), torch.from_numpy(target).float(),
                       CPU, complex=True, kspace=torch.from_numpy(kspace).to(torch.complex64),
                       maps=torch.from_numpy(maps).to(torch.complex64))
    with torch.no_grad():
        output = forward(model, batch)
    assert output.shape == (n, 1, h, h) and output.dtype == torch.float32
    assert batch.target.shape == (n, 1, h, h)

    x = np_sense_adjoint(kspace, maps, mask)
    np.testing.assert_allclose(batch.image[:, 0].numpy() + 1j * batch.image[:, 1].numpy(), x,
                               rtol=1e-5, atol=1e-5)
    for cascade in model.cascades:
        channels = torch.from_numpy(np.stack([x.real, x.imag], axis=1)).float()
        with torch.no_grad():
            cnn = cascade.cnn(channels).double().numpy()
        x = x + cnn[:, 0] + 1j * cnn[:, 1]
        coil_kspace = np_fft2c(maps * x[:, None])
        blended = mask * kspace + (1 - mask) * coil_kspace
        x = (maps.conj() * np_ifft2c(blended)).sum(axis=1)
    np.testing.assert_allclose(output[:, 0].numpy(), np.abs(x), rtol=1e-4, atol=1e-4)


def test_a_dccnn_without_complex_or_a_batch_without_maps_is_refused():
    kspace = torch.zeros(1, 2, 8, 8, dtype=torch.complex64)
    maps = torch.ones(1, 2, 8, 8, dtype=torch.complex64) / np.sqrt(2)
    with pytest.raises(KdmriError, match="complex: false and maps"):
        make_batch(None, torch.ones(8, 8), None, CPU, kspace=kspace, maps=maps)
    with pytest.raises(KdmriError, match="complex: true and no maps"):
        make_batch(None, torch.ones(8, 8), None, CPU, complex=True, kspace=kspace)
    with pytest.raises(KdmriError, match="build it with complex: true"):
        DCCNN(cascades=1, convs=2, channels=2)(torch.zeros(1, 1, 8, 8), kspace,
                                               torch.ones(8, 8), maps)


def test_the_coil_input_follows_the_options():
    assert coil_input(DCCNN_NET) == "sense" and coil_input({**DCCNN_NET, "complex": False}) is None
    assert coil_input(UNET_NET) == "rss" and coil_input({**UNET_NET, "dc": True}) is None
    assert coil_input({"family": "unet"}) is None  # dc defaults to true
    assert coil_input({"family": "varnet"}) == "kspace"
    assert coil_input({"family": "vdsr"}) is None
    assert coil_input(build_model(DCCNN_NET)) == "sense"
    assert coil_input(build_model(UNET_NET)) == "rss"


def test_a_dccnn_counts_the_same_flops_on_multicoil_data():
    model = build_model(DCCNN_NET)
    assert flops_per_slice(model, 16, 16, coils=4) == flops_per_slice(model, 16, 16) > 0


def test_apply_and_export_refuse_a_network_trained_on_multicoil_data(tmp_path):
    """Their inputs and data consistency are single-coil: a model file recording the
    coils of its training data is refused, one without them is not."""
    model = build_model(DCCNN_NET)
    spec = {"net": DCCNN_NET, "task": "recon", "model": "teacher"}
    write_model_file(tmp_path / "mc.pt", spec, model.state_dict(), coils=COILS)
    with pytest.raises(KdmriError, match=r"mc.pt: trained on multi-coil data \(4 coils\); "
                                         r"kdmri apply gives networks single-coil images"):
        apply_model(tmp_path / "mc.pt", tmp_path / "volume.nii.gz")
    with pytest.raises(KdmriError, match=r"mc.pt: trained on multi-coil data \(4 coils\); "
                                         r"kdmri export"):
        export_model(tmp_path / "mc.pt", "torchscript", tmp_path / "mc.torchscript")
    write_model_file(tmp_path / "single.pt", spec, model.state_dict())
    export_model(tmp_path / "single.pt", "torchscript", tmp_path / "single.torchscript")


# ------------------------------------------------------------------ the demo's stores
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The demo with simulated coils and ESPIRiT maps, prepared; its test split
    undersampled; and a copy of that input store without maps."""
    root = tmp_path_factory.mktemp("sense")
    cfg = validate({"datasets": {"mc": DEMO}})["datasets"]["mc"]
    info = prepare_dataset("mc", cfg, root / "data", progress=False)
    mask = create_mask_func("random", 4)((SIZE, SIZE), seed=0)
    undersample_store(root / "data" / "test.h5", mask, root / "in.h5")
    shutil.copy(root / "in.h5", root / "no_maps.h5")
    with h5py.File(root / "no_maps.h5", "a") as handle:
        del handle["maps"]
    return root, info


def test_espirit_maps_of_the_simulated_coils_give_the_rss_image(stores):
    """The demo's maps are normalised where kept, and the SENSE combination of the fully
    sampled coil images has the magnitude of their RSS there (the coils share one image)."""
    root, info = stores
    assert info["coils"] == COILS and info["sensitivity_maps"]["kind"] == "espirit"
    data = read_store(root / "data" / "test.h5", ["coils", "maps", "target"])
    maps = data["maps"].astype(np.complex128)
    power = (np.abs(maps) ** 2).sum(axis=1)
    kept = power > 0.5
    assert kept.mean() > 0.3
    np.testing.assert_allclose(power[kept], 1, atol=1e-4)
    combined = np.abs((maps.conj() * data["coils"]).sum(axis=1))
    on_object = kept & (data["target"] > 0.2 * data["target"].max())
    assert on_object.any()
    np.testing.assert_allclose(combined[on_object], data["target"][on_object], rtol=0.05)


def test_the_stores_give_the_sense_and_the_rss_batches(stores):
    root, _ = stores
    inputs = root / "in.h5"
    dccnn, unet = build_model(DCCNN_NET), build_model(UNET_NET)
    assert input_keys(inputs, DCCNN_NET) == input_keys(inputs, dccnn) == ["zf", "kspace", "maps"]
    assert input_keys(inputs, unet) == ["zf"]
    check_complex(inputs, dccnn)
    check_complex(inputs, unet)
    data = read_store(inputs, ["zf", "kspace", "maps", "mask", "target"])
    kspace = data["kspace"].astype(np.complex128)
    # the U-Net's input: the store's zf, the RSS of the zero-filled coil images
    rows = SliceDataset(inputs, keys=input_keys(inputs, unet), extra=["mask"])
    arrays = rows.batch(np.arange(len(rows)))
    batch = make_batch(arrays["zf"], rows.extra["mask"], None, CPU)
    np.testing.assert_allclose(batch.image[:, 0].numpy(), np_rss(np_ifft2c(kspace)),
                               rtol=1e-5, atol=1e-6)
    # DC-CNN's: the SENSE coil combination of the zero-filled coil images
    rows = SliceDataset(inputs, keys=input_keys(inputs, dccnn), extra=["mask"])
    arrays = rows.batch(np.arange(len(rows)))
    batch = make_batch(None, rows.extra["mask"], None, CPU, complex=True,
                       kspace=arrays["kspace"], maps=arrays["maps"])
    expected = np_sense_adjoint(kspace, data["maps"].astype(np.complex128), data["mask"])
    np.testing.assert_allclose(batch.image[:, 0].numpy() + 1j * batch.image[:, 1].numpy(),
                               expected, rtol=1e-5, atol=1e-5)
    # predictions: float32 magnitude images of the target's shape
    for model in (dccnn, unet):
        output = run_model(model, inputs, CPU)["output"]
        assert output.shape == data["target"].shape and output.dtype == np.float32
        assert np.isfinite(output).all()


def test_the_stores_refuse_networks_that_do_not_take_them(stores):
    root, _ = stores
    with pytest.raises(KdmriError, match=r"in.h5: multi-coil inputs \(4 coils, key 'kspace'\); "
                                         r"the network takes single-coil images .*dccnn with "
                                         r"complex: true"):
        check_complex(root / "in.h5", build_model({**DCCNN_NET, "complex": False}))
    with pytest.raises(KdmriError, match=r"no_maps.h5: multi-coil inputs without key 'maps'; "
                                         r"a network of family dccnn takes the SENSE .* set "
                                         r"sensitivity_maps: \{kind: espirit\} on the dataset"):
        check_complex(root / "no_maps.h5", build_model(DCCNN_NET))
    assert input_keys(root / "no_maps.h5", UNET_NET) == ["zf"]  # the U-Net needs no maps


# ------------------------------------------------------------------ the config checks
def study(teacher: dict, student: dict | None = None, maps: bool = True,
          models: list | None = None) -> dict:
    dataset = {k: v for k, v in DEMO.items() if maps or k != "sensitivity_maps"}
    return validate({"datasets": {"m": dataset},
                     "tasks": {"recon": {"datasets": ["m"], "teacher": teacher,
                                         "student": student or teacher}},
                     "models": models or ["zf", "teacher", "student", "kd"]})


def test_the_config_checks_take_dccnn_by_sense_and_the_unet_by_rss():
    study(DCCNN_NET, {**DCCNN_NET, "convs": 2})
    study(UNET_NET, maps=False)  # the RSS image needs no maps
    study(DCCNN_NET, UNET_NET)
    with pytest.raises(KdmriError, match=r"key 'datasets.m.sensitivity_maps': "
                                         r"tasks.recon.teacher \(family dccnn\) takes the SENSE "
                                         r"coil-combined image.* set sensitivity_maps: "
                                         r"\{kind: espirit\} on dataset 'm'"):
        study(DCCNN_NET, maps=False)
    with pytest.raises(KdmriError, match=r"key 'tasks.recon.student.complex': dataset 'm' "
                                         r"\(tasks.recon.datasets.0\) is multi-coil "
                                         r"\(simulated_coils\); family dccnn takes it with "
                                         r"complex: true .*found false$"):
        study(DCCNN_NET, {**DCCNN_NET, "complex": False})
    with pytest.raises(KdmriError, match=r"key 'tasks.recon.teacher.dc': .* family unet takes "
                                         r"it with dc: false .*found true$"):
        study({**UNET_NET, "dc": True})
    with pytest.raises(KdmriError, match=r"key 'tasks.recon.teacher.complex': .* family unet "
                                         r"takes it with complex: false"):
        study({**UNET_NET, "complex": True})
    with pytest.raises(KdmriError, match=r"key 'tasks.recon.datasets.0': kd_sft needs the "
                                         r"student-friendly teacher, whose branches run "
                                         r"single-coil data consistency; dataset 'm' is "
                                         r"multi-coil"):
        study(DCCNN_NET, models=["zf", "kd_sft"])


def _fastmri_files(root, coils: int | None, n: int = 3) -> dict:
    """fastMRI-layout files of ``coils`` coils (None: single-coil) under ``root``; the
    dataset entry that reads their k-space."""
    root.mkdir(parents=True, exist_ok=True)
    shape = (2, coils, 2 * SIZE, SIZE) if coils else (2, 2 * SIZE, SIZE)
    rng = np.random.default_rng(0)
    for i in range(n):
        with h5py.File(root / f"file{i}.h5", "w") as handle:
            handle["kspace"] = (rng.standard_normal(shape)
                                + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return {"format": "fastmri", "path": str(root), "source": "kspace", "size": SIZE}


def fastmri_study(dataset: dict, teacher: dict, evaluate_on: dict | None = None,
                  maps: bool = False) -> dict:
    dataset = {**dataset, **({"sensitivity_maps": {"kind": "espirit"}} if maps else {})}
    datasets = {"f": dataset, **({"e": evaluate_on} if evaluate_on else {})}
    return validate({"datasets": datasets,
                     "tasks": {"recon": {"datasets": ["f"], "teacher": teacher, "student": teacher,
                                         "evaluate_on": ["e"] if evaluate_on else []}},
                     "models": ["zf", "teacher", "student", "kd"]})


def test_fastmri_files_tell_the_config_checks_they_are_multicoil(tmp_path):
    """A fastmri k-space dataset is multi-coil when its first file's ``kspace`` has 4 dims
    (read from the metadata): it takes the U-Net by RSS (a magnitude network, though the
    dataset is read from k-space), DC-CNN by SENSE only with maps (refused before any job
    runs, naming the file and its shape), and E2E-VarNet; single-coil files refuse
    E2E-VarNet; files that cannot be read yet refuse nothing (their stages check them)."""
    multi = _fastmri_files(tmp_path / "multi", coils=4)
    fastmri_study(multi, UNET_NET)
    fastmri_study(multi, VARNET_NET)
    fastmri_study(multi, DCCNN_NET, maps=True)
    with pytest.raises(KdmriError, match=r"key 'datasets.f.sensitivity_maps': tasks.recon."
                                         r"teacher \(family dccnn\) takes the SENSE"):
        fastmri_study(multi, DCCNN_NET)
    with pytest.raises(KdmriError, match=r"key 'tasks.recon.teacher.dc': dataset 'f' \(tasks."
                                         r"recon.datasets.0\) is multi-coil \(file\d.h5: kspace "
                                         r"of shape \(2, 4, 64, 32\)\); family unet takes it "
                                         r"with dc: false"):
        fastmri_study(multi, {**UNET_NET, "dc": True})
    single = _fastmri_files(tmp_path / "single", coils=None)
    with pytest.raises(KdmriError, match=r"key 'tasks.recon.teacher.family': family varnet "
                                         r"reconstructs multi-coil k-space, and dataset 'f' .* "
                                         r"is single-coil"):
        fastmri_study(single, VARNET_NET)
    fastmri_study(single, {**DCCNN_NET, "complex": True})
    missing = {**multi, "path": str(tmp_path / "not_yet")}
    fastmri_study(missing, VARNET_NET)
    fastmri_study(missing, {**DCCNN_NET, "complex": True})


def test_models_trained_on_simulated_coils_are_evaluated_on_fastmri_multicoil_files(tmp_path):
    """``evaluate_on`` takes data of the kind the task trains on: the demo with simulated
    coils and fastMRI multi-coil files are both multi-coil (another coil count and size is
    the point of testing elsewhere); single-coil k-space or magnitude images are refused."""
    demo = {k: v for k, v in DEMO.items() if k != "sensitivity_maps"}
    multi = _fastmri_files(tmp_path / "multi", coils=6)
    config = validate({"datasets": {"d": demo, "f": multi},
                       "tasks": {"recon": {"datasets": ["d"], "evaluate_on": ["f"],
                                           "teacher": VARNET_NET, "student": VARNET_NET}},
                       "models": ["zf", "teacher", "student", "kd"]})
    assert config["tasks"]["recon"]["evaluate_on"] == ["f"]
    single = _fastmri_files(tmp_path / "single", coils=None)
    for other, kind in [(single, "complex"), ({"format": "demo", "size": SIZE}, "magnitude")]:
        with pytest.raises(KdmriError, match=rf"key 'tasks.recon.evaluate_on.0': 'o' is {kind} "
                                             r"data and 'd' \(trained on\) multi-coil"):
            validate({"datasets": {"d": demo, "o": other},
                      "tasks": {"recon": {"datasets": ["d"], "evaluate_on": ["o"],
                                          "teacher": VARNET_NET, "student": VARNET_NET}},
                      "models": ["zf", "teacher", "student", "kd"]})
