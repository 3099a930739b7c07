"""The commands of `dreamfusion` that make and use one run: one dataclass each, its fields the flags.

`dreamfusion.cli` picks the command and parses it with tyro; each class's `run()` does the work.
Commands that take the whole `Config` build their defaults from the preset named on the command
line (`config_defaults`), so `--help` shows the preset's values and `--optim.lr 1e-3` overrides one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import tyro

from dreamfusion.config import GUIDANCE_CONFIGS, Config, apply_overrides, to_dict
from dreamfusion.errors import UserError

if TYPE_CHECKING:
    from dreamfusion.export import ExportOptions

# The Config's sections sit at the top level of a command: `--optim.lr`, not `--config.optim.lr`.
Sections = Annotated[Config, tyro.conf.arg(name="")]


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to `flag` (`--flag V` or `--flag=V`), the last one winning; None if absent."""
    value = None
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(flag + "="):
            value = token.split("=", 1)[1]
    return value


def _without(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == flag:
            skip = True
        elif not token.startswith(flag + "="):
            out.append(token)
    return out


def config_defaults(argv: list[str], preset: str) -> tuple[Config, list[str]]:
    """The config the rest of `argv` overrides: the preset of `--preset` (else `preset`) on the device of
    `--device`, guided by the backend of `--guidance NAME`, which is taken out of argv (on the tyro
    command line a backend is a subcommand: `--guidance NAME` is its older spelling)."""
    from dreamfusion.api import auto_preset, resolve_config

    preset = _flag_value(argv, "--preset") or preset
    device = _flag_value(argv, "--device")
    guidance = _flag_value(argv, "--guidance")
    if device == "auto":
        device = None
    if preset == "auto":
        preset, device = auto_preset(device)
        print(f"preset:      {preset} on {device} (auto; --preset and --device choose)")
    cfg = resolve_config(preset, guidance=guidance, device=device)
    argv = _without(argv, "--guidance")
    chosen = cfg.guidance.name
    for before, token in zip(["", *argv], argv, strict=False):
        if token in GUIDANCE_CONFIGS and not (before.startswith("--") and "=" not in before):
            chosen = token  # a backend named as a subcommand, not a flag's value
    own = {f.name.replace("_", "-") for f in dataclasses.fields(GUIDANCE_CONFIGS[chosen])}
    for token in argv:
        key = token.split("=", 1)[0]
        if key.startswith("--guidance.") and key[len("--guidance.") :].replace("_", "-") not in own:
            raise UserError(
                f"{key} does nothing for --guidance {chosen}; its settings: "
                f"{', '.join(sorted(own - {'name'}))} (`dreamfusion generate --guidance NAME --help`)"
            )
    return cfg, argv


def own_prior_if_changed(parsed: Config, default: Config, argv: list[str]) -> Config:
    from dreamfusion.api import own_prior

    if getattr(parsed.guidance, "model", None) != getattr(default.guidance, "model", None):
        return own_prior(parsed, argv)
    return parsed


@dataclass
class Generate:
    """Turn a sentence into a 3D field. The guidance backend is a subcommand (bundled, stable-diffusion,
    deepfloyd-if, closed-form; `--guidance NAME` also chooses it); `--help` after it lists its options."""

    prompt: Annotated[str, tyro.conf.arg(metavar="PROMPT"), tyro.conf.Positional]
    """What to make, in quotes, e.g. "a ceramic mug"."""
    out: Path | None = None
    """Run folder (default: outputs/<prompt>)."""
    preset: str = "auto"
    """auto | smoke | cpu | default | paper (auto: default on a GPU, cpu on a CPU); sets the defaults."""
    seed: int | None = None
    """Random seed (default: the preset's train.seed)."""
    steps: int | None = None
    """Optimization steps (default: the preset's train.steps)."""
    device: str | None = None
    """cpu, cuda or cuda:N (default: cuda when there is one under preset auto, else the preset's)."""
    model: str | None = None
    """Hub id or local folder of the guidance model's weights (same as --guidance.model)."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    quiet: bool = False
    """No progress bar."""
    mesh: bool = True
    """Export RUN/mesh.glb at the end."""
    video: bool = True
    """Render RUN/turntable.mp4 at the end."""
    turntable_from: str = "mesh"
    """mesh | field: the turntable is the exported mesh rasterized (the asset as downloaded, a small
    share of the field's render time), or a volume render of the field; without a mesh, the field."""
    view: bool = False
    """Serve a live web viewer of the field as it trains."""
    port: int = 8080
    """Port of the --view viewer."""
    config: Sections = dataclasses.field(default_factory=Config)

    @classmethod
    def defaults(cls, argv: list[str]) -> tuple[Generate, list[str]]:
        if len(argv) > 1 and not argv[0].startswith("-") and not argv[1].startswith("-"):
            if argv[1] not in GUIDANCE_CONFIGS:
                raise UserError(f"unexpected argument '{argv[1]}'; put a prompt with spaces in quotes")
        cfg, argv = config_defaults(argv, "auto")
        return cls(prompt=tyro.MISSING, config=cfg), argv  # type: ignore[arg-type]

    def run(self, argv: list[str], default: Generate) -> int:
        from dreamfusion.api import generate, resolve_config

        cfg = own_prior_if_changed(self.config, default.config, argv)
        cfg = resolve_config(config=cfg, steps=self.steps, seed=self.seed, device=self.device)
        if self.model is not None:
            changed = apply_overrides(cfg, {"guidance.model": self.model})
            cfg = own_prior_if_changed(changed, default.config, argv)
        result = generate(
            self.prompt,
            out=self.out,
            resume=self.resume,
            config=cfg,
            progress=False if self.quiet else None,
            export_mesh=self.mesh,
            turntable=self.video,
            turntable_from=self.turntable_from,
            view=self.view,
            view_port=self.port,
        )
        print(f"run folder:  {result.run_dir}")
        print(f"checkpoint:  {result.checkpoint}")
        print(f"preview:     {result.preview}")
        print(f"metrics:     {result.metrics}")
        if result.mesh:
            print(f"mesh:        {result.mesh}")
        if result.video:
            print(f"turntable:   {result.video}")
        if result.skipped_steps:
            print(f"warning: {result.skipped_steps} steps had non-finite gradients and were skipped")
        return 0


@dataclass
class Presets:
    """List the presets."""

    def run(self, argv: list[str], default: Presets | None) -> int:
        from dreamfusion.presets import PRESETS

        print(f"{'auto':8s} generate's default: `default` on a GPU, `cpu` on a CPU")
        for name, fn in PRESETS.items():
            print(f"{name:8s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0


@dataclass
class ShowConfig:
    """Print a preset's resolved config as JSON (the flags of `generate` override it the same way)."""

    preset: str = "default"
    """smoke | cpu | default | paper."""
    config: Sections = dataclasses.field(default_factory=Config)

    @classmethod
    def defaults(cls, argv: list[str]) -> tuple[ShowConfig, list[str]]:
        cfg, argv = config_defaults(argv, "default")
        return cls(config=cfg), argv

    def run(self, argv: list[str], default: ShowConfig) -> int:
        cfg = own_prior_if_changed(self.config, default.config, argv)
        print(json.dumps(to_dict(cfg), indent=2))
        return 0


RunPath = Annotated[Path, tyro.conf.arg(metavar="RUN"), tyro.conf.Positional]


@dataclass
class Export:
    """Extract a textured mesh from a run: marching cubes on the density, floaters removed, decimated,
    UV-unwrapped, albedo baked into a texture (docs/export.md)."""

    run_path: RunPath
    """Run folder (or checkpoint file)."""
    out: Path | None = None
    """Mesh file (default: RUN/mesh.<format>)."""
    format: str | None = None
    """glb | obj | ply (default: from --out, else glb)."""
    resolution: int = 256
    """Grid per axis, 16-512."""
    texture_size: int = 1024
    """Texture side; 0: vertex colors."""
    level: str = "auto"
    """Density iso-level: a number, or auto."""
    faces: int = 50000
    """Decimate to this many faces; textured GLB/OBJ meshes get at most 20,000 (the unwrap's time grows
    faster than the faces, and a 1024^2 texture carries the detail); 0: keep all."""
    keep_fraction: float = 0.05
    """Drop parts with fewer faces than this fraction of the largest."""
    device: str = "auto"
    """cpu, cuda or cuda:N; auto: cuda when there is one, else cpu."""

    def options(self) -> ExportOptions:
        """The export settings these flags ask for; UserError for a level neither auto nor a number."""
        from dreamfusion.export import ExportOptions

        try:
            level = None if self.level == "auto" else float(self.level)
        except ValueError:
            raise UserError(f"--level must be 'auto' or a number (got '{self.level}')") from None
        return ExportOptions(
            resolution=self.resolution,
            level=level,
            texture_size=self.texture_size,
            max_faces=self.faces,
            keep_fraction=self.keep_fraction,
        )

    def run(self, argv: list[str], default: Export | None) -> int:
        from dreamfusion.export import export_mesh, validate_options
        from dreamfusion.training.lifecycle import resolve_device
        from dreamfusion.training.loading import find_checkpoint, load_run

        options = self.options()
        fmt = self.format or (self.out.suffix.lstrip(".") if self.out and self.out.suffix else "glb")
        out = self.out or (find_checkpoint(self.run_path).parent.parent / f"mesh.{fmt}")
        validate_options(options)  # before the (slower) load
        run = load_run(self.run_path, resolve_device(self.device))
        r = export_mesh(run.field, out, options, fmt=fmt)
        texture = f"{r.texture_size[0]}x{r.texture_size[1]} texture" if r.texture_size else "vertex colors"
        print(f"mesh:        {r.path} ({r.faces} faces, {r.vertices} vertices, {texture})")
        print(f"level:       {r.level.value:.4g} ({r.level.rule}), {r.floaters_removed} floaters removed")
        print(
            f"watertight:  {'yes' if r.watertight else 'no (decimation pinched the surface; try --faces 0)'}"
        )
        print(f"time:        {r.seconds:.1f} s")
        return 0


@dataclass
class Render:
    """Render a turntable video of a run."""

    run_path: RunPath
    """Run folder (or checkpoint file)."""
    video: Path | None = None
    """out.mp4 or out.gif (default: RUN/turntable_MODE.mp4)."""
    mode: str = "color"
    """color | albedo | textureless | normal | depth."""
    frames: int = 120
    """Frames in one orbit."""
    elevation: float = 15.0
    """Camera elevation, degrees."""
    size: int = 256
    """Width and height, 16-2048."""
    distance: float = 1.3
    """Camera distance."""
    fps: int = 30
    """Frames per second."""
    light: str = "camera"
    """camera[:AZ,EL] turns with the camera (30,30); world:AZ,EL[,DIST] stays put."""
    mesh: Path | None = None
    """Rasterize this mesh file (.glb, .obj or .ply, e.g. RUN/mesh.glb) instead of rendering the field:
    the asset as downloaded, in a small share of the time (modes color, albedo, textureless, normal)."""
    device: str = "auto"
    """cpu, cuda or cuda:N; auto: cuda when there is one, else cpu."""

    def run(self, argv: list[str], default: Render | None) -> int:
        from dreamfusion.export import check_output
        from dreamfusion.export.turntable import (
            VIDEO_SUFFIXES,
            TurntableOptions,
            parse_light,
            validate,
            write_mesh_turntable,
            write_turntable,
        )
        from dreamfusion.training.lifecycle import resolve_device
        from dreamfusion.training.loading import find_checkpoint, load_run

        options = TurntableOptions(
            frames=self.frames,
            size=self.size,
            mode=self.mode,
            elevation=self.elevation,
            distance=self.distance,
            light=parse_light(self.light),
            fps=self.fps,
        )
        validate(options)
        video = self.video or (find_checkpoint(self.run_path).parent.parent / f"turntable_{self.mode}.mp4")
        check_output(video, VIDEO_SUFFIXES)
        device = resolve_device(self.device)
        run = load_run(self.run_path, device)
        if self.mesh is not None:
            path = write_mesh_turntable(self.mesh, run.background, run.config, video, options, device)
        else:
            path = write_turntable(run.field, run.background, run.config, video, options)
        print(f"turntable:   {path} ({options.frames} frames, {options.size}x{options.size}, {options.mode})")
        return 0


@dataclass
class View:
    """Serve a web viewer of a run (mesh and field renders)."""

    run_path: RunPath
    """Run folder (or checkpoint file)."""
    port: int = 8080
    """Port."""
    host: str = "127.0.0.1"
    """Interface; 0.0.0.0 for all."""
    mesh: Path | None = None
    """Mesh (default: RUN/mesh.glb, else extracted)."""
    resolution: int = 128
    """Grid of a mesh extracted on the fly."""
    show: str = "mesh"
    """What the page shows first: mesh | field."""
    device: str = "auto"
    """cpu, cuda or cuda:N; auto: cuda when there is one, else cpu."""

    def run(self, argv: list[str], default: View | None) -> int:
        from dreamfusion.training.lifecycle import resolve_device
        from dreamfusion.viewer.server import serve_run

        serve_run(
            self.run_path,
            host=self.host,
            port=self.port,
            mesh=self.mesh,
            resolution=self.resolution,
            device=resolve_device(self.device),
            show=self.show,
        )
        return 0
