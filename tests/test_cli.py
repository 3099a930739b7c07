"""The command line: a smoke run end to end, and one clear line for every bad input."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamfusion.cli import main

FAST = [
    "--preset",
    "smoke",
    "--quiet",
    "--camera.resolution",
    "12",
    "--render.samples-per-ray",
    "12",
    "--train.preview-resolution",
    "16",
]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_generate_smoke_end_to_end_through_the_installed_command(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamfusion.cli",
            "generate",
            "a sphere",
            "--preset",
            "smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"run folder:  {out}" in proc.stdout
    assert (out / "config.json").is_file() and (out / "metrics.jsonl").is_file()
    assert list((out / "checkpoints").glob("step_*.safetensors"))
    assert (out / "previews" / "final.png").is_file()


def test_another_guidance_drops_a_presets_high_noise_expert():
    from dreamfusion.api import resolve_config
    from dreamfusion.config import BundledGuidanceConfig, ClosedFormGuidanceConfig, validate_config
    from dreamfusion.presets import smoke

    cfg = smoke()
    paired = dataclasses.replace(cfg, guidance=BundledGuidanceConfig(high_noise_model="bundled"))
    assert resolve_config(config=paired).guidance.high_noise_model == "bundled"
    assert resolve_config(config=paired, guidance="bundled").guidance.high_noise_model == "bundled"
    switched = resolve_config(config=paired, guidance="closed-form")
    assert switched.guidance == ClosedFormGuidanceConfig()  # its own defaults; it has no expert
    validate_config(switched)  # runs, rather than refusing an expert the user never asked for


def test_a_prior_of_ones_own_is_distilled_alone_unless_an_expert_is_named(tmp_path, capsys):
    """The presets' expert is a fine-tune of the packaged prior: `--model` / `--guidance.model` drop it
    (a 16x16 prior could not even pair with it), `--guidance.high-noise-model` keeps one."""
    import json

    from dreamfusion.prior.model import PriorModel, save_prior
    from dreamfusion.prior_training.recipes import tiny

    own = tmp_path / "own.safetensors"
    torch.manual_seed(0)
    save_prior(PriorModel(tiny().model), own)

    def expert(*flags: str):
        assert main(["config", "--preset", "cpu", *flags]) == 0
        return json.loads(capsys.readouterr().out)["guidance"]["high_noise_model"]

    assert expert() == "bundled"
    assert expert("--guidance.model", str(own)) is None
    assert expert("--guidance.model", str(own), "--guidance.high-noise-model", str(own)) == str(own)
    assert expert("--guidance.model", str(own), "--guidance.high-noise-model=bundled") == "bundled"

    out = tmp_path / "run"
    args = [
        "generate",
        "a red cube",
        "--preset",
        "cpu",
        "--model",
        str(own),
        "--steps",
        "1",
        "--out",
        str(out),
    ]
    assert main([*args, "--no-mesh", "--no-video", "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]["guidance"]
    assert saved["model"] == str(own) and saved["high_noise_model"] is None


@pytest.mark.parametrize("preset", ["default", "cpu"])
def test_the_presets_pair_the_packaged_expert_unless_guidance_changes(preset):
    from dreamfusion.api import resolve_config
    from dreamfusion.config import validate_config

    assert resolve_config(preset, device="cpu").guidance.high_noise_model == "bundled"
    for other in ("stable-diffusion", "deepfloyd-if", "closed-form"):
        cfg = resolve_config(preset, guidance=other, device="cpu")
        assert cfg.guidance.name == other and not hasattr(cfg.guidance, "high_noise_model")
        validate_config(cfg)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", ""], "prompt is empty"),
        (["generate", "   "], "prompt is empty"),
        (["generate", "a mug", "--preset", "huge"], "unknown preset 'huge'"),
        (["generate", "a mug", "--guidance", "imagen9"], "unknown guidance 'imagen9'"),
        (["generate", "a mug", "--steps", "0"], "--steps must be positive"),
        (["generate", "a mug", "--steps", "-5"], "--steps must be positive"),
        (
            ["generate", "a mug", "--preset", "smoke", "--camera.resolution", "0"],
            "resolution must be positive",
        ),
        (["generate", "a mug", "--preset", "smoke", "--render.samples-per-ray", "-1"], "samples per ray"),
        (["generate", "a", "ceramic", "mug"], "in quotes"),
        (
            ["generate", "a mug", "--preset", "smoke", "--guidance.high-noise-model", "bundled"],
            "does nothing for --guidance closed-form",
        ),
        (["generate", "a mug", "--turntable-from", "nerf"], "--turntable-from must be one of field, mesh"),
    ],
)
def test_bad_input_gets_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    code = main(argv + ["--out", str(out)])
    assert code != 0
    assert message in _error_line(capsys)
    assert not out.exists()


def test_cuda_where_there_is_none(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    assert main(["generate", "a mug", *FAST, "--device", "cuda", "--out", str(out)]) != 0
    assert "no usable GPU" in _error_line(capsys)
    assert not out.exists()


def test_folder_of_another_run_is_left_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "a red sphere", *FAST, "--steps", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    before = _tree(out)
    assert main(["generate", "a blue sphere", *FAST, "--steps", "2", "--out", str(out)]) != 0
    assert "already holds a run" in _error_line(capsys)
    assert main(["generate", "a red sphere", *FAST, "--steps", "2", "--out", str(out)]) != 0
    assert "--resume" in _error_line(capsys)
    assert _tree(out) == before


def test_output_path_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "file.txt"
    out.write_text("keep me")
    assert main(["generate", "a mug", *FAST, "--out", str(out)]) != 0
    assert "is a file" in _error_line(capsys)
    assert out.read_text() == "keep me"


def test_resume_with_corrupt_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "a red sphere", *FAST, "--steps", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    ckpt = next((out / "checkpoints").glob("step_*.safetensors"))
    ckpt.write_bytes(b"garbage" * 10)
    before = _tree(out)
    assert main(["generate", "a red sphere", *FAST, "--steps", "4", "--out", str(out), "--resume"]) != 0
    assert "corrupt" in _error_line(capsys)
    assert _tree(out) == before


def test_resume_with_mismatched_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "a red sphere", *FAST, "--steps", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    before = _tree(out)
    assert (
        main(
            [
                "generate",
                "a red sphere",
                *FAST,
                "--steps",
                "2",
                "--out",
                str(out),
                "--resume",
                "--field.kind",
                "mlp",
            ]
        )
        != 0
    )
    assert "field.kind" in _error_line(capsys)
    assert main(["generate", "a blue sphere", *FAST, "--steps", "2", "--out", str(out), "--resume"]) != 0
    assert "prompt" in _error_line(capsys)
    assert _tree(out) == before


def test_resume_with_a_checkpoint_of_another_model(tmp_path, capsys):
    """A checkpoint whose tensors do not fit the model (e.g. copied from another run)."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["generate", "a red sphere", *FAST, "--steps", "2", "--out", str(a)]) == 0
    assert (
        main(["generate", "a red sphere", *FAST, "--steps", "2", "--out", str(b), "--field.hash-levels", "2"])
        == 0
    )
    capsys.readouterr()
    foreign = next((b / "checkpoints").glob("step_*.safetensors"))
    target = next((a / "checkpoints").glob("step_*.safetensors"))
    target.write_bytes(foreign.read_bytes())
    before = _tree(a)
    assert main(["generate", "a red sphere", *FAST, "--steps", "4", "--out", str(a), "--resume"]) != 0
    assert "does not match" in _error_line(capsys)
    assert _tree(a) == before


def test_resume_continues_to_more_steps(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "a red sphere", *FAST, "--steps", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", "a red sphere", *FAST, "--steps", "4", "--out", str(out), "--resume"]) == 0
    assert "step_0000004.safetensors" in capsys.readouterr().out


def test_resume_a_run_saved_before_a_setting_existed(tmp_path, capsys):
    """A config.json written by an older version lacks newer settings: at their defaults, it resumes."""
    import json

    out = tmp_path / "run"
    assert main(["generate", "a red sphere", *FAST, "--steps", "2", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    render = saved["config"]["render"]
    for key in [k for k in render if k.startswith("occupancy")]:
        del render[key]
    (out / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    args = ["generate", "a red sphere", *FAST, "--steps", "4", "--out", str(out), "--resume"]
    assert main([*args, "--render.occupancy-grid"]) != 0  # not the default: a real change
    assert "render.occupancy_grid" in _error_line(capsys)
    assert main(args) == 0
    assert "step_0000004.safetensors" in capsys.readouterr().out


def test_auto_preset_picks_by_device(tmp_path, capsys, monkeypatch):
    import json

    from dreamfusion.api import resolve_config
    from dreamfusion.config import to_dict
    from dreamfusion.presets import PRESETS

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu = resolve_config("auto")
    assert to_dict(on_cpu) == to_dict(PRESETS["cpu"]())  # the short preset, not hours of `default`
    assert resolve_config("auto", device="cuda").train.steps == PRESETS["default"]().train.steps
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_config("auto").train.device == "cuda"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    args = ["generate", "a red cube", "--steps", "1", "--out", str(out), "--no-mesh", "--no-video", "--quiet"]
    assert main(args) == 0
    assert "preset:      cpu on cpu" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["guidance"]["name"] == "bundled" and saved["camera"]["resolution"] == 40


def test_tensorboard_without_the_package(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    out = tmp_path / "run"
    assert main(["generate", "a mug", *FAST, "--train.tensorboard", "--out", str(out)]) != 0
    assert "dreamfusion[tensorboard]" in _error_line(capsys)
    assert not out.exists()


def test_model_flag_reaches_the_guidance_backend(tmp_path, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "nowhere.safetensors"
    code = main(
        ["generate", "a red cube", "--guidance", "bundled", "--model", str(missing), "--out", str(out)]
    )
    assert code != 0
    assert str(missing) in _error_line(capsys)
    assert not out.exists()


def test_version(capsys):
    from dreamfusion import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dreamfusion {__version__}"


def test_help_lists_only_the_chosen_backends_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["generate", "--preset", "cpu", "--help"])
    assert done.value.code == 0
    bundled = capsys.readouterr().out
    assert "--guidance.high-noise-model" in bundled and "negative-prompt" not in bundled
    with pytest.raises(SystemExit):
        main(["generate", "--preset", "cpu", "--guidance", "stable-diffusion", "--help"])
    sd = capsys.readouterr().out
    assert "--guidance.negative-prompt" in sd and "high-noise-model" not in sd


def test_top_level_help_imports_no_torch():
    code = "import sys\nfrom dreamfusion.cli import main\n"
    code += "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "assert 'torch' not in sys.modules, 'torch imported'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "generate" in proc.stdout and "bench" in proc.stdout


@pytest.mark.parametrize(
    "switch", [["--guidance", "stable-diffusion"], ["--guidance=stable-diffusion"], ["stable-diffusion"]]
)
def test_guidance_switch_on_the_command_line(capsys, switch):
    import json

    args = ["config", "--preset", "cpu", *switch, "--guidance.negative-prompt", "blurry", "--optim.lr", "0.5"]
    assert main(args) == 0
    saved = json.loads(capsys.readouterr().out)
    assert (
        saved["guidance"]["name"] == "stable-diffusion" and saved["guidance"]["negative_prompt"] == "blurry"
    )
    assert "high_noise_model" not in saved["guidance"] and saved["optim"]["lr"] == 0.5
