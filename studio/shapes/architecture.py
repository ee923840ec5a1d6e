"""Model configurations of the embedded shapes-world pipeline (SD layout, tiny sizes)."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from studio.shapes.render import IMAGE_SIZE
from studio.shapes.vocabulary import MAX_LENGTH, vocabulary

LATENT_SIZE = IMAGE_SIZE // 8


@dataclass(frozen=True)
class Architecture:
    vae_channels: tuple[int, ...] = (32, 64, 64, 64)  # 4 blocks = 3 down-samplings = 8x, like SD
    text_width: int = 128
    text_layers: int = 2
    unet_channels: tuple[int, ...] = (32, 64, 128)  # cross-attention at 16x16 and 8x8
    unet_head_dim: int = 32


def make_vae(arch: Architecture) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels, layers_per_block=1, norm_num_groups=32,
    )


def make_text_encoder(arch: Architecture) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocabulary()), hidden_size=arch.text_width, intermediate_size=4 * arch.text_width,
            num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_width // 32,
            max_position_embeddings=MAX_LENGTH, projection_dim=arch.text_width,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )


def make_unet(arch: Architecture) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=arch.unet_channels, layers_per_block=1, norm_num_groups=16,
        # diffusers' historical naming: attention_head_dim is the number of heads per block
        attention_head_dim=tuple(c // arch.unet_head_dim for c in arch.unet_channels),
        cross_attention_dim=arch.text_width,
    )


def make_scheduler() -> DDIMScheduler:
    """v-prediction with zero terminal SNR (Lin et al. 2023): with SD's plain scaled-linear betas the
    last timestep leaks the clean latent's mean, and the background colour follows the noise, not the prompt."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
