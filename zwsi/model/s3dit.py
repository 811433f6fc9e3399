"""The S3-DiT: Z-Image's single-stream diffusion transformer, with a packed multi-segment sequence forward.

Parameter names and shapes equal the official checkpoint's (diffusers' `ZImageTransformer2DModel`), so a hub
`transformer/` folder loads with `strict=True`. In the plain text-to-image case (`forward_t2i`) the output is the
reference's; `forward` generalises it to DESIGN §3's sequences: per sample a report, clean contexts and one noisy
target, all samples packed into one token sequence without padding (see `zwsi.model.sequence`).

Stages (zimage-architecture.md §3): timestep embedding -> image stream (target + contexts) through the noise
refiner with per-token modulation -> report stream through the unmodulated context refiner -> per sample
[target | contexts | report] through the main layers -> final layer on the target tokens -> unpatchify.

Shape letters: B samples; N tokens of a packed sequence; D = dim; H heads; Dh = head_dim; A = adaln_dim (256);
K distinct timestep conditions of the batch; P = pF*p*p*C features of one patch; (C, F, H, W) latents.
"""

from __future__ import annotations

import math
import typing

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zwsi.model.attention import AttentionLayout, attention, resolve_backend
from zwsi.model.config import FINAL_NORM_EPS, FREQUENCY_EMBEDDING_SIZE, TIMESTEP_MLP_HIDDEN, S3DiTConfig
from zwsi.model.rope import apply_rope, rope_factors
from zwsi.model.sequence import PackedBatch, SequenceSample, pack_batch, t2i_sample, unpatchify

#################################################################################
#                       Norms and the timestep embedder                         #
#################################################################################


class RMSNorm(nn.Module):
    """RMSNorm as diffusers computes it: statistics in fp32, cast to a half weight's dtype, times the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)  # (..., 1) fp32
        x = x * torch.rsqrt(variance + self.eps)  # (..., d) fp32
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight  # (..., d)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the scaled timestep (cos half first) followed by a 2-layer SiLU MLP."""

    def __init__(
        self, out_dim: int, mid_dim: int = TIMESTEP_MLP_HIDDEN, freq_dim: int = FREQUENCY_EMBEDDING_SIZE
    ) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, mid_dim), nn.SiLU(), nn.Linear(mid_dim, out_dim))

    @staticmethod
    def timestep_embedding(s: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """(K,) scaled timesteps -> (K, dim) [cos | sin] embedding in fp32."""
        with torch.autocast(device_type=s.device.type, enabled=False):
            half = dim // 2
            freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=s.device) / half)
            args = s[:, None].float() * freqs[None]  # (K, dim/2)
            return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (K, dim)

    def forward(self, s: Tensor) -> Tensor:
        emb = self.timestep_embedding(s, self.freq_dim)  # (K, 256)
        return self.mlp(emb.to(next(self.mlp.parameters()).dtype))  # (K, A)


#################################################################################
#                              Transformer block                                #
#################################################################################


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (N, D)


class Attention(nn.Module):
    """Self-attention with QK RMSNorm and 3D RoPE over a packed sequence (diffusers' names: to_q ... to_out.0)."""

    def __init__(self, dim: int, n_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])
        self.norm_q = RMSNorm(dim // n_heads, eps=1e-5) if qk_norm else None  # eps fixed at 1e-5 in the reference
        self.norm_k = RMSNorm(dim // n_heads, eps=1e-5) if qk_norm else None

    def forward(self, x: Tensor, rope: Tensor, layout: AttentionLayout, backend: str | None) -> Tensor:
        q = self.to_q(x).unflatten(-1, (self.n_heads, -1))  # (N, H, Dh)
        k = self.to_k(x).unflatten(-1, (self.n_heads, -1))  # (N, H, Dh)
        v = self.to_v(x).unflatten(-1, (self.n_heads, -1))  # (N, H, Dh)
        if self.norm_q is not None and self.norm_k is not None:
            q, k = self.norm_q(q), self.norm_k(k)  # (N, H, Dh)
        q, k = apply_rope(q, rope), apply_rope(k, rope)  # (N, H, Dh), rotated in fp32
        out = attention(q, k, v, layout, backend, resolved=backend is not None)  # (N, H, Dh)
        return self.to_out[0](out.flatten(1).to(q.dtype))  # (N, D)


class S3DiTBlock(nn.Module):
    """A sandwich-norm block; modulated blocks scale the norm inputs by (1 + scale) and gate the branches by tanh."""

    def __init__(self, cfg: S3DiTConfig, modulation: bool) -> None:
        super().__init__()
        self.attention = Attention(cfg.dim, cfg.n_heads, cfg.qk_norm)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden_dim)
        self.attention_norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention_norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.modulation = modulation
        if modulation:  # applied to c directly, no SiLU
            self.adaLN_modulation = nn.Sequential(nn.Linear(cfg.adaln_dim, 4 * cfg.dim))

    def forward(
        self,
        x: Tensor,
        rope: Tensor,
        layout: AttentionLayout,
        c: Tensor | None = None,
        cond_index: Tensor | None = None,
        backend: str | None = None,
    ) -> Tensor:
        """x (N, D); rope (N, Dh/2, 2) factors; c (K, A) conditions; cond_index (N,) picks one per token (None: K=1)."""
        if not self.modulation:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), rope, layout, backend))  # (N, D)
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))  # (N, D)
        scale_msa, gate_msa, scale_mlp, gate_mlp = self._modulation(c, cond_index)  # (N or 1, D) each
        attn = self.attention(self.attention_norm1(x) * scale_msa, rope, layout, backend)  # (N, D)
        x = x + gate_msa * self.attention_norm2(attn)  # (N, D)
        return x + gate_mlp * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * scale_mlp))  # (N, D)

    def _modulation(self, c: Tensor | None, cond_index: Tensor | None) -> tuple[Tensor, ...]:
        if c is None:
            raise ValueError("a modulated block needs the timestep conditioning c")
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=-1)  # (K, D) each
        mod = (1.0 + scale_msa, gate_msa.tanh(), 1.0 + scale_mlp, gate_mlp.tanh())  # (K, D) each
        return mod if cond_index is None else tuple(m[cond_index] for m in mod)  # (K=1 or N, D) each


class FinalLayer(nn.Module):
    """LayerNorm without affine, scaled by 1 + Linear(SiLU(c)), then a Linear to the patch features."""

    def __init__(self, cfg: S3DiTConfig, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=FINAL_NORM_EPS)
        self.linear = nn.Linear(cfg.dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, cfg.dim))

    def forward(self, x: Tensor, c: Tensor, cond_index: Tensor | None = None) -> Tensor:
        scale = 1.0 + self.adaLN_modulation(c)  # (K, D)
        if cond_index is not None:
            scale = scale[cond_index]  # (N, D)
        return self.linear(self.norm_final(x) * scale)  # (N, P)


#################################################################################
#                                 The S3-DiT                                    #
#################################################################################


class S3DiT(nn.Module):
    """Z-Image's single-stream DiT with Z-WSI's packed sequence forward.

    Args:
        config: the hyper-parameters (hub config.json fields).
        attention_backend: see `zwsi.model.attention`; None -> env ZWSI_ATTENTION -> device default.
    """

    def __init__(self, config: S3DiTConfig, attention_backend: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.attention_backend = attention_backend
        self.gradient_checkpointing = False
        cfg = config
        self.all_x_embedder = nn.ModuleDict()
        self.all_final_layer = nn.ModuleDict()
        for p, pf in zip(cfg.all_patch_size, cfg.all_f_patch_size):
            patch_dim = pf * p * p * cfg.in_channels
            self.all_x_embedder[f"{p}-{pf}"] = nn.Linear(patch_dim, cfg.dim)
            self.all_final_layer[f"{p}-{pf}"] = FinalLayer(cfg, patch_dim)
        self.noise_refiner = nn.ModuleList([S3DiTBlock(cfg, modulation=True) for _ in range(cfg.n_refiner_layers)])
        self.context_refiner = nn.ModuleList([S3DiTBlock(cfg, modulation=False) for _ in range(cfg.n_refiner_layers)])
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim)
        self.cap_embedder = nn.Sequential(RMSNorm(cfg.cap_feat_dim, cfg.norm_eps), nn.Linear(cfg.cap_feat_dim, cfg.dim))
        self.x_pad_token = nn.Parameter(torch.zeros(1, cfg.dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, cfg.dim))
        self.layers = nn.ModuleList([S3DiTBlock(cfg, modulation=True) for _ in range(cfg.n_layers)])

    def initialize_weights(self) -> None:
        """From-scratch initialisation as DiT's: xavier-uniform linears with zero bias, the timestep MLP normal(0.02),
        adaLN-Zero (every modulation projection and the final layer's start at zero, so each block starts as the
        identity on the residual stream and the first prediction is 0). Only for a model built without weights: a
        loaded checkpoint (Z-Image, a fine-tune) is never re-initialised."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        zero: list[typing.Any] = [block.adaLN_modulation[0] for block in [*self.noise_refiner, *self.layers]]
        for final in self.all_final_layer.values():
            zero += [final.adaLN_modulation[1], final.linear]  # type: ignore[index]
        for module in self.t_embedder.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        for module in zero:
            assert isinstance(module, nn.Linear)
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.gradient_checkpointing = enabled

    # ------------------------------------------------------------------ public forwards
    def forward_t2i(self, x: list[Tensor], t: Tensor, cap_feats: list[Tensor]) -> list[Tensor]:
        """Z-Image text-to-image: diffusers' `ZImageTransformer2DModel(x, t, cap_feats, return_dict=False)[0]`.

        Args:
            x: B latents (C, F, H, W), sizes may differ.
            t: (B,) in [0, 1], 0 = noise.
            cap_feats: B caption features (L_i, cap_feat_dim), lengths may differ.

        Returns:
            B predictions (C, F, H, W) of x0 - eps.
        """
        if not (len(x) == len(cap_feats) == t.numel()):
            raise ValueError(f"need as many t ({t.numel()}) and captions ({len(cap_feats)}) as latents ({len(x)})")
        p, pf = self.config.patch_size, self.config.f_patch_size
        return self([t2i_sample(xi, ti, ci, p, pf) for xi, ti, ci in zip(x, t, cap_feats)])

    def forward(self, batch: list[SequenceSample]) -> list[Tensor]:
        """The general packed sequence forward.

        Returns:
            for each sample, the prediction (x0 - eps) for its target, shaped like the target latents (C, F, H, W).
        """
        x, c, packed = self.forward_hidden(batch)  # (N, D), (K, A)
        return self._read_out(x, c, packed)

    def forward_hidden(self, batch: list[SequenceSample]) -> tuple[Tensor, Tensor, PackedBatch]:
        """Everything up to the final layer: the unified hidden states (N, D), the conditions c (K, A), the packing."""
        packed = pack_batch(batch, self.config)
        device, dtype = packed.patches.device, packed.patches.dtype
        backend = resolve_backend(self.attention_backend, device)
        multi = packed.cond_t.numel() > 1
        c = self.t_embedder(packed.cond_t * self.config.t_scale).to(dtype)  # (K, A)
        positions = torch.cat([packed.img_positions, packed.rep_positions])  # (N_img+N_rep, 3)
        rope = rope_factors(positions, self.config.axes_dims, self.config.rope_theta)  # (N_img+N_rep, Dh/2, 2)
        n_img = packed.patches.shape[0]

        img = self._embed_images(packed)  # (N_img, D)
        img_cond = packed.img_cond if multi else None
        img = self._run(self.noise_refiner, img, rope[:n_img], packed.img_layout, c, img_cond, backend)

        rep = self._embed_report(packed)  # (N_rep, D)
        if packed.rep_layout is not None:
            rep = self._run(self.context_refiner, rep, rope[n_img:], packed.rep_layout, None, None, backend)

        x = torch.cat([img, rep])  # (N, D)
        u_rope = rope  # (N, Dh/2, 2)
        if not packed.unified_is_cat:  # per sample [target | contexts | report]
            x, u_rope = x[packed.unified_index], rope[packed.unified_index]  # (N, D), (N, Dh/2, 2)
        u_cond = packed.unified_cond if multi else None
        x = self._run(self.layers, x, u_rope, packed.unified_layout, c, u_cond, backend)  # (N, D)
        return x, c, packed

    # ------------------------------------------------------------------ stages
    def _embed_images(self, packed: PackedBatch) -> Tensor:
        x = self.all_x_embedder[self.config.patch_key](packed.patches)  # (N_img, D)
        return torch.where(packed.img_pad[:, None], self.x_pad_token, x)  # (N_img, D)

    def _embed_report(self, packed: PackedBatch) -> Tensor:
        y = self.cap_embedder(packed.report_feats)  # (N_rep, D)
        return torch.where(packed.rep_pad[:, None], self.cap_pad_token, y)  # (N_rep, D)

    def _run(
        self,
        blocks: nn.ModuleList,
        x: Tensor,
        rope: Tensor,
        layout: AttentionLayout,
        c: Tensor | None,
        cond_index: Tensor | None,
        backend: str,
    ) -> Tensor:
        for block in blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, layout, c, cond_index, backend, use_reentrant=False)
            else:
                x = block(x, rope, layout, c, cond_index, backend)  # (N, D)
        return x

    def _read_out(self, x: Tensor, c: Tensor, packed: PackedBatch) -> list[Tensor]:
        """Final layer on the real target tokens only, then unpatchify each sample's target."""
        rows = x[packed.target_index]  # (N_tgt, D)
        cond = packed.target_cond if c.shape[0] > 1 else None
        out = self.all_final_layer[self.config.patch_key](rows, c, cond)  # (N_tgt, P)
        p, pf = self.config.patch_size, self.config.f_patch_size
        counts = [(f // pf) * (h // p) * (w // p) for _, f, h, w in packed.target_shapes]
        return [unpatchify(o, shape, p, pf) for o, shape in zip(out.split(counts), packed.target_shapes)]
