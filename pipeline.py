"""
A trained pipeline, loaded and used: the denoiser of diffusion.py on top of the autoencoder of
autoencoder.py, rebuilt from their checkpoints, and the few loops that run texts through both
(generate, encode_texts). sample.py, evaluate.py and train_diff.py's in-training samples use it.

It lives here, not in diffusion.py, so that the two halves of the method stay independent: diffusion.py
knows nothing about text and autoencoder.py nothing about diffusion; this file is where they meet.
"""
import sys
from contextlib import nullcontext

import torch

import common
from autoencoder import load_autoencoder
from diffusion import sample
from model import BlockDenoiser, Denoiser


def load_pipeline(ckpt_path, ae_ckpt='', device='cpu', use_ema=True):
    """
    The denoiser (EMA weights by default) and the autoencoder it was trained on, rebuilt from what the
    checkpoints say. The autoencoder is found at the path the diffusion checkpoint recorded, or at
    `ae_ckpt`, and must carry the fingerprint recorded at training time: a different autoencoder
    (another run, or the same run retrained) would decode the latents into nonsense.
    """
    ckpt = common.load_checkpoint(ckpt_path, 'diffusion')
    ae_path = ae_ckpt or ckpt['autoencoder']['path']
    ae = load_autoencoder(common.load_checkpoint(ae_path, 'autoencoder'), device)
    if ae.fingerprint() != ckpt['autoencoder']['fingerprint']:
        common.die(f"autoencoder '{ae_path}' (fingerprint {ae.fingerprint()}) is not the one diffusion checkpoint "
                   f"'{ckpt_path}' was trained on (fingerprint {ckpt['autoencoder']['fingerprint']})")
    return denoiser_of(ckpt, ckpt['ema' if use_ema else 'model'], ckpt_path, device), ae, ckpt


def denoiser_of(ckpt, state, where, device):
    """The denoiser a diffusion checkpoint describes (a block model for long text), holding `state`, in eval mode."""
    denoiser = (BlockDenoiser if 'max_blocks' in ckpt['model_args'] else Denoiser)(**ckpt['model_args'])
    common.load_state(denoiser, state, where)
    return denoiser.to(device).eval()


def load_guide(ckpt, device='cpu'):
    """The guide of autoguidance the checkpoint keeps (train_diff.py guide_step), or None."""
    return denoiser_of(ckpt, ckpt['guide'], 'the guide of the diffusion checkpoint', device) if 'guide' in ckpt else None


def autoguide(ckpt, w, steps, t_min=0.0, device='cpu'):
    """
    (the guide, the w to sample with) for autoguidance weight w: the checkpoint's guide when w != 1 and it keeps
    one, else (None, 1.0). Prints one note when the guide would act at every one of many steps, where it was
    measured to fail.
    """
    guide = load_guide(ckpt, device) if w != 1 else None
    if guide is None:
        return None, 1.0
    if steps > 20 and t_min == 0:
        print(f"note: autoguidance w={w:g} at all {steps} steps: on the quickstart's model it was measured at its "
              f"best at 5-10 steps and worst with many (200 steps: 28.7% valid against 73.7% at 10; README, "
              f"\"Few-step sampling\"); --guide_t_min=0.5 guides only the noisier half, --autoguidance=1 not at all",
              file=sys.stderr)
    return guide, w


@torch.no_grad()
def encode_texts(ae, texts, max_len, batch_size=64, autocast=None, normalize=True, desc=None):
    """
    Latents of `texts` (n, N, d) on the CPU in fp32, and how many texts were longer than max_len tokens
    (cut). Batches, under the one autocast context (bf16 on GPU), so that thousands of long sources (XSum:
    ~11k of 512 tokens) never sit in one encoder pass; only the latents, a few KB a text, are kept.
    """
    out, n_cut = [], 0
    starts = range(0, len(texts), batch_size)
    for i in common.progress(starts, desc=desc, unit='batch', disable=desc is None):
        ids, mask, cut = ae.encoder.tokenize(list(texts[i:i + batch_size]), max_len)
        with autocast or nullcontext():
            out.append(ae.encode(ids=ids, mask=mask, normalize=normalize).float().cpu())
        n_cut += cut
    shape = (0, ae.args['n_latents'], ae.args['dim'])
    return (torch.cat(out) if out else torch.empty(shape)), n_cut


@torch.no_grad()
def generate(denoiser, ae, n, steps, schedule_d, t_min, sampler='ddim', seed=0, batch_size=64,
             device='cpu', autocast=None, cond=None, guidance=None, desc=None, grid='uniform', guide=None,
             guide_t_min=0.0):
    """
    n texts (and their latents, un-normalised) from the denoiser, decoded by the autoencoder. For a
    conditional denoiser, cond holds the n normalised source latents (n, Nc, d), one text per source.
    desc: the label of a progress bar over the batches (common.progress); None shows none.
    guide (with guidance=w): autoguidance by that weaker model, at t >= guide_t_min (diffusion.sample).
    """
    texts, latents = [], []
    generator = torch.Generator(device).manual_seed(seed)
    shape = (ae.args['n_latents'], ae.args['dim'])
    for i in common.progress(range(0, n, batch_size), desc=desc, unit='batch', disable=desc is None):
        b = min(batch_size, n - i)
        c = None if cond is None else cond[i:i + b].to(device)
        z = sample(denoiser, (b, *shape), steps, schedule_d, t_min, sampler, cond=c, guidance=guidance,
                   generator=generator, device=device, autocast=autocast, grid=grid, guide=guide,
                   guide_t_min=guide_t_min)
        z = ae.denormalize_z(z)                                               # back to the autoencoder's space
        with autocast or nullcontext():                                       # decompressor + token head in bf16 on GPU
            texts += ae.decode(z)[1]
        latents.append(z.cpu())
    return texts, (torch.cat(latents) if latents else torch.empty(0, *shape))
