"""
FLOP counts of one denoiser pass, a sampling run and a training step, the devices' peak throughput, and
MFU (model FLOPs utilisation: achieved FLOP/s over the peak). bench.py times against these counts; the
training scripts print MFU in their log line with the same formulas. Plain arithmetic, no torch.
"""

# bf16 dense tensor-core peaks (NVIDIA datasheets; their 'with sparsity' figures are twice these). The first
# name found in torch.cuda.get_device_name() wins; other devices: --peak_tflops, else MFU prints '-'.
PEAK_FLOPS = [('H100 PCIe', 756e12), ('H100 NVL', 835e12), ('H100', 989e12), ('H200', 989e12), ('A100', 312e12)]


def peak_flops(device_name):
    """The bf16 dense peak (FLOP/s) of a device named like torch.cuda.get_device_name(), 0.0 if unknown."""
    return next((p for k, p in PEAK_FLOPS if k in device_name), 0.0)


def mfu_fields(flops_per_step, seconds_per_step, peak_per_device, world_size=1):
    """' | X TFLOP/s | mfu Y%' for a log line: achieved FLOP/s over every process, and its share of their peak
    ('mfu -' where the peak is unknown: CPUs, unlisted GPUs; 'TFLOP/s -' where the count is unknown)."""
    if not flops_per_step or seconds_per_step <= 0:
        return ' | TFLOP/s - | mfu -'
    achieved = flops_per_step / seconds_per_step
    mfu = f"{100 * achieved / (peak_per_device * world_size):.1f}%" if peak_per_device else '-'
    return f" | {achieved / 1e12:.3g} TFLOP/s | mfu {mfu}"


# -----------------------------------------------------------------------------
# FLOPs = 2 x multiply-adds (MACs) of every nn.Linear (x (T, i) @ W (i, o) is T*i*o MACs) and of attention's
# QK^T and AV (B*H*Nq*Nk*head_dim MACs each, = Nq*Nk*D per example as H*head_dim = D). Not counted:
# LayerNorm, GELU/SiLU, softmax, residual adds, sinusoidal time features, the sampler's own arithmetic
# (elementwise: < 1% of the FLOPs). torch.utils.flop_counter counts the same; tests/test_bench.py checks it.


def denoiser_flops(args, batch, n_latents):
    """
    Forward FLOPs of one unconditional Denoiser call (args: latent_dim c, dim D, n_layers n). Per position:
    each block q D*D + kv D*2D + out D*D + MLP D*4D + 4D*D = 12 D^2 and attention 2 N D; before each block
    sc_proj c*D; skip_proj 2D*D in the second half (n // 2); in_proj c*D and out_proj D*c once. Per example
    (counted, though ~1/N of the rest): the time MLP 2 D^2 and time_proj D*D before each block.
    """
    assert not args.get('cond_layers'), "counts the unconditional denoiser (the paper's speed setting)"
    c, D, n, N = args['latent_dim'], args['dim'], args['n_layers'], n_latents
    per_position = n * (12 * D * D + 2 * N * D + c * D) + (n // 2) * 2 * D * D + 2 * c * D
    return 2 * batch * (N * per_position + (2 + n) * D * D)


def sampling_flops(args, batch, n_latents, steps, sampler):
    passes = 2 * steps - 1 if sampler == 'heun' else steps  # heun's first step is a plain Euler step
    return passes * denoiser_flops(args, batch, n_latents)


def resampler_flops(n_queries, n_inputs, dim, n_layers, batch):
    """PerceiverResampler forward: per block q, out, MLP (10 D^2) per query, kv (2 D^2) per key (Nq + Lh
    of them), QK^T + AV (2 (Nq + Lh) D) per query."""
    keys = n_queries + n_inputs
    return 2 * batch * n_layers * (10 * n_queries * dim ** 2 + 2 * keys * dim ** 2 + 2 * n_queries * keys * dim)


def ae_train_flops(args, batch):
    """Compressor (N over L) + decompressor (L over N) + token head, x3 for forward + backward (the backward
    computes gradients of activations and of weights: 2x forward). The frozen encoder is not counted. The
    token head is the vocabulary rounded up to a multiple of 64 wide (autoencoder.padded_vocab; BERT: 30528),
    and that is the matmul that runs."""
    d, L, N, layers = args['dim'], args['max_len'], args['n_latents'], args['n_layers']
    head = -(-args['vocab_size'] // 64) * 64
    return 3 * (resampler_flops(N, L, d, layers, batch) + resampler_flops(L, N, d, layers, batch)
                + 2 * batch * L * d * head)


def diffusion_train_flops(args, batch, self_cond_prob):
    """One training step of the unconditional denoiser on `batch` examples: forward + backward (2x) = 3x, plus
    the self-conditioning pass without grad (1x) when self_cond_prob > 0: diffusion_loss runs it on the whole
    batch. None for a conditional denoiser (its source encoder is not counted here)."""
    if args.get('cond_layers'):
        return None
    return (4 if self_cond_prob > 0 else 3) * denoiser_flops(args, batch, args['n_latents'])


# -----------------------------------------------------------------------------
# the block model (model.BlockDenoiser, long text): the same layers over more positions. Differences from the
# single-window count: the time embedding is per position (each block has its own t), and a masked attention
# computes every query-key product (SDPA with a boolean mask skips none), so a training window of K blocks
# costs a Denoiser pass over 2KN positions plus the per-position time path.


def _per_position(args, keys):
    c, D, n = args['latent_dim'], args['dim'], args['n_layers']
    return n * (12 * D * D + 2 * keys * D + c * D) + (n // 2) * 2 * D * D + 2 * c * D


def block_forward_flops(args, batch, n_latents, n_blocks):
    """BlockDenoiser.forward on windows of K blocks of N latents: 2KN positions, each attending to all 2KN keys,
    each with its own time embedding (time MLP 2 D^2 and time_proj D^2 before each of the n blocks)."""
    P, D, n = 2 * n_blocks * n_latents, args['dim'], args['n_layers']
    return 2 * batch * P * (_per_position(args, P) + (2 + n) * D * D)


def block_train_flops(args, batch, n_latents, n_blocks, self_cond_prob):
    """One training step of the block model (diffusion.block_loss): forward + backward (3x) plus the
    self-conditioning pass without grad (1x) when self_cond_prob > 0, over the whole batch."""
    return (4 if self_cond_prob > 0 else 3) * block_forward_flops(args, batch, n_latents, n_blocks)


def block_step_flops(args, batch, n_latents, k):
    """BlockDenoiser.step at block index k: N queries against the N new keys and the k N cached ones, time
    MLP once per example, time_proj per position. A sampled block is `steps` of these (twice with guidance
    w != 1, the null pass without the cached keys), plus one to commit it."""
    N, D, n = n_latents, args['dim'], args['n_layers']
    return 2 * batch * (N * (_per_position(args, (k + 1) * N) + n * D * D) + 2 * D * D)
