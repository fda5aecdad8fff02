"""SCNAS: scalable neural architecture search for 3D medical image segmentation."""

__version__ = "0.1.0"
