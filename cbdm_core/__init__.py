"""cbdm: class-balancing diffusion models for long-tailed class-conditional generation."""
