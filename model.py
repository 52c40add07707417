"""
The networks of COSMOS, in plain PyTorch and nothing else (no I/O, no Hugging Face):

    Attention, MLP                the two sublayers everything is made of (SDPA attention, GELU MLP)
    PerceiverResampler            the compressor (N queries over the L encoder states) and, mirrored,
                                  the decompressor (L queries over the N latents)      -- paper Sec. 4.1
    Denoiser                      the latent diffusion transformer over the N latent positions, with
                                  time embedding, self-conditioning input, long skips and an optional
                                  source encoder + cross-attention                      -- paper Sec. 6, App. C
    block_mask, BlockDenoiser     the same denoiser over the clean and noisy blocks of a long document
                                  under a block-causal mask, with a KV cache for sampling -- Cola DLM, BD3-LM

Shapes: B batch, L tokens, N latents, D width. Masks are boolean, True = a real position to attend to.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Named sizes. 'base' is the paper's denoiser (12 layers x 768 x 12 heads): 108.7M parameters for 768-d
# latents, 222.9M with a 12-layer source encoder, its null source and cross-attention in every block (counted with
# latent_dim=768, N=16, Nc=128). The resampler's heads are 64 wide (docs/method.md).
DENOISER_SIZES = {
    'tiny': dict(n_layers=2, dim=64, n_heads=2),
    'mini': dict(n_layers=4, dim=128, n_heads=4),
    'small': dict(n_layers=6, dim=384, n_heads=6),
    'base': dict(n_layers=12, dim=768, n_heads=12),
    'base24': dict(n_layers=24, dim=768, n_heads=12),   # Table 5's deeper denoisers (the paper: 0.25B and 0.5B;
    'base48': dict(n_layers=48, dim=768, n_heads=12),   # these: 215.1M and 427.7M at latent_dim=768, N=128)
}


class Attention(nn.Module):
    """Multi-head attention. Queries come from x, keys and values from ctx (= x for self-attention)."""

    def __init__(self, dim, n_heads, ctx_dim=None):
        super().__init__()
        assert dim % n_heads == 0, f"dim {dim} must be divisible by n_heads {n_heads}"
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(ctx_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, ctx=None, mask=None, cache=None, store=False):
        # x: (B, Lq, D), ctx: (B, Lk, Dc), mask: (B, Lk) bool (a key padding mask), or a full mask
        # (B or 1, 1, Lq, Lk) (the block-causal one), or None.
        # cache (self-attention only): a dict whose 'k', 'v' (B, H, S, D/H), if there, are keys and values of
        # earlier positions, put before this call's; with store=True the dict keeps the concatenation
        # (the block sampler's KV cache, BlockDenoiser.step).
        ctx = x if ctx is None else ctx
        B, Lq, D = x.shape
        q = self.q(x).view(B, Lq, self.n_heads, -1).transpose(1, 2)           # (B, H, Lq, D/H)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, Lk, D/H)
        if cache is not None:
            if 'k' in cache:
                k, v = torch.cat([cache['k'], k], dim=2), torch.cat([cache['v'], v], dim=2)  # (B, H, S + Lk, D/H)
            if store:
                cache['k'], cache['v'] = k, v
        attn_mask = mask if mask is None or mask.dim() == 4 else mask[:, None, None, :]  # (B, 1, 1, Lk)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)      # fused kernel (flash when unmasked)
        return self.out(y.transpose(1, 2).reshape(B, Lq, D))


class MLP(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.fc = nn.Linear(dim, mult * dim)
        self.proj = nn.Linear(mult * dim, dim)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


# -----------------------------------------------------------------------------
# Perceiver Resampler: compressor and decompressor


class ResamplerBlock(nn.Module):
    """
    One Perceiver Resampler block (paper Sec. 4.1): the latents u are the queries; keys and values are
    the concatenation [LN(u); LN(h)], so every latent reads the text and the other latents. Two separate
    LayerNorms: the predecessor code normalised h with the latents' norm weights by mistake.
    """

    def __init__(self, dim, n_heads):
        super().__init__()
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_inputs = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, u, h, h_mask=None):
        # u: (B, Nq, D) latents, h: (B, Lh, D) inputs, h_mask: (B, Lh) bool or None (no padding)
        lu = self.norm_latents(u)
        kv = torch.cat([lu, self.norm_inputs(h)], dim=1)                      # (B, Nq + Lh, D)
        mask = None
        if h_mask is not None:                                                # latents are never padding
            mask = torch.cat([h_mask.new_ones(u.shape[:2]), h_mask], dim=1)   # (B, Nq + Lh)
        u = u + self.attn(lu, kv, mask)
        u = u + self.mlp(self.norm_mlp(u))
        return u


class PerceiverResampler(nn.Module):
    """
    n_queries learned vectors (init N(0, 0.02)) refined by n_layers ResamplerBlocks over the inputs,
    then a final LayerNorm (defined and used: the predecessor defined one and forgot it).
    As compressor: n_queries = N latents over the L encoder states h (padding masked), output z (B, N, D).
    As decompressor: n_queries = L output positions over the N latents, output h_hat (B, L, D).
    """

    def __init__(self, n_queries, dim, n_layers, n_heads):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, dim) * 0.02)
        self.blocks = nn.ModuleList([ResamplerBlock(dim, n_heads) for _ in range(n_layers)])
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, h, h_mask=None):
        u = self.queries.expand(h.shape[0], -1, -1)                           # (B, Nq, D)
        for block in self.blocks:
            u = block(u, h, h_mask)
        return self.norm_out(u)


# -----------------------------------------------------------------------------
# Denoiser


def timestep_embedding(t, dim, scale=1000.0):
    """
    Sinusoidal embedding of t in [0, 1]. t is scaled by 1000 first: fed raw (the predecessor's mistake)
    almost no frequency varies over [0, 1] and the network can barely tell time steps apart.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]                           # (B, D/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)              # (B, D)


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, optional cross-attention to the source, MLP."""

    def __init__(self, dim, n_heads, cross_attn=False):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.norm_cross = nn.LayerNorm(dim) if cross_attn else None
        self.cross = Attention(dim, n_heads) if cross_attn else None
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x, cond=None, mask=None, cache=None, store=False):
        x = x + self.attn(self.norm_attn(x), mask=mask, cache=cache, store=store)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), cond)
        return x + self.mlp(self.norm_mlp(x))


class Denoiser(nn.Module):
    """
    x0-predictor z_theta(z_t, t, x0_sc [, source]) over the N latent positions (TEncDM's design, paper
    App. C): a transformer with a learned position embedding where, before every block, a projection of
    the time embedding and a projection of the self-conditioning estimate are added to every position,
    and block i feeds block n_layers-1-i through a U-Net-style long skip.

    Our choice: pre-LN blocks where TEncDM used post-LN BERT layers. Pre-LN trains stably in bf16 without
    depending on the warm-up; conditioning, skips and the parameter count (~108M at 'base') are TEncDM's.

    Conditional generation (paper Sec. 7): with cond_layers > 0 the model owns a source encoder (a
    transformer over the normalised source latent) and every block cross-attends to its output. For
    classifier-free guidance a dropped source is replaced by a learned null source (`null_cond`), chosen
    per example by the boolean `cond_drop`. A conditional model refuses to run without a source instead
    of silently ignoring it (a predecessor bug), and an unconditional one refuses a source it cannot read.
    """

    def __init__(self, latent_dim, n_latents, dim, n_layers, n_heads, cond_layers=0, n_cond_latents=0):
        super().__init__()
        self.dim, self.n_layers = dim, n_layers
        self.in_proj = nn.Linear(latent_dim, dim)
        self.pos_emb = nn.Parameter(torch.randn(n_latents, dim) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_proj = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_layers)])
        self.sc_proj = nn.ModuleList([nn.Linear(latent_dim, dim) for _ in range(n_layers)])
        self.skip_proj = nn.ModuleList([nn.Linear(2 * dim, dim) for _ in range(n_layers // 2)])
        self.blocks = nn.ModuleList([Block(dim, n_heads, cross_attn=cond_layers > 0) for _ in range(n_layers)])
        self.norm_out = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, latent_dim)
        self.conditional = cond_layers > 0
        if self.conditional:
            self.cond_in = nn.Linear(latent_dim, dim)
            self.cond_pos = nn.Parameter(torch.randn(n_cond_latents, dim) * 0.02)
            self.cond_blocks = nn.ModuleList([Block(dim, n_heads) for _ in range(cond_layers)])
            self.cond_norm = nn.LayerNorm(dim)
            self.null_cond = nn.Parameter(torch.randn(n_cond_latents, latent_dim) * 0.02)
        self.apply(self._init_weights)
        # Zero-init of the output projection: the untrained model predicts x0 = 0, the mean of the
        # normalised latents, the best constant guess, so early training does not fight a random output.
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def encode_source(self, cond, cond_drop=None):
        """The trainable source encoder: (B, Nc, latent_dim) normalised source latent -> (B, Nc, D)."""
        if cond_drop is not None:                                             # classifier-free guidance
            cond = torch.where(cond_drop[:, None, None], self.null_cond.to(cond.dtype), cond)
        c = self.cond_in(cond) + self.cond_pos
        for block in self.cond_blocks:
            c = block(c)                                                      # source latents are never padding
        return self.cond_norm(c)

    def forward(self, z_t, t, x0_sc, cond=None, cond_drop=None):
        # z_t, x0_sc: (B, N, latent_dim); t: (B,) in [0, 1]; cond: (B, Nc, latent_dim); cond_drop: (B,) bool
        if self.conditional and cond is None:
            raise ValueError("this denoiser is conditional: pass the source latent `cond`")
        if not self.conditional and cond is not None:
            raise ValueError("this denoiser is unconditional: it has no cross-attention for `cond`")
        x = self.in_proj(z_t) + self.pos_emb                                  # (B, N, D)
        temb = self.time_mlp(timestep_embedding(t, self.dim).to(x.dtype))     # (B, D)
        c = self.encode_source(cond, cond_drop) if self.conditional else None  # (B, Nc, D)
        return self.trunk(x, temb, x0_sc, c)                                  # (B, N, latent_dim) x0 estimate

    def trunk(self, x, temb, x0_sc, c=None, mask=None, caches=None, store=False):
        """
        The transformer after the input embedding: x (B, P, D) embedded positions; temb (B, D) one time
        embedding per example, or (B, P, D) one per position (the block model); x0_sc (B, P, latent_dim);
        mask, caches (one dict per block) and store go to the self-attention (BlockDenoiser).
        """
        skips = []
        for i, block in enumerate(self.blocks):
            j = i - (self.n_layers - len(self.skip_proj))                     # index into the second half
            if j >= 0:
                x = self.skip_proj[j](torch.cat([x, skips.pop()], dim=-1))    # long skip from block n-1-i
            tproj = self.time_proj[i](temb)
            x = x + (tproj[:, None, :] if tproj.dim() == 2 else tproj) + self.sc_proj[i](x0_sc)
            x = block(x, c, mask, None if caches is None else caches[i], store)
            if i < len(self.skip_proj):
                skips.append(x)
        return self.out_proj(self.norm_out(x))


# -----------------------------------------------------------------------------
# Block-causal denoiser for long text (Cola DLM, BD3-LM): a document is K blocks of N latents, one block
# per autoencoder chunk. Training runs the Denoiser above over 2*K*N positions, [clean stream | noisy
# stream], under the block-causal mask; sampling runs one block of N queries at a time against a KV cache
# of the committed (clean) blocks. Same transformer, same weights: only the block embedding is new.


def block_mask(K, N, drop=None):
    """
    The block-causal attention mask (True = may attend) over [clean blocks 0..K-1 | noisy blocks 0..K-1],
    each block N positions, shape (B or 1, 1, 2KN, 2KN):
        clean q -> clean k : block(k) <= block(q)      (builds the prefix the noisy blocks read)
        noisy q -> noisy k : block(k) == block(q)      (a block is denoised alone, blind to other noisy blocks)
        noisy q -> clean k : block(k) <  block(q)      (the clean prefix), unless drop[b, block(q)]
        clean q -> noisy k : never
    drop (B, K) bool removes a noisy block's view of the prefix: the null model of classifier-free guidance
    is this block with nothing before it, at its own index (no null token). No row is ever fully masked:
    every position sees its own block.
    """
    P = K * N
    blk = torch.arange(K).repeat_interleave(N).repeat(2)                     # (2P,) block of each position
    noisy = torch.arange(2 * P) >= P                                          # (2P,) stream of each position
    bq, bk, nq, nk = blk[:, None], blk[None, :], noisy[:, None], noisy[None, :]
    own = (~nq & ~nk & (bk <= bq)) | (nq & nk & (bk == bq))                  # (2P, 2P)
    prefix = nq & ~nk & (bk < bq)                                             # (2P, 2P)
    if drop is None:
        return (own | prefix)[None, None]
    keep = ~drop.to(torch.bool)[:, blk.to(drop.device)]                      # (B, 2P) per query's block
    return (own.to(drop.device) | (prefix.to(drop.device) & keep[:, :, None]))[:, None]  # (B, 1, 2P, 2P)


class BlockDenoiser(Denoiser):
    """
    The Denoiser over a document of K <= max_blocks blocks. Besides the Denoiser's parameters it has one
    learned block-index embedding (max_blocks, D), zero-initialised: at init the block model computes
    exactly what the single-window Denoiser computes on each block, so a trained single-window checkpoint
    on the same autoencoder initialises it (every key but blk_emb). Unconditional only (no source).

    forward: the training layout, x0 estimates of all K noisy blocks in one pass.
    step:    one block at index k, N queries, against the caches of the clean blocks before it.
    """

    def __init__(self, latent_dim, n_latents, dim, n_layers, n_heads, max_blocks):
        super().__init__(latent_dim, n_latents, dim, n_layers, n_heads)
        self.max_blocks = max_blocks
        self.blk_emb = nn.Parameter(torch.zeros(max_blocks, dim))            # zero: see the docstring

    def forward(self, z0, z_t, t, x0_sc, drop=None):
        # z0, z_t, x0_sc: (B, K, N, c) clean latents, noisy latents, self-conditioning; t: (B, K); drop: (B, K)
        B, K, N, c = z_t.shape
        if K > self.max_blocks:
            raise ValueError(f"{K} blocks, but this model has block embeddings for {self.max_blocks}")
        blk = torch.arange(K, device=z_t.device).repeat_interleave(N).repeat(2)  # (2P,)
        x = torch.cat([z0, z_t], dim=1).view(B, 2 * K * N, c)                # clean stream, then noisy
        x = self.in_proj(x) + self.pos_emb.repeat(2 * K, 1) + self.blk_emb[blk]  # (B, 2P, D)
        tau = torch.cat([torch.zeros_like(t), t], dim=1).repeat_interleave(N, dim=1)  # (B, 2P): clean at t = 0
        temb = self.time_mlp(timestep_embedding(tau.reshape(-1), self.dim).to(x.dtype)).view(B, 2 * K * N, -1)
        sc = torch.cat([torch.zeros_like(x0_sc), x0_sc], dim=1).view(B, 2 * K * N, c)  # the clean stream reads none
        mask = block_mask(K, N, drop).to(z_t.device)
        return self.trunk(x, temb, sc, mask=mask)[:, K * N:].reshape(B, K, N, c)  # (B, K, N, c) noisy blocks' x0

    def step(self, z, t, x0_sc, k, caches=None, store=False):
        """
        One block at index k: z, x0_sc (B, N, c), t (B,). Its N positions attend to themselves and to what
        `caches` (a list of one dict per layer, or None: no prefix, the guidance null) holds, exactly the
        key set of the noisy block k in training. Committing a block is step(z0, 0, 0, k, caches,
        store=True): the clean stream's rows, whose keys and values the cache then keeps.
        """
        B, N, c = z.shape
        x = self.in_proj(z) + self.pos_emb + self.blk_emb[k]                 # (B, N, D)
        temb = self.time_mlp(timestep_embedding(t.expand(B), self.dim).to(x.dtype))  # (B, D)
        temb = temb[:, None, :].expand(B, N, -1)                              # per position, as in forward
        return self.trunk(x, temb, x0_sc, caches=caches, store=store)        # (B, N, c)
