"""`dreamfusion batch PROMPTS --out DIR`: one dataclass (its fields are the flags); the work is
imported lazily."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from dreamfusion.commands import Sections, config_defaults, own_prior_if_changed
from dreamfusion.config import Config
from dreamfusion.errors import UserError


@dataclass
class Batch:
    """Train every prompt of PROMPTS at every seed, each into its own run folder OUT/<prompt>-s<seed>
    (the folder `generate` makes), as many at once as the machine or Ray cluster holds. OUT/batch.json
    lists every run's status and figures. Running the same command again skips finished runs and
    resumes the others. Config fields can be set too, e.g. --optim.lr 1e-3."""

    prompts: Annotated[Path, tyro.conf.arg(metavar="PROMPTS"), tyro.conf.Positional]
    """Text file (one prompt a line, # comments) or a JSON list of prompts."""
    out: Path = Path("outputs/batch")
    """Folder of the run folders and batch.json; on a cluster, a path every node sees."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of every prompt."""
    preset: str = "auto"
    """auto | smoke | cpu | default | paper (auto: default on a GPU, cpu on a CPU); sets the defaults."""
    steps: int | None = None
    """Optimization steps (default: the preset's train.steps)."""
    device: str | None = None
    """cpu or cuda (default: cuda when the cluster has GPUs, else cpu)."""
    address: str | None = None
    """Join a running Ray cluster: auto or HOST:PORT (default: start one on this machine for the command)."""
    gpus_per_run: float | None = None
    """GPUs per run; 0.125 puts 8 runs on a GPU (default: 1 on CUDA)."""
    cpus_per_run: float = 1.0
    """CPU cores per run."""
    export_task: bool = False
    """Mesh and turntable in a task of their own on CPU cores, at the sizes of the training device
    (slow where that is a GPU: the field queries take minutes per asset on a CPU); by default each
    run makes them in its own task, on its GPU share."""
    max_retries: int = 3
    """Reruns of a run whose worker or node died (each resumes from its last checkpoint)."""
    mesh: bool = True
    """Export RUN/mesh.glb."""
    video: bool = True
    """Render RUN/turntable.mp4."""
    turntable_from: str = "mesh"
    """mesh | field: the turntable is the exported mesh rasterized (the asset as downloaded, a small
    share of the field's render time), or a volume render of the field; without a mesh, the field."""
    quiet: bool = False
    """No progress bar."""
    config: Sections = dataclasses.field(default_factory=Config)

    @classmethod
    def defaults(cls, argv: list[str]) -> tuple[Batch, list[str]]:
        cfg, argv = config_defaults(argv, "auto")
        return cls(prompts=tyro.MISSING, config=cfg), argv  # type: ignore[arg-type]

    def run(self, argv: list[str], default: Batch) -> int:
        from dreamfusion.batch.prompts import read_prompts
        from dreamfusion.batch.runner import generate_many, summary

        records = generate_many(
            read_prompts(self.prompts),
            seeds=self.seeds,
            out=self.out,
            steps=self.steps,
            device=self.device,
            config=own_prior_if_changed(self.config, default.config, argv),
            address=self.address,
            gpus_per_run=self.gpus_per_run,
            cpus_per_run=self.cpus_per_run,
            export_mesh=self.mesh,
            turntable=self.video,
            turntable_from=self.turntable_from,
            export_task_on_cpu=self.export_task,
            max_retries=self.max_retries,
            progress=not self.quiet,
            log=lambda line: print(line, flush=True),
        )
        line = summary(records, self.out)
        if any(r.get("status") == "failed" for r in records):
            raise UserError(f"{line}; fix the cause and run the same command again")
        print(line)
        return 0
