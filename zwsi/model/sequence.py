"""The inputs of the S3-DiT's general sequence forward: one report, clean context images and one noisy target.

A `SequenceSample` is one model call's worth of tokens for one window (DESIGN §3):

| segment  | tokens                        | refiner                      | modulation in the blocks       |
|----------|-------------------------------|------------------------------|--------------------------------|
| report   | text features, padded to 32   | context refiner (none)       | t, like Z-Image (clean with the cached-context mask) |
| target   | noisy latents, padded to 32   | noise refiner                | t of the current step          |
| contexts | clean latents, each padded    | noise refiner (with target)  | clean: t = 1                   |

Positions are float (t, h, w) per image token in raster order (see `zwsi.model.rope`). The report always sits at
(k+1, 0, 0), k over its padded length, as in Z-Image; image pad tokens sit at (0, 0, 0).

`report_attends_target=False` and `context_attends_target=False` give the cached-context mask: report / context
queries do not see target keys, so (the report then also being modulated as clean) every non-target hidden state is
a function of the clean inputs only and is the same at every sampling step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from zwsi.model.attention import AttentionLayout
from zwsi.model.config import SEQ_MULTI_OF, S3DiTConfig


@dataclass
class ImageSegment:
    """Latents of one image and the (t, h, w) position of each of its tokens.

    Attributes:
        latents: (C, F, H, W) clean or noisy latents.
        positions: (F*H/p*W/p, 3) float (t, h, w) RoPE positions per token, raster order (f, i, j).
    """

    latents: Tensor
    positions: Tensor


@dataclass
class SequenceSample:
    """One sample of the general forward: a report, any number of clean contexts and one noisy target.

    Attributes:
        target: the noisy latents, modulated with t; its prediction is the output.
        t: scalar in [0, 1], 0 = noise, 1 = clean (Z-Image convention).
        report: (L, cap_feat_dim) valid text features; L = 0 means the report is dropped.
        contexts: clean latents, modulated with t = 1.
        report_attends_target: False -> report queries do not see target keys (cached-context mask).
        context_attends_target: False -> context queries do not see target keys (cached-context mask).
    """

    target: ImageSegment
    t: float | Tensor
    report: Tensor
    contexts: list[ImageSegment] = field(default_factory=list)
    report_attends_target: bool = True
    context_attends_target: bool = True


def report_token_count(n: int) -> int:
    """Padded report length Lp = L + (-L mod 32); it fixes the target's t-axis position Lp + 1."""
    if n < 0:
        raise ValueError(f"report length must be >= 0, got {n}")
    return n + (-n) % SEQ_MULTI_OF


def grid_positions(t: float, n_h: int, n_w: int, h0: float = 0.0, w0: float = 0.0, step: float = 1.0) -> Tensor:
    """Positions of an n_h x n_w token grid in raster order: (t, h0 + i*step, w0 + j*step).

    Returns:
        (n_h*n_w, 3) float32.
    """
    if n_h <= 0 or n_w <= 0:
        raise ValueError(f"grid size must be positive, got n_h={n_h}, n_w={n_w}")
    i = h0 + step * torch.arange(n_h, dtype=torch.float64)  # (n_h,)
    j = w0 + step * torch.arange(n_w, dtype=torch.float64)  # (n_w,)
    ii, jj = torch.meshgrid(i, j, indexing="ij")  # (n_h, n_w) each
    tt = torch.full_like(ii, float(t))  # (n_h, n_w)
    return torch.stack([tt, ii, jj], dim=-1).reshape(-1, 3).float()  # (n_h*n_w, 3)


def volume_positions(t0: float, n_f: int, n_h: int, n_w: int) -> Tensor:
    """Z-Image's integer grid for an (n_f, n_h, n_w) token volume: (t0 + f, i, j) in raster order. (N, 3) float32."""
    return torch.cat([grid_positions(t0 + f, n_h, n_w) for f in range(n_f)], dim=0)  # (n_f*n_h*n_w, 3)


def t2i_sample(latents: Tensor, t: float | Tensor, cap_feats: Tensor, patch_size: int = 2, f_patch_size: int = 1) -> SequenceSample:
    """Z-Image's own text-to-image sequence: report at (k+1, 0, 0), target at (Lp+1+f, i, j), no context.

    Args:
        latents: (C, F, H, W) noisy latents.
        t: scalar in [0, 1], 0 = noise.
        cap_feats: (L, cap_feat_dim) valid caption features.
        patch_size: spatial patch size of the model (2 for Z-Image).
        f_patch_size: frame patch size of the model (1 for Z-Image).
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (C, F, H, W), got shape {tuple(latents.shape)}")
    _, f, h, w = latents.shape
    lp = report_token_count(cap_feats.shape[0])
    positions = volume_positions(lp + 1, f // f_patch_size, h // patch_size, w // patch_size)  # (N, 3)
    return SequenceSample(target=ImageSegment(latents, positions), t=t, report=cap_feats)


# ----------------------------------------------------------------------------------------------------------------
#  Packing a batch of samples into one token sequence (no padding between samples)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """A batch of SequenceSamples as packed token streams and the indices that connect them.

    Two streams are embedded and refined separately: the image stream (per sample: target, then its contexts, each
    padded to 32 with pad tokens) and the report stream (per sample: its report padded to 32). The unified sequence
    is, per sample, [target | contexts | report], gathered from cat([image stream, report stream]).

    Attributes:
        patches: (N_img, P) patch features, zero rows at pad positions.
        img_pad: (N_img,) True at image pad tokens.
        img_positions: (N_img, 3) float64 RoPE positions.
        report_feats: (N_rep, cap_feat_dim) text features, zero rows at pad positions.
        rep_pad: (N_rep,) True at report pad tokens.
        rep_positions: (N_rep, 3) float64 RoPE positions.
        cond_t: (K,) float32 distinct t values of the batch (1.0 for clean tokens, t_b for sample b's noisy tokens).
        img_cond, rep_cond: (N_img,), (N_rep,) index into cond_t per token.
        img_layout, rep_layout, unified_layout: attention layouts of the three stages (rep_layout None: no report).
        unified_index: (N,) rows of cat([image stream, report stream]) in unified order.
        unified_is_cat: True when unified_index is the identity (one sample), so the gather can be skipped.
        unified_is_target: (N,) True at target tokens (pads included) of the unified sequence.
        target_index: (N_tgt,) unified rows of the real target tokens, sample after sample.
        target_shapes: (C, F, H, W) of each target.
    """

    patches: Tensor
    img_pad: Tensor
    img_positions: Tensor
    report_feats: Tensor
    rep_pad: Tensor
    rep_positions: Tensor
    cond_t: Tensor
    img_cond: Tensor
    rep_cond: Tensor
    img_layout: AttentionLayout
    rep_layout: AttentionLayout | None
    unified_layout: AttentionLayout
    unified_index: Tensor
    unified_is_cat: bool
    unified_is_target: Tensor
    target_index: Tensor
    target_shapes: list[tuple[int, int, int, int]]

    @property
    def unified_cond(self) -> Tensor:
        """(N,) condition index per unified token."""
        return torch.cat([self.img_cond, self.rep_cond])[self.unified_index]

    @property
    def target_cond(self) -> Tensor:
        """(N_tgt,) condition index per real target token."""
        return self.unified_cond[self.target_index]


def patchify(latents: Tensor, p: int, pf: int) -> Tensor:
    """(C, F, H, W) -> (F/pf * H/p * W/p, pf*p*p*C): raster order over (f, i, j), channel-last inside the patch."""
    c, f, h, w = latents.shape
    x = latents.reshape(c, f // pf, pf, h // p, p, w // p, p)  # (C, Ft, pf, Ht, p, Wt, p)
    return x.permute(1, 3, 5, 2, 4, 6, 0).reshape((f // pf) * (h // p) * (w // p), pf * p * p * c)  # (n, P)


def unpatchify(tokens: Tensor, shape: tuple[int, int, int, int], p: int, pf: int) -> Tensor:
    """Inverse of `patchify`: (n, P) -> (C, F, H, W)."""
    c, f, h, w = shape
    x = tokens.reshape(f // pf, h // p, w // p, pf, p, p, c)  # (Ft, Ht, Wt, pf, p, p, C)
    return x.permute(6, 0, 3, 1, 4, 2, 5).reshape(c, f, h, w)  # (C, F, H, W)


def _padded(n: int) -> int:
    return n + (-n) % SEQ_MULTI_OF


def _check_segment(seg: ImageSegment, cfg: S3DiTConfig, what: str) -> int:
    """Validate one image segment; returns its number of (unpadded) tokens."""
    lat, pos = seg.latents, seg.positions
    p, pf = cfg.patch_size, cfg.f_patch_size
    if lat.ndim != 4 or lat.shape[0] != cfg.in_channels:
        raise ValueError(f"{what} latents must be ({cfg.in_channels}, F, H, W), got shape {tuple(lat.shape)}")
    _, f, h, w = lat.shape
    if f % pf or h % p or w % p or f == 0 or h == 0 or w == 0:
        raise ValueError(f"{what} latents {tuple(lat.shape)}: F must be a positive multiple of {pf}, H and W of {p}")
    n = (f // pf) * (h // p) * (w // p)
    if pos.shape != (n, 3):
        raise ValueError(f"{what} positions must have shape ({n}, 3) for latents {tuple(lat.shape)}, got {tuple(pos.shape)}")
    return n


def _merge_blocks(blocks: list[tuple[tuple[int, int], tuple[int, int]]]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Drop empty query blocks and merge consecutive blocks that attend to the same key range."""
    out: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for (qs, qe), kb in blocks:
        if qe == qs:
            continue
        if out and out[-1][1] == kb and out[-1][0][1] == qs:
            out[-1] = ((out[-1][0][0], qe), kb)
        else:
            out.append(((qs, qe), kb))
    return out


def _layout(blocks: list[tuple[tuple[int, int], tuple[int, int]]]) -> AttentionLayout:
    merged = _merge_blocks(blocks)
    return AttentionLayout([q for q, _ in merged], [k for _, k in merged])


def pack_batch(batch: list[SequenceSample], cfg: S3DiTConfig) -> PackedBatch:
    """Pack samples into the image and report streams and the unified sequence (see `PackedBatch`).

    Raises:
        ValueError: for an empty batch, or a segment whose shape does not fit the config.
    """
    if not batch:
        raise ValueError("the batch is empty; expected at least one SequenceSample")
    p, pf = cfg.patch_size, cfg.f_patch_size
    device = batch[0].target.latents.device
    cond_ids: dict[float, int] = {}  # one modulation per distinct t (clean tokens: t = 1)
    cond_t: list[float] = []

    def cond_id(t: float | Tensor) -> int:
        value = float(torch.as_tensor(t, dtype=torch.float32))
        if value not in cond_ids:
            cond_ids[value] = len(cond_t)
            cond_t.append(value)
        return cond_ids[value]

    patches, img_pad, img_pos, img_cond = [], [], [], []
    feats, rep_pad, rep_pos, rep_cond = [], [], [], []
    img_blocks, rep_blocks, uni_blocks = [], [], []
    img_counts, rep_counts, target_shapes, target_counts, target_padded = [], [], [], [], []
    for b, s in enumerate(batch):
        noisy = cond_id(s.t)
        segments = [(s.target, noisy)] + [(ctx, cond_id(1.0)) for ctx in s.contexts]
        n_img = 0
        for k, (seg, cid) in enumerate(segments):
            n = _check_segment(seg, cfg, f"sample {b} " + ("target" if k == 0 else f"context {k - 1}"))
            n_pad = _padded(n) - n
            patches.append(patchify(seg.latents, p, pf))
            patches.append(seg.latents.new_zeros(n_pad, cfg.patch_dim))
            img_pad.append(torch.arange(n + n_pad) >= n)
            img_pos.append(torch.cat([seg.positions.to("cpu", torch.float64), torch.zeros(n_pad, 3, dtype=torch.float64)]))
            img_cond.append(torch.full((n + n_pad,), cid, dtype=torch.long))
            n_img += n + n_pad
            if k == 0:
                target_shapes.append(tuple(seg.latents.shape))
                target_counts.append(n)
                target_padded.append(n + n_pad)
        if s.report.ndim != 2 or s.report.shape[1] != cfg.cap_feat_dim:
            raise ValueError(f"sample {b} report must be (L, {cfg.cap_feat_dim}), got shape {tuple(s.report.shape)}")
        n_rep = s.report.shape[0]
        lp = report_token_count(n_rep)
        feats += [s.report, s.report.new_zeros(lp - n_rep, cfg.cap_feat_dim)]
        rep_pad.append(torch.arange(lp) >= n_rep)
        rep_pos.append(torch.stack([torch.arange(1, lp + 1), torch.zeros(lp), torch.zeros(lp)], dim=-1).double())
        rid = noisy if s.report_attends_target else cond_id(1.0)
        rep_cond.append(torch.full((lp,), rid, dtype=torch.long))
        img_counts.append(n_img)
        rep_counts.append(lp)

        # attention blocks of this sample in each stage: (query range, key range)
        i0, t_end, i_end = sum(img_counts[:-1]), sum(img_counts[:-1]) + target_padded[-1], sum(img_counts)
        ctx_keys = (t_end, i_end) if not s.context_attends_target else (i0, i_end)
        img_blocks += [((i0, t_end), (i0, i_end)), ((t_end, i_end), ctx_keys)]
        r0 = sum(rep_counts[:-1])
        rep_blocks.append(((r0, r0 + lp), (r0, r0 + lp)))
        u0 = sum(img_counts[:-1]) + sum(rep_counts[:-1])
        u_t, u_c, u_end = u0 + target_padded[-1], u0 + n_img, u0 + n_img + lp
        uni_blocks += [
            ((u0, u_t), (u0, u_end)),
            ((u_t, u_c), (u_t, u_end) if not s.context_attends_target else (u0, u_end)),
            ((u_c, u_end), (u_t, u_end) if not s.report_attends_target else (u0, u_end)),
        ]

    n_img_total = sum(img_counts)
    unified_index, unified_is_target, target_index = [], [], []
    i0 = r0 = u0 = 0
    for b in range(len(batch)):
        unified_index += [torch.arange(i0, i0 + img_counts[b]), n_img_total + torch.arange(r0, r0 + rep_counts[b])]
        unified_is_target.append(torch.arange(img_counts[b] + rep_counts[b]) < target_padded[b])
        target_index.append(u0 + torch.arange(target_counts[b]))
        i0, r0, u0 = i0 + img_counts[b], r0 + rep_counts[b], u0 + img_counts[b] + rep_counts[b]

    dtype = batch[0].target.latents.dtype
    return PackedBatch(
        patches=torch.cat(patches).to(device),  # (N_img, P)
        img_pad=torch.cat(img_pad).to(device),  # (N_img,)
        img_positions=torch.cat(img_pos).to(device),  # (N_img, 3)
        report_feats=torch.cat(feats).to(device, dtype) if sum(rep_counts) else torch.zeros(0, cfg.cap_feat_dim, device=device, dtype=dtype),
        rep_pad=torch.cat(rep_pad).to(device),  # (N_rep,)
        rep_positions=torch.cat(rep_pos).to(device),  # (N_rep, 3)
        cond_t=torch.tensor(cond_t, dtype=torch.float32, device=device),  # (K,)
        img_cond=torch.cat(img_cond).to(device),  # (N_img,)
        rep_cond=torch.cat(rep_cond).to(device),  # (N_rep,)
        img_layout=_layout(img_blocks),
        rep_layout=_layout(rep_blocks) if sum(rep_counts) else None,
        unified_layout=_layout(uni_blocks),
        unified_index=torch.cat(unified_index).to(device),  # (N,)
        unified_is_cat=len(batch) == 1,
        unified_is_target=torch.cat(unified_is_target).to(device),  # (N,)
        target_index=torch.cat(target_index).to(device),  # (N_tgt,)
        target_shapes=target_shapes,
    )
