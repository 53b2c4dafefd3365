"""Diffusion-based gradual edits (``docs/methods.md``): an InstructPix2Pix text-guidance
sweep run as one batched call.

The paper makes one pipeline call per strength (the text-guidance scale), with the same seed and a fixed image
guidance, so the sequence is smooth. Here the seed and the image are shared, so the initial latents are too: the
whole sweep runs as one batch through cfx's own denoising loop over the pipeline's components, with a guidance
scale per batch member (the pipeline's ``guidance_scale`` is a single number). The loop uses a deterministic DDIM
scheduler built from the pipeline's scheduler config, so a batched sweep equals per-strength runs.

Diffusers pipelines are wrapped, not exposed: cfx's editor interface stays when upstream pipelines change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cfx.core.images import as_float_images
from cfx.trust.fitted import Fitted, FittedError

from .base import Counterfactuals, known_scores
from .editors import strength_grid

__all__ = ["DEFAULT_INSTRUCTIONS", "DDPMEditor", "InstructPix2PixEditor", "SDEditCounterfactual", "tiny_instruct_pix2pix",
           "train_ddpm"]

#: Property → edit instruction; extend with ``InstructPix2PixEditor(..., instructions={...})``.
DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "brightness": "Make the image brighter. Keep everything else the same.",
    "darkness": "Make the image darker. Keep everything else the same.",
    "contrast": "Increase the contrast. Keep everything else the same.",
    "saturation": "Make the colours more saturated. Keep everything else the same.",
    "blur": "Make the image blurry. Keep everything else the same.",
    "snow": "Add snow to the scene. Keep everything else the same.",
    "fur_white": "Change the fur colour to white. Keep the background and other details the same.",
    "fur_black": "Change the fur colour to black. Keep the background and other details the same.",
    "background_dark": "Make the background darker. Keep the object the same.",
}


class InstructPix2PixEditor:
    """Gradual edits with InstructPix2Pix: one image per text-guidance scale, same seed, fixed image guidance.

    ``pipeline`` is a ``StableDiffusionInstructPix2PixPipeline`` or a local folder to load one from (cfx never
    downloads). ``property`` names the edit; its instruction comes from ``instructions`` (default
    :data:`DEFAULT_INSTRUCTIONS`) unless ``instruction`` is given. Strengths are text-guidance scales in
    ``range`` (default 1.01…12.5, as in the EPGM paper); ``sweep(steps=N)`` gives the paper's linspace.
    """

    neutral = 1.0
    directions = ("increase",)

    def __init__(self, pipeline, property: str, instruction: str | None = None,
                 instructions: dict[str, str] | None = None, image_guidance: float = 2.5, steps: int = 20,
                 seed: int = 0, range: tuple[float, float] = (1.01, 12.5), batch_size: int = 16,
                 device: str | torch.device | None = None):
        from diffusers import DDIMScheduler

        if isinstance(pipeline, (str, Path)):
            pipeline = self.load(pipeline)
        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if getattr(pipeline, part, None) is None:
                raise ValueError(f"the pipeline has no {part}; give a StableDiffusionInstructPix2PixPipeline")
        mapping = dict(DEFAULT_INSTRUCTIONS, **(instructions or {}))
        if instruction is None and property not in mapping:
            raise ValueError(f"no instruction for property {property!r}; pass instruction=... or add it to "
                             f"instructions (known: {sorted(mapping)})")
        self.pipeline = pipeline
        self.property = property
        self.instruction = instruction or mapping[property]
        self.image_guidance, self.steps, self.seed, self.range = image_guidance, steps, seed, range
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else pipeline.unet.device
        self.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        self.vae_scale = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)

    @staticmethod
    def load(path: str | Path):
        """Load a local InstructPix2Pix pipeline folder (no download)."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        path = Path(path)
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{str(path)!r} is not a diffusers pipeline folder (no model_index.json); save one with "
                             "pipeline.save_pretrained(DIR). cfx never downloads models")
        return StableDiffusionInstructPix2PixPipeline.from_pretrained(str(path), local_files_only=True,
                                                                      safety_checker=None,
                                                                      requires_safety_checker=False)

    def sweep(self, direction: str | None = None, steps: int = 10) -> Tensor:
        return torch.linspace(self.range[0], self.range[1], steps)

    @torch.no_grad()
    def _embed(self, text: str) -> Tensor:
        tok = self.pipeline.tokenizer
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        return self.pipeline.text_encoder(ids)[0]

    @torch.no_grad()
    def _edit_one(self, image: Tensor, guidance: Tensor) -> Tensor:
        """One image ``(3, H, W)`` in [0, 1] (H, W multiples of the VAE factor) at guidance scales ``(S,)``."""
        pipe, s = self.pipeline, len(guidance)
        dtype = pipe.unet.dtype
        cond, uncond = self._embed(self.instruction), self._embed("")
        embeds = torch.cat([cond.expand(s, -1, -1), uncond.expand(s, -1, -1), uncond.expand(s, -1, -1)]).to(dtype)
        pixels = (image.unsqueeze(0) * 2 - 1).to(self.device, dtype)
        image_latents = pipe.vae.encode(pixels).latent_dist.mode()
        image_latents = torch.cat([image_latents.expand(s, -1, -1, -1), image_latents.expand(s, -1, -1, -1),
                                   torch.zeros_like(image_latents).expand(s, -1, -1, -1)])
        scheduler = self.scheduler
        scheduler.set_timesteps(self.steps, device=self.device)
        h, w = image.shape[-2] // self.vae_scale, image.shape[-1] // self.vae_scale
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.randn((1, pipe.vae.config.latent_channels, h, w), generator=g, dtype=torch.float32)
        latents = (noise.to(self.device, dtype) * scheduler.init_noise_sigma).expand(s, -1, -1, -1).contiguous()
        g_text = guidance.to(self.device, dtype).view(s, 1, 1, 1)
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents] * 3), t)
            eps = pipe.unet(torch.cat([model_in, image_latents], dim=1), t, encoder_hidden_states=embeds,
                            return_dict=False)[0]
            e_text, e_image, e_uncond = eps.chunk(3)
            eps = e_uncond + g_text * (e_text - e_image) + self.image_guidance * (e_image - e_uncond)
            latents = scheduler.step(eps, t, latents, return_dict=False)[0]
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return (decoded.float() / 2 + 0.5).clamp(0, 1).cpu()

    def edit(self, images: Tensor, strengths: Sequence[float] | Tensor, *, attributes=None) -> Tensor:
        """``(N, S + 1, 3, H, W)``: each original, then its edit at every text-guidance scale (shared ``(S,)`` or per
        image ``(N, S)``; one batched sweep per image, in chunks of ``batch_size`` strengths)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        grid = strength_grid(strengths, len(images))
        h, w = images.shape[-2:]
        m = self.vae_scale
        hh, ww = max(m, round(h / m) * m), max(m, round(w / m) * m)
        out = []
        for image, s in zip(images, grid):
            x = image if (hh, ww) == (h, w) else F.interpolate(image[None], size=(hh, ww), mode="bilinear")[0]
            edits = torch.cat([self._edit_one(x, s[i:i + self.batch_size]) for i in range(0, len(s), self.batch_size)])
            if (hh, ww) != (h, w):
                edits = F.interpolate(edits, size=(h, w), mode="bilinear").clamp(0, 1)
            out.append(torch.cat([image.cpu().unsqueeze(0), edits]))
        return torch.stack(out)


# ---------------------------------------------------------------------------------------------- SDEdit with a DDPM

def small_unet(image_size: int, channels: int = 3):
    """The small unconditional UNet cfx trains on reference data (0.27M parameters at 32×32, no attention)."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(16, 32, 32), down_block_types=("DownBlock2D",) * 3,
                       up_block_types=("UpBlock2D",) * 3, norm_num_groups=8)


def train_ddpm(images: Tensor, steps: int = 600, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
               image_size: int | None = None, progress: bool = True):
    """Train :func:`small_unet` to predict noise on ``images`` (uint8 or [0, 1] floats), DDPM with a cosine
    schedule. About 0.25 s per step at 32×32 on 2 CPU cores: the default 600 steps take 2-3 minutes, enough for a
    smooth "toward the training data" edit, not for a good generative model."""
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm


    if len(images) == 0:
        raise ValueError("no images to train the DDPM on")
    size = image_size or int(images.shape[-1])
    torch.manual_seed(seed)
    unet = small_unet(size, images.shape[1])
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    unet.train()
    losses = []
    for _ in tqdm(range(steps), desc="ddpm", unit="step", disable=not progress, leave=False):
        idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=g)
        x0 = as_float_images(images[idx])
        if x0.shape[-1] != size:
            x0 = F.interpolate(x0, size=(size, size), mode="bilinear", antialias=True)
        x0 = x0 * 2 - 1
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (len(x0),), generator=g)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    unet.eval()
    return unet, losses


class DDPMEditor:
    """SDEdit with a DDPM trained on the reference data: noise the image to level ``strength`` ∈ [0, 1] (the share
    of the diffusion), then denoise with DDIM. Low strengths keep the image; high ones replace it by what the model
    learned the data looks like: a gradual "toward the training distribution" edit. The noise is drawn once per
    image (same seed for every strength) so the sequence is smooth. Strength 0 returns the original."""

    neutral = 0.0
    range = (0.0, 1.0)
    directions = ("increase",)
    property = "toward_training_data"

    def __init__(self, unet, steps: int = 25, seed: int = 0, batch_size: int = 64):
        from diffusers import DDIMScheduler

        self.unet = unet.eval()
        self.scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
        self.steps, self.seed, self.batch_size = steps, seed, batch_size
        self.size = int(unet.config.sample_size)

    @classmethod
    def from_fitted(cls, fitted: Fitted, **kwargs) -> "DDPMEditor":
        """The editor on the DDPM of a fitted folder (``cfx fit --ddpm``)."""
        if fitted.ddpm is None:
            raise FittedError(f"{fitted.path} has no DDPM; run cfx fit with --ddpm")
        return cls(fitted.ddpm, **kwargs)

    def sweep(self, direction: str | None = None, steps: int = 10) -> Tensor:
        return torch.linspace(0.0, 1.0, steps + 1)[1:]

    @torch.no_grad()
    def apply(self, images: Tensor, strength: float) -> Tensor:
        """Edit a batch at one noise level."""
        if images.dim() != 4 or images.shape[1] != self.unet.config.in_channels:
            raise ValueError(f"images must be (N, {self.unet.config.in_channels}, H, W) in [0, 1], got "
                             f"{tuple(images.shape)}")
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if strength == 0:
            return images.clone()
        h, w = images.shape[-2:]
        dev = next(self.unet.parameters()).device
        x = images.to(dev)
        if (h, w) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        x0 = x * 2 - 1
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((1, *x0.shape[1:]), generator=g).expand_as(x0).to(dev)  # shared by every image
        self.scheduler.set_timesteps(self.steps, device=dev)
        ts = self.scheduler.timesteps
        start = min(len(ts) - 1, int(round(len(ts) * (1 - strength))))
        ts = ts[start:]
        sample = self.scheduler.add_noise(x0, noise, ts[:1].repeat(len(x0)))
        for t in ts:
            sample = self.scheduler.step(self.unet(sample, t).sample, t, sample).prev_sample
        out = (sample / 2 + 0.5).clamp(0, 1)
        if (h, w) != (self.size, self.size):
            out = F.interpolate(out, size=(h, w), mode="bilinear").clamp(0, 1)
        return out.to(images.device)

    def edit(self, images: Tensor, strengths: Sequence[float] | Tensor, *, attributes=None) -> Tensor:
        """``(N, S + 1, C, H, W)``: the originals, then one edit per noise level (shared ``(S,)`` or per image
        ``(N, S)``; each distinct level is one batched pass over the images that need it)."""
        grid = strength_grid(strengths, len(images))
        out = images.unsqueeze(1).repeat(1, grid.shape[1] + 1, *([1] * (images.dim() - 1)))
        for k in torch.unique(grid).tolist():
            rows, cols = torch.nonzero(grid == k, as_tuple=True)
            sel = torch.unique(rows)
            edited = torch.cat([self.apply(images[sel[i:i + self.batch_size]], float(k))
                                for i in range(0, len(sel), self.batch_size)])
            where = torch.searchsorted(sel, rows)
            out[rows, cols + 1] = edited[where].to(out.dtype)
        return out


class SDEditCounterfactual:
    """A counterfactual generator from the DDPM editor: ``generate(images)`` moves each image toward the training
    data at one noise level and reports the target score before and after."""

    name = "sdedit"

    def __init__(self, target, editor: DDPMEditor, strength: float = 0.5, threshold: float = 0.9):
        self.target, self.editor, self.strength, self.threshold = target, editor, strength, threshold

    def generate(self, images: Tensor, score_before: Tensor | None = None):
        """SDEdit counterfactuals of ``images``. ``score_before``: the target scores of ``images`` when already
        known (saves a forward pass)."""
        import time

        known = known_scores(score_before, len(images))
        t0 = time.perf_counter()
        out = self.editor.apply(images, self.strength)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            before = known if known is not None else self.target(images).float().cpu()
            after = self.target(out).float().cpu()
        return Counterfactuals(self.name, out.cpu(), before, after, after >= self.threshold,
                               torch.zeros(len(out), dtype=torch.long), seconds, self.threshold)


def tiny_instruct_pix2pix(seed: int = 0):
    """A tiny InstructPix2Pix pipeline with random weights, built offline (a trained BPE tokenizer, a 2-layer CLIP
    text encoder, a small VAE and UNet): for testing and benchmarking the plumbing, not for real edits."""
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(list(DEFAULT_INSTRUCTIONS.values()) * 20,
                            trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<unk>", "<|startoftext|>",
                                                                                "<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<pad>", unk_token="<unk>", model_max_length=77)
    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        projection_dim=32, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(32, 64), latent_channels=4, norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=8,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    pipe = StableDiffusionInstructPix2PixPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok,
                                                  scheduler=DDIMScheduler(beta_schedule="scaled_linear"),
                                                  safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
