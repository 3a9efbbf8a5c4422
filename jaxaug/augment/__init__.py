"""Image augmentation: differentiable geometric and colour transforms, learnable augmenters."""
