"""SD-format architectures at tiny sizes: the embedded shapes model, and the random test model.

One factory serves both, so the test model has exactly the structure of the shipped one
(8x VAE, CLIP text encoder, word-level tokenizer, cross-attention at 16x16 and 8x8 latents,
v-prediction with zero terminal SNR), only narrower.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from studio.shapes.render import IMAGE_SIZE
from studio.shapes.vocabulary import MAX_LENGTH, build_tokenizer, vocabulary

LATENT_SIZE = IMAGE_SIZE // 8


@dataclass(frozen=True)
class ShapesArchitecture:
    vae_channels: tuple[int, ...] = (32, 64, 64, 64)  # 4 blocks = 3 down-samplings = 8x, like SD
    vae_norm_groups: int = 32
    text_width: int = 128
    text_layers: int = 2
    unet_channels: tuple[int, ...] = (32, 64, 128)  # cross-attention at every level but the last: 16x16, 8x8
    unet_head_dim: int = 32
    unet_norm_groups: int = 16


# Random-init test model: same structure, a fraction of the width (fast CPU tests).
TINY = ShapesArchitecture(vae_channels=(8, 8, 16, 16), vae_norm_groups=8, text_width=32,
                    unet_channels=(16, 32, 32), unet_head_dim=8, unet_norm_groups=8)


def make_vae(arch: ShapesArchitecture) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels, layers_per_block=1, norm_num_groups=arch.vae_norm_groups,
    )


def make_text_encoder(arch: ShapesArchitecture) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocabulary()), hidden_size=arch.text_width, intermediate_size=4 * arch.text_width,
            num_hidden_layers=arch.text_layers, num_attention_heads=max(1, arch.text_width // 32),
            max_position_embeddings=MAX_LENGTH, projection_dim=arch.text_width,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )


def make_unet(arch: ShapesArchitecture) -> UNet2DConditionModel:
    levels = len(arch.unet_channels)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        block_out_channels=arch.unet_channels, layers_per_block=1, norm_num_groups=arch.unet_norm_groups,
        # diffusers' historical naming: attention_head_dim is the number of heads per block
        attention_head_dim=tuple(c // arch.unet_head_dim for c in arch.unet_channels),
        cross_attention_dim=arch.text_width,
    )


def make_shapes_scheduler() -> DDIMScheduler:
    """v-prediction with zero terminal SNR (Lin et al. 2023): with SD's plain scaled-linear betas the
    last timestep leaks the clean latent's mean, and the background colour follows the noise, not the prompt."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def make_pipeline(arch: ShapesArchitecture, vae=None, text_encoder=None, unet=None) -> StableDiffusionPipeline:
    """A stock StableDiffusionPipeline of this architecture; components not given are randomly initialised."""
    return StableDiffusionPipeline(
        vae=vae or make_vae(arch), text_encoder=text_encoder or make_text_encoder(arch), tokenizer=build_tokenizer(),
        unet=unet or make_unet(arch), scheduler=make_shapes_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
