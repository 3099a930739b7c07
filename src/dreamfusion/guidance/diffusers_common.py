"""What the diffusers backends share: finding and loading weights (offline-aware, with one-line
errors), dtypes, and the prompt-embedding cache. The SDS step itself is in `unet_sds`.

diffusers and transformers are imported only inside functions here, so `import dreamfusion` never
needs them; `require_diffusers` turns their absence into one line naming the extra to install.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from dreamfusion.atomic import atomic_write
from dreamfusion.errors import UserError
from dreamfusion.scene.prompts import VIEWS


@dataclass
class DiffusersGuidanceConfig:
    """What the diffusers backends (stable-diffusion, deepfloyd-if) share."""

    model: str | None = None
    """Hub id or local folder of the weights (None: the backend's default model)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a hub id in `model`."""
    variant: str | None = "auto"
    """Weight-file variant such as fp16; auto: fp16 files when loading in float16 and they exist (or when
    a folder holds only those), else the full files; None: full files."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Frozen model precision (auto: float16 on CUDA, float32 on CPU)."""
    image_size: int = 0
    """stable-diffusion: renders are resized to this before the VAE; deepfloyd-if: before the U-Net.
    0: the model's native size (512 for SD 1.x/2.x-base, 64 for IF stage I)."""
    negative_prompt: str = ""
    """Prompt of the 'unconditional' branch of classifier-free guidance."""
    cache_dir: str | None = None
    """Folder of the prompt-embedding cache; None: $DREAMFUSION_CACHE or ~/.cache/dreamfusion (model
    weights stay in the Hugging Face cache, see HF_HOME)."""
    embedding_cache: bool = True
    """Reuse prompt embeddings saved on disk (keyed by model and text)."""
    cuda_graphs: bool = True
    """On CUDA, replay the frozen denoiser's forward from a CUDA graph (one launch instead of hundreds)."""
    compile: bool | None = None
    """torch.compile the U-Net and (stable-diffusion) the VAE encoder: a minute or two of compiling at the
    first steps (less once PyTorch has cached it), faster after. None: on CUDA only. If compiling fails,
    the model runs eagerly, with a warning."""
    channels_last: bool = False
    """Keep the U-Net in channels_last memory format, which recent NVIDIA GPUs run faster in float16. SD's
    VAE encoder stays channels-first: channels_last makes its forward and backward slower, eager and
    compiled (benchmarks/guidance_gpu.py)."""
    perp_neg: bool = False
    """Perp-Neg (Armandpour et al. 2023): the positive prompt interpolates the view prompts by azimuth and
    the other views' prompts act as perpendicular negatives, against multi-face objects. Costs two more
    U-Net evaluations per image."""
    perp_neg_front_side: tuple[float, float, float] = (4.0, 0.5, -2.426)
    """Perp-Neg (a, b, c): weight a exp(-b r) + c of the front prompt as a negative, front to side;
    r = 1 at the front."""
    perp_neg_side_front: tuple[float, float, float] = (4.0, 0.5, -2.426)
    """Perp-Neg (a, b, c): weight of the side prompt as a negative, front to side; r = 1 at the side."""
    perp_neg_side_back: tuple[float, float, float] = (1.0, 0.5, -0.606)
    """Perp-Neg (a, b, c): weight of the side prompt as a negative, side to back; r = 1 at the side."""
    perp_neg_front_back: tuple[float, float, float] = (1.0, 0.5, 0.967)
    """Perp-Neg (a, b, c): weight of the front prompt as a negative, side to back; r = 1 at the side."""


EXTRA = 'pip install "dreamfusion[diffusers]"'
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def require_diffusers(backend: str) -> None:
    """Import diffusers and transformers, or raise a one-line UserError naming the extra."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        missing = e.name or str(e)
        raise UserError(
            f"the {backend} guidance needs the diffusers extra ({missing} is missing): {EXTRA}"
        ) from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """DiffusersGuidanceConfig.dtype as a torch dtype: auto is float16 on CUDA and float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise UserError(f"unknown guidance dtype '{name}'; use auto, float32, float16 or bfloat16")
    return dtypes[name]


# ------------------------------------------------------------------------------ finding weights
@dataclass(frozen=True)
class ModelKind:
    """What a backend accepts: the diffusers pipeline class of the folder and the parts it loads."""

    backend: str  # CLI name, for messages
    pipelines: tuple[str, ...]  # accepted `_class_name` of model_index.json
    components: tuple[str, ...]  # subfolders the backend loads
    default_id: str


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are: a local folder or a hub id, plus what identifies them for caching."""

    name: str  # as the user gave it
    location: str  # what from_pretrained gets
    revision: str | None
    local_only: bool  # offline: from_pretrained must not touch the network
    fingerprint: str  # the weights' identity in the embedding cache


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(constants.HF_HUB_OFFLINE)


def how_to_provide(model: str) -> str:
    return (
        f"where the network allows, run `hf download {model} --local-dir DIR` (older huggingface_hub: "
        f"`huggingface-cli download {model} --local-dir DIR`) and pass --guidance.model DIR"
    )


def check_pipeline(index: dict[str, Any], kind: ModelKind, where: str) -> None:
    """UserError unless model_index.json names an accepted pipeline with every needed component."""
    name = index.get("_class_name")
    if name not in kind.pipelines:
        raise UserError(
            f"{where} holds a {name or 'non-pipeline'} model, not one the {kind.backend} guidance uses "
            f"({' or '.join(kind.pipelines)}, e.g. {kind.default_id})"
        )
    missing = [c for c in kind.components if not (isinstance(index.get(c), list) and index[c][0])]
    if missing:
        raise UserError(f"{where} has no {', '.join(missing)} in its model_index.json")


def locate_model(model: str, revision: str | None, kind: ModelKind) -> ModelSource:
    """A local diffusers folder of the right kind, or a hub id whose model_index.json can be fetched.

    Every failure is one UserError line: which id or folder, what was tried, how to provide it.
    """
    path = Path(model).expanduser()
    if path.exists() or not HUB_ID.match(model):
        return local_folder(path, kind)
    offline = hub_offline()
    from huggingface_hub import hf_hub_download

    try:
        index_file = hf_hub_download(model, "model_index.json", revision=revision, local_files_only=offline)
    except Exception as e:  # noqa: BLE001 - every hub failure becomes the same one-line advice
        raise UserError(hub_failure(model, revision, offline, e)) from None
    check_pipeline(json.loads(Path(index_file).read_text()), kind, f"hub model '{model}'")
    snapshot = Path(index_file).parent
    commit = snapshot.name if snapshot.parent.name == "snapshots" else (revision or "main")
    return ModelSource(model, model, revision, offline, f"hub:{model}@{commit}")


def hub_failure(model: str, revision: str | None, offline: bool, error: Exception) -> str:
    """The one line for a hub id that could not be fetched."""
    kind = type(error).__name__
    at = f" at revision {revision}" if revision else ""
    if offline:
        tried = (
            "it is not a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE=1 kept the Hub out"
        )
    elif kind == "GatedRepoError":
        tried = (
            "the Hub says it is gated: accept its license on huggingface.co and log in with `hf auth login`"
        )
    elif kind in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        tried = f"it is not a local folder and the Hub has no such model{at}"
    else:
        tried = (
            f"it is not a local folder nor in the Hugging Face cache, and the Hub was unreachable ({kind})"
        )
    return f"cannot load guidance model '{model}'{at}: {tried}; {how_to_provide(model)}"


def local_folder(path: Path, kind: ModelKind) -> ModelSource:
    """Validate a local diffusers folder and fingerprint it by its text encoder's files."""
    if not path.is_dir():
        raise UserError(
            f"guidance model '{path}' is neither a folder nor a hub id like {kind.default_id}; "
            f"{how_to_provide(kind.default_id)}"
        )
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise UserError(
            f"'{path}' is not a diffusers model folder (no model_index.json); give a "
            f"{' or '.join(kind.pipelines)} folder, saved with save_pretrained or fetched with `hf download`"
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {index_file}: {e}") from None
    check_pipeline(index, kind, f"'{path}'")
    for component in kind.components:
        if not (path / component).is_dir():
            raise UserError(f"'{path}' lists {component} in model_index.json but has no {component}/ folder")
    for component in kind.components:
        check_safetensors(path / component)
    stats = [
        f"{f.relative_to(path)}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
        for sub in ("text_encoder", "tokenizer")
        for f in sorted((path / sub).glob("*"))
        if f.is_file()
    ]
    fingerprint = (
        "dir:" + str(path.resolve()) + ":" + hashlib.sha256("|".join(stats).encode()).hexdigest()[:16]
    )
    return ModelSource(str(path), str(path), None, True, fingerprint)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_safetensors(folder: Path) -> None:
    """UserError for a component folder whose weights are pickle files only: unpickling runs whatever
    code the file carries, so weights load from safetensors alone."""
    names = [f.name for f in folder.iterdir() if f.is_file()]
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickled and not any(n.endswith(".safetensors") for n in names):
        raise UserError(
            f"'{folder}' holds only pickle weights ({pickled[0]}), which can run code when loaded; "
            "save it with safetensors (save_pretrained(..., safe_serialization=True)) and pass that folder"
        )


def weight_variants(
    source: ModelSource, subfolder: str, variant: str | None, dtype: torch.dtype | None
) -> list:
    """Weight-file variants to try in order. 'auto': fp16 files first when loading in float16, the full
    files first otherwise; in a local folder only the variants present (a folder holding only fp16
    files loads them in any dtype); for a hub id fp16 then full when loading in float16, else full."""
    if variant != "auto":
        return [variant]
    order = ["fp16", None] if dtype == torch.float16 else [None, "fp16"]
    folder = Path(source.location) / subfolder
    if not folder.is_dir():
        return order if dtype == torch.float16 else [None]

    def is_weight(name: str, v: str | None) -> bool:
        if not name.endswith((".safetensors", ".bin", ".index.json")):
            return False
        tagged = ".fp16." in name or ".fp16-" in name
        return tagged if v == "fp16" else not tagged

    present = [v for v in order if any(is_weight(f.name, v) for f in folder.iterdir())]
    return present or [None]


def load_component(
    cls: Any,
    source: ModelSource,
    subfolder: str,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
) -> Any:
    """cls.from_pretrained(source, subfolder) with the dtype and weight variant asked for (see
    `weight_variants`); a failure is one UserError line naming the model and the part."""
    kwargs: dict[str, Any] = {"subfolder": subfolder, "local_files_only": source.local_only}
    if source.revision:
        kwargs["revision"] = source.revision
    if dtype is not None:
        # transformers >= 4.56 calls it dtype; diffusers (and older transformers) torch_dtype.
        kwargs["dtype" if cls.__module__.startswith("transformers") else "torch_dtype"] = dtype
    folder = Path(source.location) / subfolder
    if folder.is_dir() and any(f.suffix == ".safetensors" for f in folder.iterdir()):
        kwargs["use_safetensors"] = True  # never fall back to a pickle file beside them
    error: Exception | None = None
    for v in weight_variants(source, subfolder, variant, dtype):
        try:
            return cls.from_pretrained(source.location, **({"variant": v} if v else {}), **kwargs)
        except (OSError, ValueError) as e:  # a missing variant file, or a broken part
            error = e
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UserError(f"cannot load the {subfolder} of guidance model '{source.name}': {first}")


# ---------------------------------------------------------------------------- prompt embeddings
def default_cache_dir() -> Path:
    """$DREAMFUSION_CACHE, else $XDG_CACHE_HOME/dreamfusion, else ~/.cache/dreamfusion."""
    if os.environ.get("DREAMFUSION_CACHE"):
        return Path(os.environ["DREAMFUSION_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "dreamfusion"


class EmbeddingCache:
    """Text-encoder outputs on disk, one safetensors file per (model fingerprint, encoder, text)."""

    def __init__(self, root: Path | None):
        self.root = root  # None: caching off

    def path(self, fingerprint: str, text: str) -> Path:
        key = hashlib.sha256(json.dumps([fingerprint, text]).encode()).hexdigest()
        return Path(self.root or ".") / "embeddings" / key[:2] / f"{key}.safetensors"

    def load(self, fingerprint: str, text: str) -> Tensor | None:
        """(L, D) on the CPU, or None when absent or unreadable (it is then recomputed)."""
        if self.root is None:
            return None
        from safetensors.torch import load_file

        try:
            return load_file(self.path(fingerprint, text))["embedding"]
        except Exception:  # noqa: BLE001 - a missing or torn file is a cache miss
            return None

    def save(self, fingerprint: str, text: str, embedding: Tensor) -> None:
        if self.root is None:
            return
        from safetensors.torch import save_file

        body = {"embedding": embedding.detach().cpu().contiguous()}
        metadata = {"model": fingerprint, "text": text}
        atomic_write(self.path(fingerprint, text), lambda tmp: save_file(body, str(tmp), metadata))


TextEncoder = Callable[[list[str]], Tensor]
"""encode(texts) -> (N, L, D) hidden states, one row per text."""


@dataclass
class PromptEmbeddings:
    """What `embed` returns: the prompts' text embeddings and the negative prompt's, on the model's device."""

    prompts: tuple[str, ...]
    cond: Tensor  # (P, L, D), one row per prompt
    uncond: Tensor  # (1, L, D), the negative ("unconditional") prompt

    def view_rows(self) -> list[int]:
        """Row of each VIEWS prompt (front, side, back, overhead); ValueError if one is missing."""
        rows = []
        for view in VIEWS:
            found = [i for i, p in enumerate(self.prompts) if p.endswith(f", {view} view")]
            if not found:
                raise ValueError(f"Perp-Neg needs the four view prompts; none ends with ', {view} view'")
            rows.append(found[0])
        return rows


def embed_prompts(
    prompts: Sequence[str],
    cfg: DiffusersGuidanceConfig,
    fingerprint: str,
    load_encoder: Callable[[], TextEncoder],
    device: torch.device,
    dtype: torch.dtype,
) -> PromptEmbeddings:
    """Embed prompts and cfg.negative_prompt, from the disk cache where possible.

    The text encoder is loaded (by `load_encoder`) only when some text misses the cache, and dropped
    as soon as the texts are embedded: it is never needed again during training.
    """
    if isinstance(prompts, str):
        raise TypeError("embed takes a sequence of prompts, not one string")
    if not prompts:
        raise ValueError("embed needs at least one prompt")
    cache = EmbeddingCache(
        Path(cfg.cache_dir or default_cache_dir()).expanduser() if cfg.embedding_cache else None
    )
    texts = list(dict.fromkeys([*prompts, cfg.negative_prompt]))
    found = {t: cache.load(fingerprint, t) for t in texts}
    missing = [t for t in texts if found[t] is None]
    if missing:
        encode = load_encoder()
        with torch.no_grad():
            encoded = encode(missing)  # (M, L, D)
        del encode  # frees the text encoder (its only reference)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for text, row in zip(missing, encoded, strict=True):
            found[text] = row.cpu()
            cache.save(fingerprint, text, row)
    cond = torch.stack([found[p] for p in prompts]).to(device=device, dtype=dtype)
    uncond = found[cfg.negative_prompt][None].to(device=device, dtype=dtype)
    embeddings = PromptEmbeddings(tuple(prompts), cond, uncond)
    if cfg.perp_neg:
        embeddings.view_rows()  # fail now, before training, if a view prompt is missing
    return embeddings
