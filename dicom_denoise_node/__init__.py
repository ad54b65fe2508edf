"""dicom-denoise-node: a DICOM node that denoises low-dose CT series and sends derived series to a PACS."""

__version__ = "0.1.0"
