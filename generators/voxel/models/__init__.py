"""Shipped default checkpoints of the voxel generator (unet.pt, vae.pt) and MODEL_CARD.md."""
