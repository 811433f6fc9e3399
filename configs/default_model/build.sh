#!/usr/bin/env bash
# Rebuild the built-in default model (zwsi/default_model) from scratch with the project's own commands, on the
# bundled CC0 slide CMU-1-Small-Region.svs. CPU: ~1.7 h on 2 cores (VAE ~40 + 10 min, prepare ~2 min,
# transformer ~45 min). Every step resumes: rerun the script after an interruption.
#
#   bash configs/default_model/build.sh            # from the repository root, in the project's virtualenv
#   RUN=runs/my-default bash configs/default_model/build.sh
#
# The result is copied into zwsi/default_model/ (transformer/, vae/, text_encoder/, scheduler/, zwsi_generate.yaml);
# MODEL_CARD.md there records the measured figures and is edited by hand.
set -euo pipefail
SLIDE=${SLIDE:-zwsi/default_model/slide/CMU-1-Small-Region.svs}
RUN=${RUN:-runs/default}
ZWSI=${ZWSI:-zwsi}

# 1. the small VAE (AutoencoderKL 8/16/32/128, 16 latent channels, /8) on 128 px crops at 0.5, 2 and 8 µm/px
if [ ! -f "$RUN/vae/vae/config.json" ]; then
  resume=""
  if ls -d "$RUN"/vae/checkpoints/step_* >/dev/null 2>&1; then resume="--resume"; fi
  $ZWSI train-vae --config configs/vae/small.yaml --slide "$SLIDE" --out "$RUN/vae" --no-progress $resume
fi

# 1b. the decoder alone on every crop, tissue/glass edges included; the encoder (so the latents) stays stage 1's
if [ ! -f "$RUN/vae-decoder/vae/config.json" ]; then
  resume=""
  if ls -d "$RUN"/vae-decoder/checkpoints/step_* >/dev/null 2>&1; then resume="--resume"; fi
  $ZWSI train-vae --config configs/vae/small-decoder.yaml --init "$RUN/vae/vae" --slide "$SLIDE" \
    --out "$RUN/vae-decoder" --no-progress $resume
fi

# 2. the dataset: the slide's tissue windows on the 8 -> 2 -> 0.5 µm/px ladder, 16-token windows of the patch-4
#    model, from 4 x 4 shifted grids; its description encoded by the offline all-MiniLM-L6-v2
$ZWSI prepare --slides "$SLIDE" --reports configs/default_model/CMU-1-Small-Region.txt --out "$RUN/dataset" \
  --vae "$RUN/vae/vae" --text-encoder minilm --mpp 0.5 --coarsest-mpp 8 --factor 4 --window-tokens 16 \
  --context-tokens 2 --overview-margin 2 --patch-size 4 --grid-offsets 4 --encode-margin 2 --no-progress

# 3. the zwsi-small transformer from random weights
if [ ! -d "$RUN/train/final/ema-transformer" ]; then
  if ls -d "$RUN"/train/checkpoints/step-* >/dev/null 2>&1; then  # resume the newest checkpoint
    $ZWSI train --config configs/train/zwsi-small.yaml --dataset "$RUN/dataset" --out "$RUN/train" --resume "$RUN/train"
  else
    $ZWSI train --config configs/train/zwsi-small.yaml --dataset "$RUN/dataset" --out "$RUN/train"
  fi
fi

# 4. the pipeline folder, then into the package
rm -rf "$RUN/model"
$ZWSI train export --transformer "$RUN/train/final/ema-transformer" --vae "$RUN/vae-decoder/vae" \
  --generate-config configs/generate/zwsi-small.yaml --shift 3.0 --out "$RUN/model"
for part in transformer vae text_encoder scheduler; do
  rm -rf "zwsi/default_model/$part"
  cp -r "$RUN/model/$part" zwsi/default_model/
done
cp "$RUN/model/zwsi_generate.yaml" "$RUN/model/model_index.json" zwsi/default_model/
chmod -R a+rX zwsi/default_model
du -sh zwsi/default_model
