"""Real model classes from MONAI, diffusers, torchvision, segmentation-models-pytorch, timm and speechbrain.

Library path: ``convert_model`` on the real class, float64, every output tensor (dicts, lists of
dicts, ``ModelOutput`` objects) within 1e-10 relative; inputs with a timestep or several
arguments go through ``ExampleInputs``, never a wrapper written here. Command line: ``migrate
--source-model pkg.module:Class --source-args`` to a file that loads with ``strict=True`` into the
converted model and matches in float32. Each test skips when its library is missing or cannot
load beside this torch build.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from real_models_helpers import check_library_path, need, trained, transposed_layers

from deconv2shuffle import convert_model, load_spec
from deconv2shuffle.compare import compare_outputs
from deconv2shuffle.errors import CheckpointError, OutputExistsError
from deconv2shuffle.examples import ExampleInputs
from deconv2shuffle.loading import load_converted, load_converted_pretrained, save_converted_pretrained

pytestmark = pytest.mark.filterwarnings("ignore")


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def image(*shape: int):
    return lambda: ExampleInputs((_randn(*shape),), {}, f"random {shape}")


def images(*shape: int):
    """A list of images, as torchvision's detection models take them."""
    return lambda: ExampleInputs(([_randn(*shape).abs()],), {}, f"[image {shape}]")


def with_timestep(*shape: int, timestep: int = 10):
    return lambda: ExampleInputs((_randn(*shape), torch.tensor([timestep])), {}, f"{shape} + timestep")


# -- model factories: each takes the imported library module ----------------------------------------------

REAL_SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints" / "real"
# the UNet1DModel configuration of the real sample (its sidecar spec), shared with generate_real.py's
UNET1D_ARGS = load_spec(REAL_SAMPLES / "diffusers_unet1d" / "diffusion_pytorch_model.toml").models["source_args"]
MONAI_UNET_ARGS = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
}
DYNUNET_ARGS = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "kernel_size": [3, 3, 3],
    "strides": [1, 2, 2],
    "upsample_kernel_size": [2, 2],
    "filters": [4, 8, 16],
}


FEW_PROPOSALS = {"rpn_pre_nms_top_n_test": 32, "rpn_post_nms_top_n_test": 16}  # 1000 proposals cost seconds


def _mask_rcnn(detection):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return detection.MaskRCNN(
        backbone,
        num_classes=3,
        min_size=64,
        max_size=64,
        box_score_thresh=0.0,
        box_detections_per_img=4,
        **FEW_PROPOSALS,
    )


def _keypoint_rcnn(detection):
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return detection.KeypointRCNN(
        backbone,
        num_classes=2,
        num_keypoints=3,
        min_size=64,
        max_size=64,
        box_score_thresh=0.0,
        box_detections_per_img=4,
        **FEW_PROPOSALS,
    )


# detectors keep their initialisation: moved weights can leave no box above the size limits, and then
# the masks and keypoints the converted layers compute would be empty (the check would refuse that)
JITTER = {"MaskRCNN": 0.0, "KeypointRCNN": 0.0}

SUBCLASS_FORWARD = "convert_model replaces a ConvTranspose subclass without its own forward (output shape changes)"

CASES = [
    # MONAI: k3 s2 p1 op1 (UNet, AttentionUnet, AutoEncoder, Generator), k2 s2 (the others), k7 s2 p3 (MedNeXt)
    ("monai.networks.nets", "UNet", lambda n: n.UNet(**MONAI_UNET_ARGS), image(1, 1, 16, 16)),
    ("monai.networks.nets", "UNet-3d", lambda n: n.UNet(3, 1, 2, (4, 8), (2,), num_res_units=0), image(1, 1, 8, 8, 8)),
    (
        "monai.networks.nets",
        "BasicUNet",
        lambda n: n.BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4)),
        image(1, 1, 32, 32),
    ),
    (
        "monai.networks.nets",
        "UNETR",
        lambda n: n.UNETR(1, 2, (16, 16), feature_size=4, hidden_size=24, mlp_dim=24, num_heads=2, spatial_dims=2),
        image(1, 1, 16, 16),
    ),
    (
        "monai.networks.nets",
        "SwinUNETR",
        lambda n: n.SwinUNETR(1, 2, feature_size=12, spatial_dims=2, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
        image(1, 1, 64, 64),
    ),
    ("monai.networks.nets", "DynUNet", lambda n: n.DynUNet(**DYNUNET_ARGS), image(1, 1, 16, 16)),
    (
        "monai.networks.nets",
        "DynUNet-anisotropic-3d",
        lambda n: n.DynUNet(3, 1, 2, [3, 3, 3], [1, (1, 2, 2), 2], [(1, 2, 2), 2], filters=[4, 8, 16]),
        image(1, 1, 4, 8, 8),
    ),
    (
        "monai.networks.nets",
        "SegResNet",
        lambda n: n.SegResNet(
            2, 4, 1, 2, norm=("group", {"num_groups": 2}), blocks_down=(1, 1), blocks_up=(1,), upsample_mode="deconv"
        ),
        image(1, 1, 16, 16),
    ),
    (
        "monai.networks.nets",
        "AttentionUnet",
        lambda n: n.AttentionUnet(2, 1, 2, (4, 8, 16), (2, 2)),
        image(1, 1, 16, 16),
    ),
    ("monai.networks.nets", "AutoEncoder", lambda n: n.AutoEncoder(2, 1, 1, (4, 8), (2, 2)), image(1, 1, 16, 16)),
    (
        "monai.networks.nets",
        "AutoencoderKL-sampling",  # draws its latent in forward: ExampleInputs.run seeds both runs alike
        lambda n: n.AutoencoderKL(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=(4, 8),
            latent_channels=2,
            num_res_blocks=1,
            norm_num_groups=2,
            attention_levels=(False, False),
            use_convtranspose=True,
        ),
        image(1, 1, 16, 16),
    ),
    (
        "monai.networks.nets",
        "MedNeXt",
        lambda n: n.MedNeXt(2, 4, 1, 2, blocks_down=(1, 1), blocks_bottleneck=1, blocks_up=(1, 1)),
        image(1, 1, 16, 16),
    ),
    (
        "monai.networks.nets",
        "ViTAutoEnc",
        lambda n: n.ViTAutoEnc(
            1, (16, 16), (4, 4), hidden_size=24, mlp_dim=24, num_layers=1, num_heads=2, spatial_dims=2
        ),
        image(1, 1, 16, 16),
    ),
    ("monai.networks.nets", "Generator", lambda n: n.Generator((8,), (4, 4, 4), (4, 2), (2, 2)), image(2, 8)),
    # diffusers: outputs are ModelOutput objects; the UNet takes a timestep
    ("diffusers", "UNet1DModel", lambda d: d.UNet1DModel(**UNET1D_ARGS), with_timestep(1, 4, 16)),
    (
        "diffusers",
        "AutoencoderOobleck",  # weight-normed ConvTranspose1d k = 2s, p = ceil(s/2)
        lambda d: d.AutoencoderOobleck(
            encoder_hidden_size=4,
            downsampling_ratios=[2, 4],
            channel_multiples=[1, 2],
            decoder_channels=4,
            decoder_input_channels=2,
            audio_channels=1,
        ),
        image(1, 1, 64),
    ),
    (
        "diffusers.pipelines.ltx2.vocoder",
        "LTX2Vocoder",  # k16 s6 p5, k15 s5 p5, k8 s2 p3
        lambda v: v.LTX2Vocoder(
            in_channels=4,
            hidden_channels=16,
            out_channels=1,
            upsample_kernel_sizes=[16, 15, 8],
            upsample_factors=[6, 5, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3]],
        ),
        image(1, 1, 6, 4),
    ),
    # torchvision: detection models return a list of dicts
    pytest.param("torchvision.models.detection", "MaskRCNN", _mask_rcnn, images(3, 64, 64), marks=pytest.mark.slow),
    pytest.param(
        "torchvision.models.detection", "KeypointRCNN", _keypoint_rcnn, images(3, 64, 64), marks=pytest.mark.slow
    ),
    pytest.param(
        "segmentation_models_pytorch",
        "Linknet",
        lambda smp: smp.Linknet(encoder_name="resnet18", encoder_weights=None, classes=2),
        image(1, 3, 64, 64),
        marks=pytest.mark.slow,
    ),
    (
        "timm",
        "lowformer",
        lambda timm: timm.create_model(
            "lowformer_b0",
            pretrained=False,
            num_classes=4,
            width_list=[8, 16, 16, 32, 32],
            depth_list=[0, 1, 1, 1, 1],
            head_widths=(32, 32),
        ),
        image(1, 3, 64, 64),
    ),
    # speechbrain: weight-normed HiFi-GAN, DiffWave (audio, timestep, spectrogram), SEGAN (samples its latent)
    (
        "speechbrain.lobes.models.HifiGAN",
        "HifiganGenerator",
        lambda h: h.HifiganGenerator(
            in_channels=8,
            out_channels=1,
            resblock_type="1",
            resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
            resblock_kernel_sizes=[3, 5],
            upsample_kernel_sizes=[8, 4],
            upsample_initial_channel=16,
            upsample_factors=[4, 2],
        ),
        image(1, 8, 10),
    ),
    (
        "speechbrain.lobes.models.DiffWave",
        "DiffWave",
        lambda w: w.DiffWave(4, 2, 4, 1, 10),
        lambda: ExampleInputs((_randn(1, 1, 512), torch.tensor([3]), _randn(1, 4, 2)), {}, "audio, timestep, mel"),
    ),
    (
        "speechbrain.lobes.models.segan_model",
        "SEGAN-Generator",
        lambda s: s.Generator(kernel_size=5, latent_vae=True, z_prob=False),
        image(1, 2048, 1),
    ),
    (
        "speechbrain.lobes.models.discrete.dac",
        "DAC-Decoder",
        lambda d: d.Decoder(input_channel=8, channels=16, rates=[2, 4]),
        image(1, 8, 10),
    ),
    pytest.param(
        "speechbrain.lobes.models.dual_path",
        "Sepformer-Decoder",
        lambda d: torch.nn.Sequential(d.Decoder(in_channels=8, out_channels=1, kernel_size=16, stride=8, bias=False)),
        image(2, 8, 20),
        marks=pytest.mark.xfail(strict=True, reason=SUBCLASS_FORWARD),
    ),
]


def _case_id(case) -> str:
    values = case.values if hasattr(case, "values") else case
    return f"{values[0].split('.')[0]}-{values[1]}"


@pytest.mark.parametrize(("module", "name", "build", "inputs"), CASES, ids=[_case_id(c) for c in CASES])
def test_library_path_matches_the_real_model_in_float64(module, name, build, inputs):
    lib = need(module)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(lib)
    check_library_path(model, inputs(), jitter=JITTER.get(name, 0.1))


# -- the command line, float32, and loading the result ------------------------------------------------------


def _migrate(args: list[str]) -> None:
    from typer.testing import CliRunner

    from deconv2shuffle.cli import app

    result = CliRunner().invoke(app, ["migrate", *args])
    assert result.exit_code == 0, result.output


def _float32_close(want, got) -> None:
    result = compare_outputs(want, got)
    assert result.tensors and result.within(1e-5), result.as_dict()


def test_monai_bundle_migrates_on_the_command_line_and_loads_strictly(tmp_path):
    nets = need("monai.networks.nets")
    torch.manual_seed(0)
    model = trained(nets.UNet(**MONAI_UNET_ARGS)).eval()
    torch.save({"net": model.state_dict()}, tmp_path / "model.pt")  # a MONAI bundle's models/model.pt
    out = tmp_path / "converted.pt"
    args = ["--source-model", "monai.networks.nets:UNet", "--source-args", json.dumps(MONAI_UNET_ARGS)]
    _migrate([str(tmp_path / "model.pt"), str(out), *args])
    assert set(torch.load(out, weights_only=True)) == {"net"}  # the bundle's layout is kept
    converted = load_converted(lambda: nets.UNet(**MONAI_UNET_ARGS), out)
    assert not transposed_layers(converted)
    x = image(2, 1, 16, 16)()
    _float32_close(x.run(model), x.run(converted))


def test_monai_dynunet_with_aliased_blocks_migrates_on_the_command_line(tmp_path):
    nets = need("monai.networks.nets")
    torch.manual_seed(0)
    model = trained(nets.DynUNet(**DYNUNET_ARGS)).eval()
    torch.save({"net": model.state_dict()}, tmp_path / "model.pt")
    out = tmp_path / "converted.safetensors"
    _migrate(
        [str(tmp_path / "model.pt"), str(out), "--source-model", "monai.networks.nets:DynUNet"]
        + ["--source-args", json.dumps(DYNUNET_ARGS)]
    )
    converted = load_converted(lambda: nets.DynUNet(**DYNUNET_ARGS), out)
    x = image(1, 1, 16, 16)()
    _float32_close(x.run(model), x.run(converted))


def _unet1d(diffusers):
    torch.manual_seed(0)
    return trained(diffusers.UNet1DModel(**UNET1D_ARGS)).eval()


def test_diffusers_folder_migrates_on_the_command_line_and_loads_with_from_config(tmp_path):
    diffusers = need("diffusers")
    unet1d = need("diffusers", "UNet1DModel")
    model = _unet1d(diffusers)
    model.save_pretrained(tmp_path / "original")
    out = tmp_path / "converted.safetensors"
    source = tmp_path / "original" / "diffusion_pytorch_model.safetensors"
    _migrate(
        [str(source), str(out), "--source-model", "diffusers:UNet1DModel", "--source-args", json.dumps(UNET1D_ARGS)]
    )
    config = unet1d.load_config(tmp_path / "original")
    converted = load_converted(lambda: unet1d.from_config(config), out)
    x = with_timestep(2, 4, 16)()
    _float32_close(x.run(model), x.run(converted))


def test_converted_diffusers_folder_loads_only_through_the_converted_loader(tmp_path):
    diffusers = need("diffusers")
    unet1d = need("diffusers", "UNet1DModel")
    model = _unet1d(diffusers)
    folder = save_converted_pretrained(model, tmp_path / "converted")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "subpixel_model.safetensors"]
    loaded = load_converted_pretrained(unet1d, folder)
    assert not transposed_layers(loaded)
    x = with_timestep(2, 4, 16)()
    _float32_close(x.run(model), x.run(loaded))
    # diffusers' own loader must fail loudly, never re-initialise the converted layers
    with pytest.raises((OSError, EnvironmentError), match="diffusion_pytorch_model"):
        unet1d.from_pretrained(folder)
    with pytest.raises(OutputExistsError, match="not empty; pass force=True"):
        save_converted_pretrained(model, folder)
    save_converted_pretrained(convert_model(model), folder, force=True)  # an already converted model saves too
    _float32_close(x.run(model), x.run(load_converted_pretrained(unet1d, folder)))
    # over a folder holding the original weights: those are removed, or from_pretrained would load them silently
    model.save_pretrained(tmp_path / "both")
    save_converted_pretrained(model, tmp_path / "both", force=True)
    with pytest.raises((OSError, EnvironmentError), match="diffusion_pytorch_model"):
        unet1d.from_pretrained(tmp_path / "both")


def test_an_unconverted_diffusers_folder_is_refused_by_the_converted_loader(tmp_path):
    diffusers = need("diffusers")
    unet1d = need("diffusers", "UNet1DModel")
    _unet1d(diffusers).save_pretrained(tmp_path / "original")
    with pytest.raises(CheckpointError, match=r"holds an unconverted model; load it with UNet1DModel.from_pretrained"):
        load_converted_pretrained(unet1d, tmp_path / "original")


@pytest.mark.xfail(strict=True, reason="remove_weight_norm() raises on a converted generator")
def test_speechbrain_hifigan_remove_weight_norm_works_after_conversion():
    hifigan = need("speechbrain.lobes.models.HifiGAN")
    torch.manual_seed(0)
    model = hifigan.HifiganGenerator(8, 1, "1", [[1, 3, 5]], [3], [8, 4], 16, [4, 2]).double().eval()
    trained(model)
    converted = convert_model(model)
    converted.remove_weight_norm()  # speechbrain's decode_batch calls this before inference
    x = image(1, 8, 10)()
    result = compare_outputs(x.run(model), x.run(converted))
    assert result.within(1e-10), result.as_dict()


# -- the samples built from real classes (sample_checkpoints/real, written by generate_real.py) -------------

REAL_SAMPLE_FILES = {
    "monai_unet.pt": image(2, 1, 16, 16),
    "diffusers_unet1d/diffusion_pytorch_model.safetensors": with_timestep(2, 4, 16),
    "diffusers_ltx2_vocoder/diffusion_pytorch_model.safetensors": image(1, 1, 6, 4),
}


def _sample_factory(weights: Path):

    models = load_spec(weights.with_name(weights.name.split(".")[0] + ".toml")).models
    module, _, name = models["source"].partition(":")
    cls = need(module, name)
    return lambda: cls(**models.get("source_args", {}))


def _need_sample_libraries() -> None:
    need("monai.networks.nets")
    need("diffusers", "UNet1DModel")
    need("diffusers.pipelines.ltx2.vocoder")


@pytest.fixture(scope="module")
def real_batch(tmp_path_factory):
    _need_sample_libraries()
    from typer.testing import CliRunner

    from deconv2shuffle.cli import app

    out = tmp_path_factory.mktemp("real")
    result = CliRunner().invoke(app, ["batch", str(REAL_SAMPLES), str(out), "--recursive", "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_real_samples_convert_exactly_in_batch(real_batch):
    _, report = real_batch
    assert report["failed"] == 0 and report["converted"] == len(REAL_SAMPLE_FILES), report
    for f in report["files"]:
        assert f["exact"] is True and f["max_rel_error"] < 1e-12, f


@pytest.mark.parametrize("name", sorted(REAL_SAMPLE_FILES))
def test_converted_real_samples_load_strictly_and_match_in_float32(real_batch, name):
    from deconv2shuffle.checkpoint import load_checkpoint

    factory = _sample_factory(REAL_SAMPLES / name)
    original = factory().eval()
    original.load_state_dict(load_checkpoint(REAL_SAMPLES / name).state_dict, strict=True)
    converted = load_converted(factory, real_batch[0] / name)
    assert not transposed_layers(converted)
    inputs = REAL_SAMPLE_FILES[name]()
    _float32_close(inputs.run(original), inputs.run(converted))


@pytest.mark.slow
def test_generate_real_reproduces_the_real_samples(tmp_path):
    """Bit for bit, but for a last-bit flip: the script trains in float64 and stores float32 (see generate.py)."""
    import subprocess
    import sys

    from deconv2shuffle.checkpoint import load_checkpoint

    _need_sample_libraries()
    script = REAL_SAMPLES.parent / "generate_real.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in REAL_SAMPLE_FILES:
        fresh, kept = load_checkpoint(tmp_path / name).state_dict, load_checkpoint(REAL_SAMPLES / name).state_dict
        assert fresh.keys() == kept.keys()
        for key in kept:
            torch.testing.assert_close(fresh[key], kept[key], rtol=2.5e-7, atol=1e-9, msg=f"{name}: {key}")
