"""
Train the latent diffusion model: a denoiser over the normalised latents (z - mu_z) / sigma_z of a trained
autoencoder (train_ae.py).

    python train_diff.py config/tiny_diff.py                                        # CPU, offline, minutes
    python train_diff.py config/diff_roc_n16.py                                     # one GPU
    torchrun --standalone --nproc_per_node=8 train_diff.py config/diff_roc_n16.py   # eight GPUs, DDP
    python train_diff.py config/tiny_diff.py --init_from=resume                     # resume exactly
    python train_diff.py config/tiny_cond.py                                        # source -> target pairs
    python train_diff.py config/tiny_long.py                                        # long text, block by block

Ctrl-C or SIGTERM finishes the optimizer step, saves out_dir/ckpt.pt and exits (a second signal exits at
once); a new run refuses an out_dir that holds a ckpt.pt unless --overwrite=True.

Conditional generation (paper Sec. 7, task='conditional'): the data are source/target pairs; the source
goes through the same frozen encoder and compressor (up to src_max_len tokens), its normalised latent
through a trainable source encoder, and every denoiser block cross-attends to it. A share cond_drop of
the examples sees a learned null source instead, for classifier-free guidance at sampling. With
init_from='pretrained' training starts from an unconditional diffusion checkpoint (the paper does).

Long text (Cola DLM, task='blocks'): each row (a chunk of a document, corpus.chunk_document) is one block
of N latents; a split's documents are laid end to end with an end marker block E between them, a
training example is a window of n_blocks consecutive blocks of that stream, and model.BlockDenoiser
learns every block given the clean blocks before it (diffusion.block_loss). cond_drop is then the share
of blocks that lose their prefix, for guidance at sampling. init_from='pretrained' starts it from a
single-window checkpoint on the same autoencoder. Validation logs the loss per block index and the prefix
gain (the loss without the prefix minus the loss with it, same noise): how much the model reads what
comes before.

The data are prepared rows (data/prepare.py, corpus.py), with the autoencoder's tokenizer and L. With
cache_latents on, the rows are turned into latents once by the frozen encoder + compressor and kept as one
float16 memory map per split (out_dir/latents_<fingerprint>_<split>.f16, its key in a .json beside it):
the autoencoder is frozen here, so re-encoding every step would only repeat the same work. Each rank
encodes its own share of the rows. The checkpoint records where the autoencoder is and its fingerprint, so
that sample.py decodes with the right one.
"""
import copy
import json
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import common
import flops
from autoencoder import load_autoencoder, resolve_encoder
from corpus import open_data
from diffusion import block_loss, diffusion_loss, ema_update, end_marker, q_sample, sample_blocks
from model import DENOISER_SIZES, BlockDenoiser, Denoiser
from pipeline import generate

config = dict(
    # I/O
    out_dir='out/diff',          # checkpoint, latent cache and log.txt go here
    init_from='scratch',         # 'scratch', 'resume' (from out_dir/ckpt.pt), 'pretrained' (pretrained_ckpt)
    overwrite=False,             # let a 'scratch'/'pretrained' run replace an existing out_dir/ckpt.pt
    pretrained_ckpt='',          # an unconditional diffusion checkpoint to start a conditional model from
    ae_ckpt='out/ae/ckpt.pt',    # the trained autoencoder
    eval_interval=5000,          # evaluate, print a few samples and save every this many steps
    eval_size=1024,              # held-out rows (latents) for the evaluation loss
    eval_samples=4,              # texts generated (from the EMA model) at each evaluation (conditional:
                                 # from the first held-out sources, scored by exact match)
    log_interval=100,            # one log line every this many steps
    keep_every=0,                # also keep out_dir/ckpt_STEP.pt every this many steps (0 = the latest only)
    wandb_log=False,             # log to Weights & Biases (wandb is imported only when True)
    wandb_project='nanocosmos',  # its project
    wandb_run_name='',           # its run name; '' = wandb's own
    # data (corpus.py): a folder written by data/prepare.py with the autoencoder's tokenizer and L (pairs:
    # --pairs=True), or a raw source prepared on first use into out_dir/data/ with the keys below
    data='stories',              # a prepared folder, or 'stories', a .txt/.jsonl/.csv file, 'hf:NAME[:CONFIG]'
    val_data='',                 # raw source only: a separate validation source ('' = hold out val_size rows)
    val_size=1000,               # raw source only: validation rows (whole documents) held out of data
    text_field='text',           # raw source only: the text column of .jsonl/.csv and hub data
    txt_docs='line',             # raw source only: a .txt holds one document per 'line' or 'blank'-line separated
    n_stories=20000,             # raw source only: size of the embedded corpus when data='stories'
    cache_latents=True,          # encode the corpus once into an fp16 memmap (else encode every step)
    # conditional generation (paper Sec. 7); data is then 'stories' (the tiny task) or a source/target .jsonl
    task='unconditional',        # 'unconditional', 'conditional' or 'blocks' (long text, model.BlockDenoiser)
    src_max_len=128,             # source tokens read (App. A: XSum and SQuAD 512, ParaDetox 40); longer are cut and counted
    cond_layers=12,              # layers of the trainable source encoder (the paper: 12)
    cond_drop=0.1,               # share of training examples that see the null source (classifier-free guidance;
                                 # task='blocks': share of blocks that lose their view of the prefix)
    n_blocks=4,                  # task='blocks': K, blocks (rows) per training window and block embeddings
    # model (paper App. C): a named size from model.DENOISER_SIZES
    size='base',                 # 'tiny', 'mini', 'small' or 'base' (12 layers x 768 x 12 heads)
    # diffusion (paper Sec. 6, Table 7)
    schedule_d=5.0,              # d of alpha(t) = 1 / (1 + d^2 tan^2(pi t / 2)): ROCStories 5, Wikipedia 3
    t_min=1e-3,                  # t ~ U(t_min, 1) in training; sampling ends at t_min
    self_cond_prob=0.5,          # share of examples trained with a self-conditioning estimate
    ema_decay=0.9999,            # EMA of the weights; samples come from the EMA model
    guide_step=0,                # keep the EMA weights of this step as the guide of autoguidance at sampling (a
                                 # weaker model of the same data; unconditional only; 0 = none; ours, not the paper's)
    sample_steps=200,            # Euler steps for the samples printed at evaluation
    # optimisation (Table 7)
    batch_size=1024,             # global batch, in latents, per optimizer step
    micro_batch_size=256,        # latents per forward pass per process; accumulation fills the rest
    max_steps=200000,            # optimizer steps (the paper: 200k on ROCStories)
    lr=2e-4,                     # peak learning rate, AdamW (Table 7)
    beta1=0.9,                   # AdamW beta1
    beta2=0.98,                  # AdamW beta2
    weight_decay=0.01,           # AdamW weight decay, on matrices only
    warmup=1000,                 # linear warm-up steps, then constant (the paper) or decay_lr
    decay_lr=False,              # cosine decay to min_lr at max_steps after the warm-up (ours, not the paper's)
    min_lr=0.0,                  # where decay_lr ends
    grad_clip=1.0,               # clip the global gradient norm to this
    # system
    device='auto',               # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1'
    dtype='bfloat16',            # autocast dtype on GPU ('bfloat16', 'float16', 'float32'); CPU stays fp32
    compile=True,                # torch.compile the denoiser (off on CPU in the tiny configs)
    seed=1337,                   # seeds the init, the data order and the noise (+ rank)
)


def check_config(cfg):
    """Values that parse but mean nothing end here, in one line, before anything is built or written."""
    common.at_least(cfg, 1, 'eval_interval', 'eval_size', 'log_interval', 'val_size', 'n_stories', 'batch_size',
                    'micro_batch_size', 'sample_steps', 'cond_layers', 'n_blocks')
    common.at_least(cfg, 0, 'max_steps', 'warmup', 'eval_samples')
    common.require(cfg, 'src_max_len', lambda v: v >= 3, ">= 3 ([CLS], a token, [SEP])")
    common.require(cfg, 'schedule_d', lambda v: v > 0, "> 0")
    common.require(cfg, 't_min', lambda v: 0 < v < 1, "in (0, 1)")
    common.require(cfg, 'lr', lambda v: v > 0, "> 0")
    common.require(cfg, 'min_lr', lambda v: 0 <= v <= cfg['lr'], "in [0, lr]")
    common.require(cfg, 'grad_clip', lambda v: v > 0, "> 0")
    common.in_unit(cfg, 'self_cond_prob', closed_right=True)
    common.in_unit(cfg, 'cond_drop', 'ema_decay', 'weight_decay', 'beta1', 'beta2')
    if cfg['size'] not in DENOISER_SIZES:
        common.die(f"size '{cfg['size']}' is not one of {', '.join(DENOISER_SIZES)}")
    if cfg['task'] not in ('unconditional', 'conditional', 'blocks'):
        common.die(f"task must be 'unconditional', 'conditional' or 'blocks', not '{cfg['task']}'")
    if cfg['init_from'] not in ('scratch', 'resume', 'pretrained'):
        common.die(f"init_from must be 'scratch', 'resume' or 'pretrained', not '{cfg['init_from']}'")
    common.at_least(cfg, 0, 'guide_step')
    if cfg['guide_step'] and cfg['task'] != 'unconditional':
        common.die(f"guide_step={cfg['guide_step']} is for unconditional models (autoguidance); a {cfg['task']} "
                   f"model has its own guidance: set guide_step=0")
    if cfg['guide_step'] >= cfg['max_steps'] > 0:
        common.die(f"guide_step={cfg['guide_step']} must be below max_steps={cfg['max_steps']} (the guide is an "
                   f"earlier, weaker state of the model)")
    common.autocast('cpu', cfg['dtype'])  # refuses a dtype it does not know


@torch.no_grad()
def encode_rows(ae, rows, idx, ctx):
    """Normalised latents (B, N, d), float32, of the prepared rows idx (ids of any length the compressor reads)."""
    ids, mask = rows.batch(idx)
    with ctx:
        return ae.encode(ids=ids, mask=mask, normalize=True)


def cached_latents(ae, rows, n, name, cfg, env, ctx, log):
    """
    The normalised latents of the first n rows as a float16 memory map (n, N, d) in out_dir, encoded once:
    every rank encodes its own contiguous share of the rows in batches and writes it into the one file
    (rank 0 creates it at full size first). A key file beside it, written last, says what the file holds;
    a missing or different key means the cache is rebuilt. fp16 rounding of normalised latents (relative
    error <= 4.9e-4) stays below the sampler's final noise level.
    """
    base = os.path.join(cfg['out_dir'], f"latents_{ae.fingerprint()}_{name}")
    shape = (n, ae.args['n_latents'], ae.args['dim'])
    key = dict(data=rows.paths[0], rows=n, max_len=rows.max_len, shape=list(shape), fingerprint=ae.fingerprint())
    try:
        with open(base + '.json') as f:
            ready = json.load(f) == key and os.path.getsize(base + '.f16') == np.prod(shape) * 2
    except (OSError, ValueError):
        ready = False
    if env['ddp']:
        torch.distributed.barrier()  # every rank has read the key before rank 0 may remove it
    if not ready:
        t0 = time.time()
        if env['master']:
            if os.path.exists(base + '.json'):
                os.remove(base + '.json')
            np.memmap(base + '.f16', dtype=np.float16, mode='w+', shape=shape).flush()
        if env['ddp']:
            torch.distributed.barrier()
        z_all = np.memmap(base + '.f16', dtype=np.float16, mode='r+', shape=shape)
        lo, hi = env['rank'] * n // env['world_size'], (env['rank'] + 1) * n // env['world_size']
        bs = cfg['micro_batch_size']
        for i in common.progress(range(lo, hi, bs), desc=f"latents {name}", disable=not env['master']):
            z = encode_rows(ae, rows, np.arange(i, min(i + bs, hi)), ctx).cpu().numpy().astype(np.float16)
            if not np.isfinite(z).all():
                common.die(f"a normalised latent of rows {i}..{i + len(z)} does not fit float16: set "
                           f"--cache_latents=False (the autoencoder's latent statistics may be degenerate)")
            z_all[i:i + len(z)] = z
        z_all.flush()
        del z_all
        if env['ddp']:
            torch.distributed.barrier()  # every share is written
        if env['master']:
            with open(base + '.json.tmp', 'w') as f:
                json.dump(key, f)
            os.replace(base + '.json.tmp', base + '.json')
        log(f"latents '{name}': {n:,} rows encoded by {env['world_size']} process(es) in {time.time() - t0:.1f}s, "
            f"{np.prod(shape) * 2 / 2 ** 20:,.1f} MiB")
    return np.memmap(base + '.f16', dtype=np.float16, mode='r', shape=shape)


def from_cache(z_all, idx):
    """Latents of rows idx (any order) from an fp16 memmap, as float32."""
    return torch.from_numpy(z_all[np.asarray(idx)].astype(np.float32))


def load_pretrained(model, path, fingerprint, log):
    """
    Start from an unconditional diffusion checkpoint's EMA weights (the paper starts its conditional
    models so). Everything the two models share is loaded; what only the conditional model has (the
    source encoder, the null source and the cross-attention sublayers) keeps its fresh initialisation.
    """
    ckpt = common.load_checkpoint(path, 'diffusion')
    if ckpt['autoencoder']['fingerprint'] != fingerprint:
        common.die(f"pretrained checkpoint '{path}' was trained on another autoencoder")
    own = model.state_dict()
    shared = {k: v for k, v in ckpt['ema'].items() if k in own}
    bad = [k for k, v in shared.items() if v.shape != own[k].shape]
    if bad or len(shared) < len(ckpt['ema']):
        common.die(f"pretrained checkpoint '{path}' does not fit this denoiser (size or latent shape differ)")
    model.load_state_dict(shared, strict=False)
    log(f"initialised {len(shared)} of {len(own)} tensors from '{path}' (step {ckpt['step']})")


# -----------------------------------------------------------------------------
# long text (task='blocks'): the rows of each split as one stream of documents -> windows of K blocks


def block_stream(docs):
    """
    The stream of a split's rows with the end marker before every document and after the last, as row
    indices with -1 for the marker: E a1 a2 .. E b1 b2 .. E. docs (documents + 1,) holds the first row of
    each document and the end (corpus.Prepared.docs); the rows of a document are consecutive.
    """
    docs = np.asarray(docs, dtype=np.int64)
    n_rows, n_docs = int(docs[-1]), len(docs) - 1
    stream = np.full(n_rows + n_docs + 1, -1, dtype=np.int64)
    doc_of_row = np.repeat(np.arange(n_docs), np.diff(docs))                    # (rows,)
    stream[np.arange(n_rows) + doc_of_row + 1] = np.arange(n_rows)              # each document after its E
    return stream


class BlockWindows:
    """
    Training windows of K consecutive blocks of a block_stream. Window j starts at stream position j*K/2:
    windows overlap by half, so every block is trained both early and late in a window, and windows start
    mid-document (the state of a sampler whose window slides). latents(rows) gives the normalised latents
    (B, N, d) of rows (from the fp16 cache, or encoded on the fly); markers become E.
    """

    def __init__(self, stream, latents, K, marker):
        self.stream, self.latents, self.K, self.marker = stream, latents, K, marker
        self.stride = max(1, K // 2)

    def __len__(self):
        return max(0, (len(self.stream) - self.K) // self.stride + 1)

    def __getitem__(self, idx):
        r = self.stream[np.asarray(idx, dtype=np.int64)[:, None] * self.stride + np.arange(self.K)]  # (B, K)
        real = torch.from_numpy(r >= 0)
        z = torch.empty(*r.shape, *self.marker.shape)                          # (B, K, N, d)
        z[~real] = self.marker
        if real.any():
            z[real] = self.latents(r[r >= 0]).float().cpu()
        return z


def document_texts(ae, blocks, length, ctx):
    """The texts of generated blocks (n, k, N, d) (normalised), each document cut at its end marker (length)."""
    n, k = blocks.shape[:2]
    with ctx:
        texts = ae.decode(blocks.flatten(0, 1), normalized=True)[1] if k else []
    return [texts[i * k:i * k + int(length[i])] for i in range(n)]


def evaluate_blocks(ema, windows, marker, ae, cfg, g, device, ctx, step):
    """
    Validation of a block model on the first eval_size windows, with fixed t and noise: the x0 loss per block
    index, and the prefix gain per block index, the loss with every prefix dropped minus the loss with it
    (a sampling-free measure of how much the model reads what comes before; ~0 at block 0, which has no
    prefix). Also a few documents sampled from a document start (the end marker). Returns (val loss, log).
    """
    K, mb = cfg['n_blocks'], cfg['micro_batch_size']
    n = min(len(windows), cfg['eval_size'])
    sums = torch.zeros(2, K)
    with torch.no_grad(), ctx:
        for i in range(0, n, mb):
            z0 = windows[np.arange(i, min(n, i + mb))].to(device)             # (B, K, N, d)
            B = len(z0)
            t = cfg['t_min'] + (1 - cfg['t_min']) * torch.rand(B, K, generator=g, device=device)
            eps = torch.randn(z0.shape, generator=g, device=device)
            z_t = q_sample(z0.flatten(0, 1), t.flatten(), eps.flatten(0, 1), cfg['schedule_d']).view_as(z0)
            for j, drop in enumerate((None, torch.ones(B, K, dtype=torch.bool, device=device))):
                x0 = ema(z0, z_t, t, torch.zeros_like(z0), drop)
                sums[j] += ((x0.float() - z0) ** 2).mean(dim=(2, 3)).sum(0).cpu()
    loss, null = sums / n
    val_loss = loss.mean().item()
    common.check_finite(val_loss, 'validation loss', step)
    prompt = marker.expand(cfg['eval_samples'], 1, *marker.shape).to(device)
    out, length = sample_blocks(ema, prompt, K, cfg['sample_steps'], cfg['schedule_d'], cfg['t_min'],
                                generator=torch.Generator(device).manual_seed(0), device=device, autocast=ctx)
    docs = document_texts(ae, out[:, 1:], length, ctx)
    fmt = lambda v: ' '.join(f"{x:.4f}" for x in v.tolist())
    line = (f"eval {step:>7} | val loss (EMA, no self-cond) {val_loss:.4f} | per block {fmt(loss)} | prefix gain "
            f"{fmt(null - loss)} | samples: " + ' | '.join(' / '.join(doc) for doc in docs))
    return val_loss, line


def main(cfg):
    check_config(cfg)
    env = common.setup(cfg['device'], cfg['seed'])
    common.install_signals()  # Ctrl-C before the loop: one line; in the loop: save, then stop
    device, master = env['device'], env['master']
    common.claim_out_dir(cfg['out_dir'], env, cfg['init_from'], cfg['overwrite'])
    log = common.Logger(cfg['out_dir'], master)
    track = common.start_run(cfg, master)  # config.json, the optional tracker
    ctx = common.autocast(env['device_type'], cfg['dtype'])
    accum = common.grad_accum_steps(cfg['batch_size'], cfg['micro_batch_size'], env['world_size'])
    ckpt_path = os.path.join(cfg['out_dir'], 'ckpt.pt')
    peak = flops.peak_flops(torch.cuda.get_device_name(device)) if env['device_type'] == 'cuda' else 0.0  # for MFU

    # the frozen autoencoder, with its latent statistics
    ae_path = os.path.abspath(cfg['ae_ckpt'])
    ae_ckpt = common.load_checkpoint(ae_path, 'autoencoder')
    if ae_ckpt['model']['z_stats_count'].item() == 0:
        common.die(f"autoencoder '{ae_path}' has no latent statistics yet: it has not reached an evaluation")
    ae = load_autoencoder(ae_ckpt, device)
    ae_info = dict(path=ae_path, fingerprint=ae.fingerprint(), model_args=ae.args)

    # data: prepared rows (targets; and aligned source rows, for a conditional model) -> normalised latents
    if cfg['task'] not in ('unconditional', 'conditional', 'blocks'):
        common.die(f"task must be 'unconditional', 'conditional' or 'blocks', not '{cfg['task']}'")
    conditional, blocks = cfg['task'] == 'conditional', cfg['task'] == 'blocks'
    data = open_data(cfg, ae.encoder.tokenizer, resolve_encoder(ae.args['encoder']), ae.args['encoder'],
                     ae.args['max_len'], env, log, pairs=conditional, src_max_len=cfg['src_max_len'] if conditional else 0)
    n_train, n_val = len(data.train), min(cfg['eval_size'], len(data.val))
    if blocks:  # the first eval_size validation windows (K blocks every K/2) read at most this many rows
        n_val = min(len(data.val), (cfg['eval_size'] - 1) * max(1, cfg['n_blocks'] // 2) + cfg['n_blocks'])
    t0 = time.time()
    latents = lambda rows, n, name: cached_latents(ae, rows, n, name, cfg, env, ctx, log)
    val_z = from_cache(latents(data.val, n_val, 'val'), np.arange(n_val))
    train_z = latents(data.train, n_train, 'train') if cfg['cache_latents'] else None
    val_src = train_src = None
    if conditional:
        val_src = from_cache(latents(data.val_src, n_val, f"val_src{cfg['src_max_len']}"), np.arange(n_val))
        if cfg['cache_latents']:
            train_src = latents(data.train_src, n_train, f"train_src{cfg['src_max_len']}")
    m = data.meta
    cut = (f"{m['train']['sources_cut']:,} sources longer than {cfg['src_max_len']} and {m['train']['targets_cut']:,} "
           f"targets longer than L were cut" if conditional else f"{m['train']['sentences_cut']:,} sentences longer "
           f"than L were cut")
    log(f"data {data.folder}: {n_train:,} train / {n_val:,} val {'pairs' if conditional else 'rows'}, N="
        f"{ae.args['n_latents']} x d={ae.args['dim']} ({time.time() - t0:.1f}s{', cached' if cfg['cache_latents'] else ''}); "
        f"{cut} when it was prepared")
    val_texts = ae.encoder.decode(data.val.batch(range(min(n_val, cfg['eval_samples'])))[0]) if conditional else []
    if blocks:  # windows of K consecutive blocks over each split's documents, end markers between them
        marker = end_marker(ae.args['n_latents'], ae.args['dim'])
        train_latents = (lambda r: from_cache(train_z, r)) if train_z is not None else \
            (lambda r: encode_rows(ae, data.train, r, ctx))
        train_windows = BlockWindows(block_stream(data.docs('train')), train_latents, cfg['n_blocks'], marker)
        val_windows = BlockWindows(block_stream(data.docs('val')), lambda r: val_z[r], cfg['n_blocks'], marker)
        log(f"windows of {cfg['n_blocks']} blocks: {len(train_windows):,} train / "
            f"{min(cfg['eval_size'], len(val_windows)):,} val, over {len(data.docs('train')) - 1:,} / "
            f"{len(data.docs('val')) - 1:,} documents")
        n_train = len(train_windows)  # what the batch indices draw from

    if cfg['batch_size'] > n_train:
        common.die(f"batch_size={cfg['batch_size']} is larger than the {n_train:,} training "
                   f"{'windows' if blocks else 'rows'}")

    # the denoiser, from the config or (resume) from what the checkpoint says
    args = dict(latent_dim=ae.args['dim'], n_latents=ae.args['n_latents'], **DENOISER_SIZES[cfg['size']],
                cond_layers=cfg['cond_layers'] if conditional else 0,
                n_cond_latents=ae.args['n_latents'] if conditional else 0)
    if blocks:  # the block model: no source, K block embeddings
        args = dict(latent_dim=ae.args['dim'], n_latents=ae.args['n_latents'], **DENOISER_SIZES[cfg['size']],
                    max_blocks=cfg['n_blocks'])
    Model = BlockDenoiser if blocks else Denoiser
    diff_args = dict(schedule_d=cfg['schedule_d'], t_min=cfg['t_min'], task=cfg['task'],
                     src_max_len=cfg['src_max_len'])
    step, ckpt = 0, None
    if cfg['init_from'] == 'resume':
        ckpt = common.load_checkpoint(ckpt_path, 'diffusion')
        if ckpt['autoencoder']['fingerprint'] != ae_info['fingerprint']:
            common.die(f"'{ckpt_path}' was trained on another autoencoder than '{ae_path}'")
        if ckpt['model_args'] != args:
            common.die(f"the config's denoiser {args} differs from the checkpoint's {ckpt['model_args']}")
        step = ckpt['step']
        kept = ckpt.get('guide_step', 0)  # the step of the autoguidance guide it keeps; 0: none (yet)
        if kept != cfg['guide_step'] and not (kept == 0 and cfg['guide_step'] > step):  # else none would be taken
            common.die(f"guide_step={cfg['guide_step']} does not match '{ckpt_path}' (step {step}), which keeps "
                       + (f"the guide of step {kept}" if kept else "no guide")
                       + ": resume with the guide_step it was trained with")
    raw = Model(**args).to(device)
    if cfg['init_from'] == 'pretrained':
        load_pretrained(raw, cfg['pretrained_ckpt'], ae_info['fingerprint'], log)
    optimizer = common.make_optimizer(raw, cfg['lr'], (cfg['beta1'], cfg['beta2']), cfg['weight_decay'])
    if ckpt is not None:
        common.load_state(raw, ckpt['model'], ckpt_path)
        optimizer.load_state_dict(ckpt['optimizer'])
        common.restore_rng_states(ckpt['rng'], env)
        log(f"resumed from {ckpt_path} at step {step}")
    log(f"denoiser '{cfg['size']}': {sum(p.numel() for p in raw.parameters()) / 1e6:.2f}M parameters, "
        f"{accum} micro-steps x {cfg['micro_batch_size']} x {env['world_size']} processes")

    # a block window is 2KN positions, each attending to all 2KN keys (SDPA computes the masked ones too)
    flop_args = dict(args, n_latents=2 * cfg['n_blocks'] * args['n_latents']) if blocks else args
    step_flops = flops.diffusion_train_flops(flop_args, cfg['batch_size'], cfg['self_cond_prob'])  # None: conditional
    model = torch.compile(raw) if cfg['compile'] else raw
    if env['ddp']:
        model = DDP(model, device_ids=[env['local_rank']] if env['device_type'] == 'cuda' else None)
    # the EMA copy is taken after DDP has broadcast rank 0's weights into `raw`, so that every rank's EMA
    # starts from the same weights (taken before, each rank's would start from its own initialisation)
    # (a copy, not a new Denoiser: building one would draw from the RNG after a resume restored it)
    ema = copy.deepcopy(raw).requires_grad_(False)
    if ckpt is not None:
        common.load_state(ema, ckpt['ema'], ckpt_path)
    # autoguidance's guide: the EMA weights of step guide_step, taken once and kept in every later checkpoint
    guide = ckpt.get('guide') if cfg['init_from'] == 'resume' else None

    def batch(idx):
        """(z0, source latent or None) of a micro-batch: from the cache, or encoded on the fly."""
        if blocks:
            return common.to_device(train_windows[idx.numpy()], env), None  # (B, K, N, d)
        idx = idx.numpy()
        if train_z is not None:
            z0 = common.to_device(from_cache(train_z, idx), env)
            return z0, (common.to_device(from_cache(train_src, idx), env) if conditional else None)
        return encode_rows(ae, data.train, idx, ctx), (encode_rows(ae, data.train_src, idx, ctx) if conditional else None)

    val_loss = ckpt['val_loss'] if ckpt is not None else None

    def save():
        rng = common.gather_rng_states(env)  # a collective: every rank calls it
        if master:
            common.save_checkpoint(dict(stage='diffusion', model_args=args, diffusion_args=diff_args,
                                        model=raw.state_dict(), ema=ema.state_dict(),
                                        **(dict(guide=guide, guide_step=cfg['guide_step']) if guide else {}),
                                        optimizer=optimizer.state_dict(), step=step, config=cfg, rng=rng,
                                        autoencoder=ae_info, val_loss=val_loss, data_dir=data.folder,
                                        data=data.meta), ckpt_path)

    common.arm_stop()
    t0 = time.time()
    while step < cfg['max_steps']:
        for group in optimizer.param_groups:
            group['lr'] = common.lr_at(step, cfg['lr'], cfg['warmup'],
                                        cfg['min_lr'] if cfg['decay_lr'] else None, cfg['max_steps'])
        loss_sum = torch.zeros(1, device=device)  # this rank's micro-batch losses of this step
        for micro in range(accum):
            idx = common.batch_indices(step, micro, env['rank'], cfg['micro_batch_size'], accum,
                                       env['world_size'], n_train, cfg['seed'])
            z0, src = batch(idx)
            sync = nullcontext() if (not env['ddp'] or micro == accum - 1) else model.no_sync()
            with sync, ctx:
                if blocks:
                    loss = block_loss(model, z0, cfg['schedule_d'], cfg['t_min'], cfg['self_cond_prob'],
                                      cfg['cond_drop'])
                else:
                    loss = diffusion_loss(model, z0, cfg['schedule_d'], cfg['t_min'], cfg['self_cond_prob'],
                                          src, cfg['cond_drop'])
                (loss / accum).backward()
            loss_sum += loss.detach().float()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg['grad_clip'])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(ema, raw, cfg['ema_decay'])
        step += 1
        if step == cfg['guide_step']:
            guide = {k: v.detach().clone() for k, v in ema.state_dict().items()}

        if step % cfg['log_interval'] == 0 or step == cfg['max_steps']:
            # the mean over every micro-batch of every rank (the global batch), the same on every rank
            loss_v = (common.global_mean(loss_sum, env) / accum).item()
            common.check_finite(loss_v, 'training loss', step, master)
            dt = (time.time() - t0) / cfg['log_interval']
            t0 = time.time()
            log(f"step {step:>7} | loss {loss_v:.4f} | lr {optimizer.param_groups[0]['lr']:.2e} | grad "
                f"{grad_norm.item():.3f} | {dt * 1000:.0f} ms/step | {cfg['batch_size'] / dt:,.0f} samples/s"
                + flops.mfu_fields(step_flops, dt, peak, env['world_size']))
            track(dict(loss=loss_v, lr=optimizer.param_groups[0]['lr'], grad_norm=grad_norm.item(),
                       ms_per_step=dt * 1000), step)
        saved = False
        if step % cfg['eval_interval'] == 0 or step == cfg['max_steps']:
            # a fixed generator: every evaluation scores the same t and noise, and the training RNG
            # stream is left untouched (so that a resumed run continues exactly)
            g = torch.Generator(device).manual_seed(0)
            if blocks:
                val_loss, line = evaluate_blocks(ema, val_windows, marker, ae, cfg, g, device, ctx, step)
                log(line)
            else:
                with torch.no_grad(), ctx:
                    losses = []
                    for i in range(0, len(val_z), cfg['micro_batch_size']):
                        z0 = val_z[i:i + cfg['micro_batch_size']].to(device)
                        src = val_src[i:i + cfg['micro_batch_size']].to(device) if conditional else None
                        t = cfg['t_min'] + (1 - cfg['t_min']) * torch.rand(len(z0), generator=g, device=device)
                        eps = torch.randn(z0.shape, generator=g, device=device)
                        x0 = ema(q_sample(z0, t, eps, cfg['schedule_d']), t, torch.zeros_like(z0), src)
                        losses.append(((x0.float() - z0) ** 2).mean().item() * len(z0))
                val_loss = sum(losses) / len(val_z)
                common.check_finite(val_loss, 'validation loss', step, master)
                n_gen = min(cfg['eval_samples'], len(val_z))
                texts, _ = generate(ema, ae, n_gen, cfg['sample_steps'], cfg['schedule_d'], cfg['t_min'], seed=0,
                                    device=device, autocast=ctx, cond=val_src[:n_gen] if conditional else None)
                extra = ''
                if conditional:  # exact match against the held-out targets, case and spacing aside
                    norm = lambda x: ' '.join(x.lower().replace(' .', '.').replace(' ,', ',').split())
                    exact = sum(norm(a) == norm(b) for a, b in zip(texts, val_texts)) / max(1, n_gen)
                    extra = f" | exact match {exact:.3f} on {n_gen} held-out sources"
                log(f"eval {step:>7} | val loss (EMA, no self-cond) {val_loss:.4f}{extra} | samples: "
                    + ' | '.join(texts[:4]))
            save()
            saved = True
            if master:
                common.keep_copy(ckpt_path, step, cfg['keep_every'])
            track(dict(val_loss=val_loss), step)
            t0 = time.time()
        signum = common.stop_requested(env)  # every rank, every step: they agree on the step to stop at
        if signum:
            if not saved:
                save()
            common.stop(signum, step, ckpt_path, env, log)
    common.teardown(env)
    return raw, ema


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
