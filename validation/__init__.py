"""Fidelity validation of synthetic slides: MONAI metrics, stain/morphology statistics, seams, memorisation.

Modules (import what you need; nothing here is imported eagerly):

| module | what it holds |
|---|---|
| `fid` | Fréchet distance: moment form (MONAI) and sample form (equal to `monai.metrics.FIDMetric`, fast) |
| `image_metrics` | MMD² (MONAI `MMDMetric`), MS-SSIM diversity, paired SSIM/PSNR (MONAI) |
| `bootstrap` | percentile / basic bootstrap intervals, permutation p-values |
| `features` | timm feature extractors with local weights; offline default EfficientNet-Lite0 |
| `stain`, `morphology` | OD / HED / Macenko stain statistics; tissue, nuclei, sharpness, noise per tile |
| `seams`, `magnification`, `slide_checks` | window-border seam score, level consistency, their slide-level readers |
| `memorisation` | nearest-training-tile distances against held-out real tiles; near-copy flags |
| `inputs` | tiles per µm/px level from slides (via `slide_io`) or tile images |
| `pipeline` | `run_validation` (what `zwsi validate` runs): metrics.json + findings |
| `verdict` | the plain verdict per magnification (its thresholds in one place), checks' premises ("not applicable"), the training-data warning |
| `summary` | the synthetic slide's conditioning from its provenance, the glossary, `summary.md` |
| `scalebar` | scale bars and magnification captions on the report's pictures |
| `html_report` | the self-contained HTML report |
| `reader_study`, `review` | helpers for the clinician notebooks in `validation/notebooks/` |
| `perturb` | planted damage (stain shift, blur, noise, seams) for tests and demonstrations |
"""
