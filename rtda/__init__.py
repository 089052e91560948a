"""RTDA: real-time unsupervised domain adaptation for semantic segmentation (BiSeNet + a light
fully convolutional discriminator), on the fused kernels of ``rtda_kernels``."""

__version__ = "0.1.0"
