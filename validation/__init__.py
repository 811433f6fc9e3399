"""Fidelity validation of synthetic slides: MONAI metrics, stain/morphology statistics, seams, memorisation."""
