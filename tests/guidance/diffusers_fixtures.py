"""Tiny random-weight Stable Diffusion and DeepFloyd IF folders, built from configs on the CPU.

Like diffusers' `get_dummy_components()` (tests/pipelines/stable_diffusion/test_stable_diffusion.py),
but saved with the real pipelines' `save_pretrained`, so the tests load them through the same
`from_pretrained` calls users hit. Nothing here touches the network: the tokenizers are built from
vocabularies written below.

- CLIP: a character-level BPE vocabulary (every letter alone and word-final, no merges), passed as
  `CLIPTokenizer(vocab=..., merges=...)` (transformers 5 ignores the old vocab_file= keyword).
- T5: the real IF folder ships a sentencepiece `spiece.model`; building one needs a trained
  sentencepiece model, so the test tokenizer is a unigram `T5Tokenizer(vocab=[(piece, score), ...])`,
  saved as tokenizer.json. `AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")`, the IF
  loading path, reads both forms.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

EMBED_DIM = 32
"""Width of the tiny text encoders' hidden states (and of the U-Nets' cross-attention)."""
MAX_TOKENS = 77
"""Token length of the tiny CLIP tokenizer: the real one's, so prompts are never truncated here."""


def clip_tokenizer():
    """A character-level CLIP BPE tokenizer: '<|startoftext|>', '<|endoftext|>', then c and c</w>."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ",.!'-":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def t5_tokenizer():
    """A character-level unigram T5 tokenizer (pad 0, eos 1, unk 2, then word-initial and inner pieces)."""
    from transformers import T5Tokenizer

    chars = string.ascii_lowercase + string.digits + ",.!'-"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [("\u2581" + c, -1.5) for c in chars] + [(c, -2.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def build_tiny_stable_diffusion(folder: Path, seed: int = 0) -> Path:
    """A StableDiffusionPipeline folder: 2-level U-Net (sample 8), 2-level VAE (x2), 2-layer CLIP.

    Native image size: 8 latents x 2 = 16 pixels.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=EMBED_DIM,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=EMBED_DIM,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=MAX_TOKENS,
        )
    )
    # SD ships a PNDM scheduler config with these betas; the backend reads only the noise schedule.
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_deepfloyd_if(folder: Path, seed: int = 0) -> Path:
    """An IFPipeline (stage I) folder: IF-shaped 2-level U-Net (3 -> 6 channels, sample 16), 2-layer T5."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=6,  # epsilon and the learned variance range, as IF-I
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=EMBED_DIM,
        encoder_hid_dim=EMBED_DIM,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=8,
    )
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=EMBED_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    scheduler = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", variance_type="learned_range", prediction_type="epsilon"
    )
    pipe = IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder
