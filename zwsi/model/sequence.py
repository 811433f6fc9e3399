"""The inputs of the S3-DiT's general sequence forward: one report, clean context images and one noisy target.

A `SequenceSample` is one model call's worth of tokens for one window (DESIGN §3):

| segment  | tokens                      | refiner                     | modulation in the main layers        |
|----------|-----------------------------|-----------------------------|--------------------------------------|
| report   | text features, padded to 32 | context refiner (none)      | t, as Z-Image (t = 1 under the mask) |
| target   | noisy latents, padded to 32 | noise refiner               | t of the current step                |
| contexts | clean latents, each padded  | noise refiner (with target) | clean: t = 1                         |

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


def t2i_sample(
    latents: Tensor, t: float | Tensor, cap_feats: Tensor, patch_size: int = 2, f_patch_size: int = 1
) -> SequenceSample:
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
        raise ValueError(
            f"{what} positions must have shape ({n}, 3) for latents {tuple(lat.shape)}, got {tuple(pos.shape)}"
        )
    return n


Blocks = list[tuple[tuple[int, int], tuple[int, int]]]  # (query range, key range) per attention block


def _merge_blocks(blocks: Blocks) -> Blocks:
    """Drop empty query blocks and merge consecutive blocks that attend to the same key range."""
    out: Blocks = []
    for (qs, qe), kb in blocks:
        if qe == qs:
            continue
        if out and out[-1][1] == kb and out[-1][0][1] == qs:
            out[-1] = ((out[-1][0][0], qe), kb)
        else:
            out.append(((qs, qe), kb))
    return out


def _layout(blocks: Blocks) -> AttentionLayout:
    merged = _merge_blocks(blocks)
    return AttentionLayout([q for q, _ in merged], [k for _, k in merged])


class _Conditions:
    """The distinct t values of a batch (one modulation each); clean tokens use t = 1."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._ids: dict[float, int] = {}

    def id(self, t: float | Tensor) -> int:
        value = float(torch.as_tensor(t, dtype=torch.float32))
        if value not in self._ids:
            self._ids[value] = len(self.values)
            self.values.append(value)
        return self._ids[value]


@dataclass
class _SampleTokens:
    """One sample's pieces of the image and report streams (CPU index data; patches/feats on the input device)."""

    patches: list[Tensor]
    img_pad: list[Tensor]
    img_pos: list[Tensor]
    img_cond: list[Tensor]
    feats: list[Tensor]
    rep_pad: Tensor
    rep_pos: Tensor
    rep_cond: Tensor
    n_target: int  # real target tokens
    n_target_padded: int
    n_img: int  # target + contexts, pads included
    n_rep: int  # Lp
    target_shape: tuple[int, int, int, int]


def _sample_tokens(b: int, s: SequenceSample, cfg: S3DiTConfig, conds: _Conditions) -> _SampleTokens:
    """Patchify and pad the target and contexts (each to a multiple of 32) and the report, with positions and
    per-token condition ids."""
    p, pf = cfg.patch_size, cfg.f_patch_size
    noisy = conds.id(s.t)
    segments = [(s.target, noisy, "target")] + [(c, conds.id(1.0), f"context {j}") for j, c in enumerate(s.contexts)]
    tok = _SampleTokens([], [], [], [], [], torch.empty(0), torch.empty(0), torch.empty(0), 0, 0, 0, 0, (0, 0, 0, 0))
    for seg, cid, what in segments:
        n = _check_segment(seg, cfg, f"sample {b} {what}")
        n_pad = _padded(n) - n
        tok.patches += [patchify(seg.latents, p, pf), seg.latents.new_zeros(n_pad, cfg.patch_dim)]  # (n+pad, P)
        tok.img_pad.append(torch.arange(n + n_pad) >= n)
        pad_pos = torch.zeros(n_pad, 3, dtype=torch.float64)  # image pad tokens sit at (0, 0, 0)
        tok.img_pos.append(torch.cat([seg.positions.to("cpu", torch.float64), pad_pos]))  # (n+pad, 3)
        tok.img_cond.append(torch.full((n + n_pad,), cid, dtype=torch.long))
        if seg is s.target:
            c, f, h, w = seg.latents.shape  # (C, F, H, W)
            tok.n_target, tok.n_target_padded, tok.target_shape = n, n + n_pad, (c, f, h, w)
        tok.n_img += n + n_pad

    if s.report.ndim != 2 or s.report.shape[1] != cfg.cap_feat_dim:
        raise ValueError(f"sample {b} report must be (L, {cfg.cap_feat_dim}), got shape {tuple(s.report.shape)}")
    n_rep = s.report.shape[0]
    lp = report_token_count(n_rep)
    tok.feats = [s.report, s.report.new_zeros(lp - n_rep, cfg.cap_feat_dim)]  # (Lp, cap_feat_dim)
    tok.rep_pad = torch.arange(lp) >= n_rep
    k = torch.arange(1, lp + 1, dtype=torch.float64)  # report token k at (k+1, 0, 0), pads continuing
    tok.rep_pos = torch.stack([k, torch.zeros_like(k), torch.zeros_like(k)], dim=-1)  # (Lp, 3)
    report_cond = noisy if s.report_attends_target else conds.id(1.0)  # clean under the cached-context mask
    tok.rep_cond = torch.full((lp,), report_cond, dtype=torch.long)
    tok.n_rep = lp
    return tok


def _sample_blocks(s: SequenceSample, tok: _SampleTokens, i0: int, r0: int, u0: int) -> tuple[Blocks, Blocks, Blocks]:
    """Attention blocks of one sample in the image stream (offset i0), report stream (r0) and unified sequence (u0).

    Target queries see every key of their sample; context / report queries leave out the target's keys when the
    sample asks for the cached-context mask.
    """
    t_end, i_end = i0 + tok.n_target_padded, i0 + tok.n_img
    img = [((i0, t_end), (i0, i_end)), ((t_end, i_end), (i0, i_end) if s.context_attends_target else (t_end, i_end))]
    rep = [((r0, r0 + tok.n_rep), (r0, r0 + tok.n_rep))]
    u_t, u_c, u_end = u0 + tok.n_target_padded, u0 + tok.n_img, u0 + tok.n_img + tok.n_rep
    everything, not_target = (u0, u_end), (u_t, u_end)
    uni = [
        ((u0, u_t), everything),
        ((u_t, u_c), everything if s.context_attends_target else not_target),
        ((u_c, u_end), everything if s.report_attends_target else not_target),
    ]
    return img, rep, uni


def pack_batch(batch: list[SequenceSample], cfg: S3DiTConfig) -> PackedBatch:
    """Pack samples into the image and report streams and the unified sequence (see `PackedBatch`).

    Raises:
        ValueError: for an empty batch, or a segment whose shape does not fit the config.
    """
    if not batch:
        raise ValueError("the batch is empty; expected at least one SequenceSample")
    device, dtype = batch[0].target.latents.device, batch[0].target.latents.dtype
    conds = _Conditions()
    tokens = [_sample_tokens(b, s, cfg, conds) for b, s in enumerate(batch)]
    n_img_total = sum(tok.n_img for tok in tokens)

    img_blocks, rep_blocks, uni_blocks = [], [], []
    unified_index, unified_is_target, target_index = [], [], []
    i0 = r0 = u0 = 0
    for s, tok in zip(batch, tokens):
        img, rep, uni = _sample_blocks(s, tok, i0, r0, u0)
        img_blocks += img
        rep_blocks += rep
        uni_blocks += uni
        unified_index += [torch.arange(i0, i0 + tok.n_img), n_img_total + torch.arange(r0, r0 + tok.n_rep)]
        unified_is_target.append(torch.arange(tok.n_img + tok.n_rep) < tok.n_target_padded)
        target_index.append(u0 + torch.arange(tok.n_target))
        i0, r0, u0 = i0 + tok.n_img, r0 + tok.n_rep, u0 + tok.n_img + tok.n_rep

    has_report = r0 > 0
    feats = [f for tok in tokens for f in tok.feats]
    return PackedBatch(
        patches=torch.cat([x for tok in tokens for x in tok.patches]).to(device),  # (N_img, P)
        img_pad=torch.cat([x for tok in tokens for x in tok.img_pad]).to(device),  # (N_img,)
        img_positions=torch.cat([x for tok in tokens for x in tok.img_pos]).to(device),  # (N_img, 3)
        report_feats=torch.cat(feats).to(device, dtype),  # (N_rep, cap_feat_dim)
        rep_pad=torch.cat([tok.rep_pad for tok in tokens]).to(device),  # (N_rep,)
        rep_positions=torch.cat([tok.rep_pos for tok in tokens]).to(device),  # (N_rep, 3)
        cond_t=torch.tensor(conds.values, dtype=torch.float32, device=device),  # (K,)
        img_cond=torch.cat([x for tok in tokens for x in tok.img_cond]).to(device),  # (N_img,)
        rep_cond=torch.cat([tok.rep_cond for tok in tokens]).to(device),  # (N_rep,)
        img_layout=_layout(img_blocks),
        rep_layout=_layout(rep_blocks) if has_report else None,
        unified_layout=_layout(uni_blocks),
        unified_index=torch.cat(unified_index).to(device),  # (N,)
        unified_is_cat=len(batch) == 1,
        unified_is_target=torch.cat(unified_is_target).to(device),  # (N,)
        target_index=torch.cat(target_index).to(device),  # (N_tgt,)
        target_shapes=[tok.target_shape for tok in tokens],
    )
