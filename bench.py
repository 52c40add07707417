"""
Time COSMOS on whatever device there is and print one table: sampling (each sampler, each N) and one
training step of the denoiser and of the autoencoder, and the block model of long text (a training step over
windows of K blocks, one cached block of sampling): s/batch, samples/s, tokens/s, TFLOP/s, MFU, memory.

    python bench.py                                        # CUDA: the paper's sizes; no CUDA: tiny sizes
    python bench.py --tiny=True                            # tiny sizes on any device (what the test runs)
    python bench.py --n_latents=16,128 --samplers=ddim --compile_mode=max-autotune-no-cudagraphs
    python bench.py --quickstart=True                      # README's quickstart line, timed stage by stage

Sampling = diffusion.sample ('base' denoiser, batch 512) plus the decode to token ids (denormalise,
decompressor, token head, argmax) at the paper's autoencoder size; ids -> strings (the tokenizer, CPU work)
is NOT timed. Its MFU counts the denoiser's FLOPs only (the decode is timed, not counted: MFU reads a bit low).
Training = one optimizer step on a micro-batch as train_diff.py / train_ae.py run it (forward, backward,
clip, AdamW; EMA for the denoiser). Random states stand in for the frozen encoder, neither run nor counted.
Block model (model.BlockDenoiser, --n_blocks=K; 0 skips it): 'train-blocks' is one optimizer step of
diffusion.block_loss on block_batch_size windows of K blocks (batch = windows, tokens = windows x K x L);
'sample-block' samples block K-1 of block_batch_size documents against a KV cache already holding K-1
committed blocks: `steps` cached BlockDenoiser.step calls (w = 1, DDIM), the cost of each
block of a long document (the prefill and the commit, one step each per block, are not timed).

Results (measured, never estimated; README "Speed" has them with the commands):
  2026-11-26, one H200, torch 2.11.0+cu130, bf16, eager (--compile=False --n_latents=16,32,128 --samplers=ddim):
  sample ddim 200 steps, batch 512: 2.02 s at N=16, 2.72 s at N=32, 9.18 s at N=128 (the paper's A100: 5.8 s
  at N=16, 35.1 s at N=128). The compiled table is still to be measured.
  The quickstart (--quickstart=True) on the 2-core development machine: README "Quickstart".
"""
import copy
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import common
from autoencoder import Autoencoder
from diffusion import SAMPLERS, block_loss, diffusion_loss, ema_update, sample
from flops import (ae_train_flops, block_step_flops, block_train_flops, diffusion_train_flops, peak_flops,
                   sampling_flops)
from model import DENOISER_SIZES, BlockDenoiser, Denoiser

config = dict(
    device='auto',               # 'auto' (CUDA when there is one), 'cpu', 'cuda', 'cuda:1'
    tiny=False,                  # tiny sizes (TINY below); automatic without CUDA, so CPU runs take seconds
    # sampling (paper Sec. 6.1: 512 samples, one GPU, bf16)
    batch_size=512,              # samples per sampling batch
    steps=200,                   # sampler steps; 'heun' does 2 * steps - 1 denoiser passes
    n_latents='16,32,128',       # the N values to time, comma-separated
    samplers=','.join(SAMPLERS), # comma-separated subset of diffusion.SAMPLERS
    size='base',                 # denoiser size in model.DENOISER_SIZES ('base' = 12 layers x 768 x 12 heads)
    # autoencoder (paper Sec. 4.1 on bert-base); ae_dim is also the denoiser's latent_dim
    ae_dim=768,                  # the autoencoder's width d (bert-base: 768)
    ae_layers=12,                # blocks in the compressor and in the decompressor
    ae_head_dim=64,              # attention heads of the compressor and decompressor are this wide
    max_len=128,                 # L, tokens decoded per sample
    vocab_size=30522,            # BERT's vocabulary: the token head is d x 30528 (padded to a multiple of 64)
    # training: the micro-batches of train_diff.py and train_ae.py
    train_batch_size=256,        # the denoiser's training micro-batch
    ae_batch_size=64,            # the autoencoder's training micro-batch
    # the block model of long text (config/long_wiki_n16.py: K = 8, 32 windows per GPU)
    n_blocks=8,                  # K, blocks per training window and the sampled block's index + 1; 0 = skip
    block_batch_size=32,         # windows per training step, documents per sampled block
    # system
    dtype='bfloat16',            # autocast dtype on CUDA; CPU runs stay fp32
    compile=True,                # torch.compile on CUDA (CPU stays eager: inductor there needs a C compiler)
    compile_mode='default',      # 'default', 'reduce-overhead' (CUDA graphs), 'max-autotune-no-cudagraphs'
    warmup=2,                    # untimed calls first: compilation and autotuning happen there
    repeats=3,                   # timed calls; the median is reported
    peak_tflops=0.0,             # the device's bf16 dense peak in TFLOP/s; 0 = look it up in flops.PEAK_FLOPS
    seed=1337,                   # seeds the random weights and inputs
    # the quickstart as a benchmark figure: README's line (train_ae, train_diff, sample.py) timed stage by stage
    quickstart=False,            # time the quickstart instead of the table above; exit 1 if over the budget
    quickstart_configs='config/tiny_ae.py,config/tiny_diff.py',  # its autoencoder and diffusion configs
    quickstart_budget=600.0,     # seconds the whole line may take (the README's promise: 10 minutes)
    quickstart_dir='',           # where its models go ('' = a temporary folder, removed after; never out/)
)

# Tiny sizes replace the defaults (flags still win) under --tiny=True or without CUDA.
TINY = dict(batch_size=4, steps=3, n_latents='4', size='tiny', ae_dim=32, ae_layers=1, ae_head_dim=16,
            max_len=16, vocab_size=1000, train_batch_size=4, ae_batch_size=4, n_blocks=3, block_batch_size=2,
            warmup=1, repeats=2)


def get_config(argv):
    cfg = common.configure(config, argv)
    cuda = cfg['device'].startswith('cuda') or (cfg['device'] == 'auto' and torch.cuda.is_available())
    return common.configure({**config, **TINY}, argv) if cfg['tiny'] or not cuda else cfg


# -----------------------------------------------------------------------------


def timeit(fn, warmup, repeats, device_type):
    """Median seconds of fn() over `repeats` calls after `warmup` untimed ones (compilation happens there)."""
    for _ in range(warmup):
        fn()
    sync, times = getattr(torch, device_type).synchronize, []
    for _ in range(repeats):
        if device_type == 'cuda':  # events on the stream: no host sync inside the timed region
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def quickstart(cfg):
    """
    Run README's quickstart line (less the pip install) into fresh folders, each stage a subprocess as a user
    runs it, and print the seconds of each stage and of the whole against the budget. The figure depends on
    the machine and on what else runs on it: measure on an idle one.
    """
    root = os.path.dirname(os.path.abspath(__file__))
    ae_cfg, diff_cfg = (os.path.abspath(c) for c in cfg['quickstart_configs'].split(','))
    for c in (ae_cfg, diff_cfg):
        if not os.path.isfile(c):
            common.die(f"quickstart config '{c}' not found")
    work = os.path.abspath(cfg['quickstart_dir']) if cfg['quickstart_dir'] else tempfile.mkdtemp(prefix='quickstart_')
    if cfg['quickstart_dir'] and os.path.exists(work):
        common.die(f"quickstart_dir '{work}' already exists: pass a new folder (nothing is ever overwritten)")
    ae_ckpt, diff_ckpt = os.path.join(work, 'ae', 'ckpt.pt'), os.path.join(work, 'diff', 'ckpt.pt')
    stages = [('train_ae', ['train_ae.py', ae_cfg, f"--out_dir={os.path.join(work, 'ae')}"]),
              ('train_diff', ['train_diff.py', diff_cfg, f'--ae_ckpt={ae_ckpt}',
                              f"--out_dir={os.path.join(work, 'diff')}"]),
              ('sample', ['sample.py', f'--ckpt={diff_ckpt}'])]
    rows = []
    try:
        for name, argv in stages:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True)
            rows.append((name, time.perf_counter() - t0))
            if proc.returncode:
                last = (proc.stderr.strip() or proc.stdout.strip() or '(no output)').splitlines()[-1]
                common.die(f"quickstart stage {name} failed (exit {proc.returncode}): {last}")
    finally:
        if not cfg['quickstart_dir']:
            shutil.rmtree(work, ignore_errors=True)
    total = sum(secs for _, secs in rows)
    valid = re.search(r'(\d+) of (\d+) are valid', proc.stdout + proc.stderr)
    print(f"\nbench.py quickstart | cpu ({torch.get_num_threads()} threads) | torch {torch.__version__} | "
          f"{cfg['quickstart_configs']}")
    for name, secs in rows:
        print(f"{name:<12}{secs:>9.1f} s")
    within = total <= cfg['quickstart_budget']
    print(f"{'total':<12}{total:>9.1f} s  ({'within' if within else 'OVER'} the budget of "
          f"{cfg['quickstart_budget']:g} s)"
          + (f"; sample.py: {valid.group(1)} of {valid.group(2)} printed stories valid" if valid else ''))
    if not within:
        sys.exit(1)
    return dict(rows, total=total)


def main(cfg):
    if cfg['quickstart']:
        return quickstart(cfg)
    env = common.setup(cfg['device'], cfg['seed'])
    device, cuda = env['device'], env['device_type'] == 'cuda'
    ctx = common.autocast(env['device_type'], cfg['dtype'])
    samplers, ns = cfg['samplers'].split(','), cfg['n_latents'].split(',')
    if cfg['size'] not in DENOISER_SIZES or not set(samplers) <= set(SAMPLERS) or not all(n.isdigit() for n in ns):
        common.die(f"size must be one of {', '.join(DENOISER_SIZES)}, samplers a subset of {','.join(SAMPLERS)}, "
                   f"n_latents integers like 16,32,128; got {cfg['size']!r}, {cfg['samplers']!r}, {cfg['n_latents']!r}")
    common.at_least(cfg, 0, 'n_blocks')
    common.at_least(cfg, 1, 'block_batch_size')
    d, L, B, steps = cfg['ae_dim'], cfg['max_len'], cfg['batch_size'], cfg['steps']
    size = dict(latent_dim=d, **DENOISER_SIZES[cfg['size']])
    use_compile, mode = cfg['compile'] and cuda, None if cfg['compile_mode'] == 'default' else cfg['compile_mode']
    # dynamic=False: each shape gets its own specialised kernels (dynamo would otherwise switch to
    # dynamic-shape kernels once it sees the sampling and the training batch on one model)
    compile = (lambda m: torch.compile(m, mode=mode, dynamic=False)) if use_compile else (lambda m: m)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    peak = cfg['peak_tflops'] * 1e12 or (peak_flops(name) if cuda else 0.0)
    rows = []

    def bench(task, sampler, N, batch, fn, flops, tokens=None):
        print(f"timing {task} {sampler} N={N} batch={batch} ...", file=sys.stderr, flush=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        secs = timeit(fn, cfg['warmup'], cfg['repeats'], env['device_type'])
        rows.append(dict(task=task, sampler=sampler, N=N, batch=batch, secs=secs, flops=flops,
                         tokens=batch * L if tokens is None else tokens,
                         mem=f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f}" if cuda else '-'))

    for N in map(int, ns):
        # a fresh model per N: forget the last N's graphs, or dynamo's recompile limit (8 per function)
        # would silently send the later N back to eager
        torch.compiler.reset()
        torch.manual_seed(cfg['seed'])
        raw = Denoiser(n_latents=N, **size).to(device).eval()
        denoiser = compile(raw)  # the raw module stays for the optimizer and the EMA copy
        ae_args = dict(encoder='none', dim=d, vocab_size=cfg['vocab_size'], max_len=L, n_latents=N,
                       n_layers=cfg['ae_layers'], head_dim=cfg['ae_head_dim'], n_heads=d // cfg['ae_head_dim'],
                       kl_beta=0.0)
        ae = Autoencoder(ae_args).to(device).eval()                        # no TextEncoder: decoding stops at ids
        decoder = compile(lambda z: ae.logits(ae.decompress(z)))  # what ae.decode runs before the tokenizer

        for sampler in samplers:  # schedule d = 5 and t_min = 1e-3 (train_diff.py's) do not change the cost
            @torch.no_grad()
            def generate():
                z = sample(denoiser, (B, N, d), steps, 5.0, 1e-3, sampler, device=device, autocast=ctx)
                with ctx:
                    return decoder(ae.denormalize_z(z)).argmax(-1)        # (B, L) token ids
            bench('sample', sampler, N, B, generate, sampling_flops(size, B, N, steps, sampler))

        # denoiser step. Self-conditioning's no-grad pass runs on the whole batch (diffusion_loss keeps shapes
        # static for compile), so FLOPs = 1x forward (no grad) + 3x (forward + backward = 2x) = 4x forward
        Bt = cfg['train_batch_size']
        z0 = torch.randn(Bt, N, d, device=device)
        ema = copy.deepcopy(raw.train()).requires_grad_(False)
        opt = common.make_optimizer(raw, 1e-4, (0.9, 0.98), 0.01)

        def denoiser_step():
            with ctx:
                loss = diffusion_loss(denoiser, z0, 5.0, 1e-3, self_cond_prob=0.5)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema_update(ema, raw, 0.9999)
        bench('train-diff', '-', N, Bt, denoiser_step, diffusion_train_flops(dict(size, n_latents=N), Bt, 0.5))

        # autoencoder step with train_ae.py's default recipe; random states stand in for the frozen encoder
        Ba = cfg['ae_batch_size']
        h, ids = torch.randn(Ba, L, d, device=device), torch.randint(cfg['vocab_size'], (Ba, L), device=device)
        mask = torch.ones(Ba, L, dtype=torch.bool, device=device)  # a mask, as in training (rules out flash SDPA)
        model, opt = compile(ae.train()), common.make_optimizer(ae, 1e-4, (0.9, 0.98), 0.01)

        def ae_step():
            with ctx:
                loss, _ = model(h, ids, mask, act_mask=0.3, act_delta=0.7, latent_dropout=0.4)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        bench('train-ae', '-', N, Ba, ae_step, ae_train_flops(ae_args, Ba))
        del raw, denoiser, ema, ae, decoder, model, opt  # free this N's memory before the next

        K, Bb = cfg['n_blocks'], cfg['block_batch_size']
        if K:  # the block model: one training step over windows of K blocks, one cached block of sampling
            torch.compiler.reset()
            torch.manual_seed(cfg['seed'])
            raw = BlockDenoiser(n_latents=N, max_blocks=K, **size).to(device)
            model, ema = compile(raw), copy.deepcopy(raw).requires_grad_(False)
            opt, zb = common.make_optimizer(raw, 1e-4, (0.9, 0.98), 0.01), torch.randn(Bb, K, N, d, device=device)

            def block_step():
                with ctx:
                    loss = block_loss(model, zb, 5.0, 1e-3, self_cond_prob=0.5, drop_prob=0.1)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                ema_update(ema, raw, 0.9999)
            bench('train-blocks', '-', N, Bb, block_step, block_train_flops(size, Bb, N, K, 0.5), tokens=Bb * K * L)
            del model, opt
            # sampling stays eager (the cache's key length grows block by block: a compiled step would
            # recompile at every index)
            raw.eval()
            caches, zero = [dict() for _ in raw.blocks], torch.zeros(Bb, device=device)
            with torch.no_grad(), ctx:
                for k in range(K - 1):  # prefill: K-1 committed blocks
                    raw.step(torch.randn(Bb, N, d, device=device), zero, torch.zeros(Bb, N, d, device=device), k,
                             caches, store=True)

            @torch.no_grad()
            def block_sample():
                net = lambda z, t, sc, cond=None: raw.step(z, t, sc, K - 1, caches).float()
                return sample(net, (Bb, N, d), steps, 5.0, 1e-3, 'ddim', device=device, autocast=ctx)
            bench('sample-block', 'ddim', N, Bb, block_sample, steps * block_step_flops(size, Bb, N, K - 1))
            del raw, ema, caches

    peak_str = f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown (MFU '-')"
    print(f"\nbench.py | {name} | torch {torch.__version__} | {cfg['dtype'] if cuda else 'float32'} | compile="
          f"{cfg['compile_mode'] if use_compile else 'off'} | bf16 peak {peak_str}")
    print(f"sample: denoiser '{cfg['size']}', {steps} steps + decode to ids at L={L} (tokenizer not timed; MFU counts "
          f"the denoiser only) | train: one optimizer step per micro-batch | tokens = samples x L | median of "
          f"{cfg['repeats']}" + (f" | blocks: K={cfg['n_blocks']}, train batch = windows (tokens x K), sample-block = "
                                 f"block K-1 against a cache of K-1, {steps} steps" if cfg['n_blocks'] else ''))
    print(f"{'task':<13}{'sampler':<10}{'N':>5}{'batch':>7}{'s/batch':>10}{'samples/s':>11}{'tokens/s':>11}"
          f"{'TFLOP/s':>9}{'MFU':>7}{'mem GiB':>9}")
    for r in rows:
        secs, batch, flops_s = r['secs'], r['batch'], r['flops'] / r['secs']
        mfu = f"{100 * flops_s / peak:.1f}%" if peak else '-'
        print(f"{r['task']:<13}{r['sampler']:<10}{r['N']:>5}{batch:>7}{secs:>10.4f}{batch / secs:>11.1f}"
              f"{r['tokens'] / secs:>11.0f}{flops_s / 1e12:>9.3g}{mfu:>7}{r['mem']:>9}")
    common.teardown(env)
    return rows


if __name__ == '__main__':
    main(get_config(sys.argv[1:]))
