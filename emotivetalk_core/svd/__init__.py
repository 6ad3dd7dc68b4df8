"""Stable Video Diffusion's own parts, which ETHD is built on: building its UNet, VAE and image
encoder (``build``), Stability's single-file layout <-> diffusers (``convert``), loading SVD from
its files or from ComfyUI's objects (``load``), how SVD conditions on the portrait
(``conditioning``) and decoding its latents into frames (``vae_decode``)."""
