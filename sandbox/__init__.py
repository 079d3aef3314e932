"""Text diffusion vs autoregressive sandbox: library package."""
