"""
Train the latent diffusion model: a denoiser over the normalised latents (z - mu_z) / sigma_z of a trained
autoencoder (train_ae.py).

    python train_diff.py config/tiny_diff.py                                        # CPU, offline, minutes
    python train_diff.py config/diff_roc_n16.py                                     # one GPU
    torchrun --standalone --nproc_per_node=8 train_diff.py config/diff_roc_n16.py   # eight GPUs, DDP
    python train_diff.py config/tiny_diff.py --init_from=resume                     # resume exactly

The texts are turned into latents once by the frozen encoder + compressor and kept (out_dir/latents_*.pt,
keyed by the autoencoder's fingerprint and the data) when cache_latents is on: the autoencoder is frozen
here, so re-encoding every step would only repeat the same work. The checkpoint records where the
autoencoder is and its fingerprint, so that sample.py decodes with the right one.
"""
import os
import sys
import time
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import common
from autoencoder import load_autoencoder
from corpus import load_texts, split_off, take
from diffusion import diffusion_loss, ema_update, generate, q_sample
from model import DENOISER_SIZES, Denoiser

config = dict(
    # I/O
    out_dir='out/diff',          # checkpoint, latent cache and log.txt go here
    init_from='scratch',         # 'scratch' or 'resume' (from out_dir/ckpt.pt)
    ae_ckpt='out/ae/ckpt.pt',    # the trained autoencoder
    eval_interval=5000,          # evaluate, print a few samples and save every this many steps
    eval_size=1024,              # held-out latents for the evaluation loss
    eval_samples=4,              # texts generated (from the EMA model) at each evaluation
    log_interval=100,
    # data (corpus.py)
    data='stories',              # 'stories', a .txt/.jsonl path, or 'hf:NAME[:CONFIG]'
    val_data='',                 # a separate validation source; '' holds out val_size texts of `data`
    val_size=1000,
    text_field='text',
    n_stories=20000,
    cache_latents=True,          # encode the corpus once and keep the latents (else encode every step)
    # model (paper App. C): a named size from model.DENOISER_SIZES
    size='base',                 # 'tiny', 'small' or 'base' (12 layers x 768 x 12 heads)
    # diffusion (paper Sec. 6, Table 7)
    schedule_d=5.0,              # d of alpha(t) = 1 / (1 + d^2 tan^2(pi t / 2)): ROCStories 5, Wikipedia 3
    t_min=1e-3,                  # t ~ U(t_min, 1) in training; sampling ends at t_min
    self_cond_prob=0.5,          # share of examples trained with a self-conditioning estimate
    ema_decay=0.9999,
    sample_steps=200,            # Euler steps for the samples printed at evaluation
    # optimisation (Table 7)
    batch_size=1024,
    micro_batch_size=256,
    max_steps=200000,
    lr=2e-4,
    beta1=0.9,
    beta2=0.98,
    weight_decay=0.01,
    warmup=1000,
    grad_clip=1.0,
    # system
    device='auto',
    dtype='bfloat16',
    compile=True,
    seed=1337,
)


@torch.no_grad()
def encode_texts(ae, texts, batch_size, ctx):
    """Normalised latents (M, N, d) of `texts`, float32 on the CPU."""
    out = []
    for i in range(0, len(texts), batch_size):
        with ctx:
            out.append(ae.encode(take(texts, range(i, min(i + batch_size, len(texts)))), normalize=True).cpu())
    return torch.cat(out)


def cached_latents(ae, texts, split, cfg, env, ctx):
    """Latents of a split, from out_dir's cache when it matches this autoencoder and data, else encoded."""
    path = os.path.join(cfg['out_dir'], f"latents_{ae.fingerprint()}_{split}.pt")
    key = dict(data=cfg['data'], val_data=cfg['val_data'], n=len(texts), max_len=ae.args['max_len'])
    if env['master'] and not (os.path.isfile(path) and torch.load(path, weights_only=True)['key'] == key):
        common.save_checkpoint(dict(key=key, z=encode_texts(ae, texts, 256, ctx)), path)
    if env['ddp']:
        torch.distributed.barrier()  # the other ranks wait for the master's cache
    # mmap: eight ranks share one copy in the page cache instead of holding eight
    return torch.load(path, map_location='cpu', weights_only=True, mmap=True)['z']


def main(cfg):
    env = common.setup(cfg['device'], cfg['seed'])
    device, master = env['device'], env['master']
    os.makedirs(cfg['out_dir'], exist_ok=True)
    log = common.Logger(cfg['out_dir'], master)
    ctx = common.autocast(env['device_type'], cfg['dtype'])
    accum = common.grad_accum_steps(cfg['batch_size'], cfg['micro_batch_size'], env['world_size'])
    ckpt_path = os.path.join(cfg['out_dir'], 'ckpt.pt')

    # the frozen autoencoder, with its latent statistics
    ae_path = os.path.abspath(cfg['ae_ckpt'])
    ae_ckpt = common.load_checkpoint(ae_path, 'autoencoder')
    if ae_ckpt['model']['z_stats_count'].item() == 0:
        common.die(f"autoencoder '{ae_path}' has no latent statistics yet: it has not reached an evaluation")
    ae = load_autoencoder(ae_ckpt, device)
    ae_info = dict(path=ae_path, fingerprint=ae.fingerprint(), model_args=ae.args)

    # data -> normalised latents
    train_texts = load_texts(cfg['data'], 'train', cfg['text_field'], cfg['n_stories'], cfg['seed'])
    if cfg['val_data']:
        val_texts = load_texts(cfg['val_data'], 'validation', cfg['text_field'], cfg['n_stories'], cfg['seed'])
    elif cfg['data'] == 'stories':
        val_texts = load_texts('stories', 'validation', n_stories=cfg['val_size'], seed=cfg['seed'])
    else:
        train_texts, val_texts = split_off(train_texts, cfg['val_size'], cfg['seed'])
    val_texts = take(val_texts, range(min(cfg['eval_size'], len(val_texts))))
    t0 = time.time()
    val_z = cached_latents(ae, val_texts, 'val', cfg, env, ctx)
    train_z = cached_latents(ae, train_texts, 'train', cfg, env, ctx) if cfg['cache_latents'] else None
    log(f"latents: {len(train_texts)} train / {len(val_texts)} val texts, N={ae.args['n_latents']} x "
        f"d={ae.args['dim']} ({time.time() - t0:.1f}s{', cached' if cfg['cache_latents'] else ''})")

    # the denoiser, from the config or (resume) from what the checkpoint says
    if cfg['size'] not in DENOISER_SIZES:
        common.die(f"size '{cfg['size']}' is not one of {', '.join(DENOISER_SIZES)}")
    args = dict(latent_dim=ae.args['dim'], n_latents=ae.args['n_latents'], **DENOISER_SIZES[cfg['size']])
    diff_args = dict(schedule_d=cfg['schedule_d'], t_min=cfg['t_min'])
    step, ckpt = 0, None
    if cfg['init_from'] == 'resume':
        ckpt = common.load_checkpoint(ckpt_path, 'diffusion')
        if ckpt['autoencoder']['fingerprint'] != ae_info['fingerprint']:
            common.die(f"'{ckpt_path}' was trained on another autoencoder than '{ae_path}'")
        if ckpt['model_args'] != args:
            common.die(f"the config's denoiser {args} differs from the checkpoint's {ckpt['model_args']}")
        step = ckpt['step']
    elif cfg['init_from'] != 'scratch':
        common.die(f"init_from must be 'scratch' or 'resume', not '{cfg['init_from']}'")
    raw = Denoiser(**args).to(device)
    ema = Denoiser(**args).to(device).requires_grad_(False)
    ema.load_state_dict(raw.state_dict())
    optimizer = common.make_optimizer(raw, cfg['lr'], (cfg['beta1'], cfg['beta2']), cfg['weight_decay'])
    if ckpt is not None:
        common.load_state(raw, ckpt['model'], ckpt_path)
        common.load_state(ema, ckpt['ema'], ckpt_path)
        optimizer.load_state_dict(ckpt['optimizer'])
        common.set_rng_state(ckpt['rng'][env['rank']] if env['rank'] < len(ckpt['rng']) else ckpt['rng'][0])
        log(f"resumed from {ckpt_path} at step {step}")
    log(f"denoiser '{cfg['size']}': {sum(p.numel() for p in raw.parameters()) / 1e6:.2f}M parameters, "
        f"{accum} micro-steps x {cfg['micro_batch_size']} x {env['world_size']} processes")

    model = torch.compile(raw) if cfg['compile'] else raw
    if env['ddp']:
        model = DDP(model, device_ids=[env['local_rank']] if env['device_type'] == 'cuda' else None)

    def batch(idx):
        if train_z is not None:
            return train_z[idx].to(device, non_blocking=True)
        with ctx:
            return ae.encode(take(train_texts, idx.tolist()), normalize=True)

    t0 = time.time()
    while step < cfg['max_steps']:
        for group in optimizer.param_groups:
            group['lr'] = common.lr_at(step, cfg['lr'], cfg['warmup'])
        for micro in range(accum):
            idx = common.batch_indices(step, micro, env['rank'], cfg['micro_batch_size'], accum,
                                       env['world_size'], len(train_texts), cfg['seed'])
            z0 = batch(idx)
            sync = nullcontext() if (not env['ddp'] or micro == accum - 1) else model.no_sync()
            with sync, ctx:
                loss = diffusion_loss(model, z0, cfg['schedule_d'], cfg['t_min'], cfg['self_cond_prob'])
                (loss / accum).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg['grad_clip'])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(ema, raw, cfg['ema_decay'])
        step += 1

        if step % cfg['log_interval'] == 0 or step == cfg['max_steps']:
            loss_v = loss.item()
            common.check_finite(loss_v, 'training loss', step)
            dt = (time.time() - t0) / cfg['log_interval']
            t0 = time.time()
            log(f"step {step:>7} | loss {loss_v:.4f} | lr {optimizer.param_groups[0]['lr']:.2e} | grad "
                f"{grad_norm.item():.3f} | {dt * 1000:.0f} ms/step | {cfg['batch_size'] / dt:,.0f} samples/s")
        if step % cfg['eval_interval'] == 0 or step == cfg['max_steps']:
            # a fixed generator: every evaluation scores the same t and noise, and the training RNG
            # stream is left untouched (so that a resumed run continues exactly)
            g = torch.Generator(device).manual_seed(0)
            with torch.no_grad(), ctx:
                losses = []
                for i in range(0, len(val_z), cfg['micro_batch_size']):
                    z0 = val_z[i:i + cfg['micro_batch_size']].to(device)
                    t = cfg['t_min'] + (1 - cfg['t_min']) * torch.rand(len(z0), generator=g, device=device)
                    eps = torch.randn(z0.shape, generator=g, device=device)
                    x0 = ema(q_sample(z0, t, eps, cfg['schedule_d']), t, torch.zeros_like(z0))
                    losses.append(((x0.float() - z0) ** 2).mean().item() * len(z0))
            val_loss = sum(losses) / len(val_z)
            common.check_finite(val_loss, 'validation loss', step)
            texts, _ = generate(ema, ae, cfg['eval_samples'], cfg['sample_steps'], cfg['schedule_d'],
                                cfg['t_min'], seed=0, device=device, autocast=ctx)
            log(f"eval {step:>7} | val loss (EMA, no self-cond) {val_loss:.4f} | samples: " + ' | '.join(texts))
            rng = [common.rng_state()]
            if env['ddp']:
                rng = [None] * env['world_size']
                torch.distributed.all_gather_object(rng, common.rng_state())
            if master:
                common.save_checkpoint(dict(stage='diffusion', model_args=args, diffusion_args=diff_args,
                                            model=raw.state_dict(), ema=ema.state_dict(),
                                            optimizer=optimizer.state_dict(), step=step, config=cfg, rng=rng,
                                            autoencoder=ae_info, val_loss=val_loss), ckpt_path)
            t0 = time.time()
    common.teardown(env)
    return raw, ema


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
