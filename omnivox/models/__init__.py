"""Every TRELLIS.2 network, loadable from the official checkpoint files unchanged.

Families (one file each):
    flow        -- `SparseStructureFlowModel` (dense DiT) and `SLatFlowModel` (sparse DiT; shape and texture)
    sc_vae      -- SC-VAE encoders/decoders: `FlexiDualGridVaeEncoder/Decoder` (shape),
                   `SparseUnetVaeEncoder/Decoder` (material)
    ss_decoder  -- `SparseStructureDecoder` (dense 16^3 latent -> 64^3 occupancy logits)
    ss_encoder  -- `SparseStructureEncoder` (64^3 occupancy -> 16^3 latent; data toolkit only)
    dinov3      -- `DINOv3ViT` image encoder (Hugging Face weights)
    loading     -- `from_pretrained` / `save_pretrained` and the name -> class table `MODEL_CLASSES`

Example:
    >>> from omnivox.models import from_pretrained                      # doctest: +SKIP
    >>> flow = from_pretrained("TRELLIS.2-4B/ckpts/ss_flow_img_dit_1_3B_64_bf16", device="cuda")  # doctest: +SKIP
"""

from omnivox.models.dinov3 import DINOv3Config, DINOv3ViT, normalize_images
from omnivox.models.flow import FlowConfig, SLatFlowModel, SparseStructureFlowModel
from omnivox.models.loading import MODEL_CLASSES, build_model, from_pretrained, save_pretrained
from omnivox.models.sc_vae import (DecoderOutput, EncoderOutput, FlexiDualGridDecoderConfig, FlexiDualGridOutput,
                                   FlexiDualGridVaeDecoder, FlexiDualGridVaeEncoder, SparseUnetVaeDecoder,
                                   SparseUnetVaeEncoder, VaeDecoderConfig, VaeEncoderConfig)
from omnivox.models.ss_decoder import SparseStructureDecoder, SparseStructureDecoderConfig
from omnivox.models.ss_encoder import (SparseStructureEncoder, SparseStructureEncoderConfig,
                                       SparseStructurePosterior, occupancy_grid)

__all__ = [
    "DINOv3Config", "DINOv3ViT", "normalize_images",
    "FlowConfig", "SLatFlowModel", "SparseStructureFlowModel",
    "MODEL_CLASSES", "build_model", "from_pretrained", "save_pretrained",
    "DecoderOutput", "EncoderOutput", "FlexiDualGridDecoderConfig", "FlexiDualGridOutput",
    "FlexiDualGridVaeDecoder", "FlexiDualGridVaeEncoder", "SparseUnetVaeDecoder", "SparseUnetVaeEncoder",
    "VaeDecoderConfig", "VaeEncoderConfig",
    "SparseStructureDecoder", "SparseStructureDecoderConfig",
    "SparseStructureEncoder", "SparseStructureEncoderConfig", "SparseStructurePosterior", "occupancy_grid",
]
