"""cps3d: semi-supervised 3D segmentation with Cross Pseudo Supervision (3D-CPS) on nnU-Net v2."""

__version__ = "0.1.0"
