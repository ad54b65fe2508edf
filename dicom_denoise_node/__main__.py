"""`python -m dicom_denoise_node` = the `denoise-node` command."""

from dicom_denoise_node.cli import app

app(prog_name="denoise-node")
