"""A user's diffusers folder loads from safetensors only: pickle-only weights are refused in one line."""

import pytest
import torch

from dreamfusion.errors import UserError


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DREAMFUSION_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny Stable Diffusion and DeepFloyd IF folders, each saved twice: in safetensors, and with pickle
    weights."""
    pytest.importorskip("diffusers")
    from diffusers import DiffusionPipeline

    from tests.guidance.diffusers_fixtures import build_tiny_deepfloyd_if, build_tiny_stable_diffusion

    out = {}
    for name, build in (
        ("stable-diffusion", build_tiny_stable_diffusion),
        ("deepfloyd-if", build_tiny_deepfloyd_if),
    ):
        safe = build(tmp_path_factory.mktemp(f"{name}-safe"))
        pickled = tmp_path_factory.mktemp(f"{name}-pickle")
        DiffusionPipeline.from_pretrained(safe).save_pretrained(pickled, safe_serialization=False)
        # The U-Net is pickle-only (transformers writes its text encoder in safetensors whatever it is told).
        assert not list((pickled / "unet").glob("*.safetensors")) and list((pickled / "unet").glob("*.bin"))
        out[name] = (safe, pickled)
    return out


@pytest.mark.parametrize("name", ["stable-diffusion", "deepfloyd-if"])
def test_a_pickle_only_folder_is_refused_in_one_line(tmp_path, capsys, folders, name):
    from dreamfusion.cli import main

    out = tmp_path / "run"
    argv = [
        "generate",
        "a red cube",
        "--preset",
        "smoke",
        "--guidance",
        name,
        "--model",
        str(folders[name][1]),
    ]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "only pickle weights" in err[0], err
    assert "can run code" in err[0]
    assert not out.exists()


def test_safetensors_are_asked_for_where_the_folder_has_them(folders):
    """from_pretrained gets use_safetensors=True, so a pickle file beside the safetensors is never read."""
    from diffusers import UNet2DConditionModel

    from dreamfusion.guidance.diffusers_common import load_component, locate_model
    from dreamfusion.guidance.stable_diffusion import KIND

    seen = {}

    class Recording(UNet2DConditionModel):
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            seen.update(kwargs)
            return super().from_pretrained(*args, **kwargs)

    safe = folders["stable-diffusion"][0]
    (safe / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle anyone should open")
    try:
        unet = load_component(Recording, locate_model(str(safe), None, KIND), "unet", torch.float32)
    finally:
        (safe / "unet" / "diffusion_pytorch_model.bin").unlink()
    assert seen.get("use_safetensors") is True and isinstance(unet, UNet2DConditionModel)
    with pytest.raises(UserError, match="only pickle weights"):
        locate_model(str(folders["stable-diffusion"][1]), None, KIND)
