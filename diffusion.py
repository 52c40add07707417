"""
Gaussian diffusion in the normalised latent space (paper Sec. 6 and App. C), x0-parametrised, with
TEncDM's tan schedule, per-example self-conditioning, EMA, and a hand-written sampler:

    alpha(t)  = 1 / (1 + d^2 tan^2(pi t / 2))                 noise schedule, d = schedule_d   (alpha_bar)
    z_t       = sqrt(alpha(t)) z_0 + sqrt(1 - alpha(t)) eps    forward process                 (q_sample)
    loss      = || z_0 - z_theta(z_t, t, sc) ||^2              t ~ U(t_min, 1)                 (diffusion_loss)
    eps_hat   = (z_t - sqrt(alpha_t) z0_hat) / sqrt(1 - alpha_t)                               (sample)
    DDIM      z_s = sqrt(alpha_s) z0_hat + sqrt(1 - alpha_s) eps_hat  (probability-flow ODE step)
    ancestral z_s ~ q(z_s | z_t, z0_hat)                                (reverse-SDE step)

Time, the schedule and the sampler's state stay in float32; only the network runs under autocast.
"""
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F


def alpha_bar(t, d):
    """TEncDM's schedule: alpha(0) = 1, alpha(1) = 0, decreasing; a larger d adds noise sooner."""
    return 1.0 / (1.0 + (d * torch.tan(0.5 * math.pi * t.double())) ** 2).float()


def q_sample(z0, t, eps, d):
    """z_t = sqrt(alpha_t) z0 + sqrt(1 - alpha_t) eps, for per-example t (B,)."""
    a = alpha_bar(t, d)[:, None, None]
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def diffusion_loss(model, z0, d, t_min, self_cond_prob=0.5, cond=None, cond_mask=None):
    """
    The x0-prediction loss on a batch of normalised latents z0 (B, N, d). Self-conditioning is decided
    per example (the predecessor chose once per batch): for a share self_cond_prob of the examples, a
    first pass without grad and with sc = 0 gives an estimate that the second pass reads (detached);
    the others read sc = 0. The first pass runs on the whole batch, which keeps shapes static for
    torch.compile; its outputs for the sc = 0 examples are simply not used.
    Latents have no padding, so the MSE runs over every position.
    """
    B = z0.shape[0]
    t = t_min + (1 - t_min) * torch.rand(B, device=z0.device)
    z_t = q_sample(z0, t, torch.randn_like(z0), d)
    sc = torch.zeros_like(z0)
    if self_cond_prob > 0:
        with torch.no_grad():
            first = model(z_t, t, sc, cond, cond_mask).float()
        use = (torch.rand(B, device=z0.device) < self_cond_prob)[:, None, None]
        sc = torch.where(use, first, sc)
    x0_hat = model(z_t, t, sc, cond, cond_mask)
    return F.mse_loss(x0_hat.float(), z0)


@torch.no_grad()
def ema_update(ema_model, model, decay):
    """ema <- decay * ema + (1 - decay) * model, parameters and buffers alike."""
    for e, p in zip(ema_model.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


@torch.no_grad()
def sample(model, shape, steps, d, t_min, sampler='ddim', cond=None, cond_mask=None, generator=None,
           device='cpu', autocast=None):
    """
    Generate normalised latents of `shape` (B, N, d) with `steps` uniform Euler steps from t = 1 down to
    t_min, starting from N(0, I) and carrying the self-conditioning estimate from step to step.
    Returns the final x0 estimate, not the last noisy state (decoding the noisy state was a predecessor
    mistake). `model(z_t, t, sc, cond, cond_mask)` may be any x0-predictor (the tests pass the exact
    one for Gaussian data).

    sampler='ddim': the deterministic probability-flow step z_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps_hat.
    sampler='ancestral': the stochastic reverse-SDE step, taken in its exact-Gaussian (DDPM posterior)
    form z_s ~ q(z_s | z_t, x0_hat). Our choice over TEncDM's Euler-Maruyama step: the two agree to first
    order in the step size, but Euler-Maruyama multiplies by beta(t) = -d log alpha / dt, which is
    infinite at t = 1 for this schedule, so its first step is undefined; the posterior form is not.
    """
    if sampler not in ('ddim', 'ancestral'):
        raise ValueError(f"unknown sampler '{sampler}' (use 'ddim' or 'ancestral')")
    ctx = autocast or nullcontext()
    z = torch.randn(shape, generator=generator, device=device)
    x0 = torch.zeros(shape, device=device)
    ts = torch.linspace(1.0, t_min, steps + 1, device=device)
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        with ctx:
            x0 = model(z, t.expand(shape[0]), x0, cond, cond_mask).float()
        a_t, a_s = alpha_bar(t, d), alpha_bar(s, d)
        eps = (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        if sampler == 'ddim':
            z = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
        else:
            # posterior q(z_s | z_t, x0): variance (1 - a_s)/(1 - a_t) * (1 - a_t/a_s); the rest of the
            # noise budget keeps the direction of eps_hat (DDIM with eta = 1 is the same step)
            var = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
            noise = torch.randn(shape, generator=generator, device=device)
            z = a_s.sqrt() * x0 + (1 - a_s - var).clamp_min(0).sqrt() * eps + var.sqrt() * noise
    return x0


# -----------------------------------------------------------------------------
# loading a trained pipeline and generating text (used by sample.py and evaluate.py)


def load_pipeline(ckpt_path, ae_ckpt='', device='cpu', use_ema=True):
    """
    The denoiser (EMA weights by default) and the autoencoder it was trained on, rebuilt from what the
    checkpoints say. The autoencoder is found at the path the diffusion checkpoint recorded, or at
    `ae_ckpt`, and must carry the fingerprint recorded at training time: a different autoencoder
    (another run, or the same run retrained) would decode the latents into nonsense.
    """
    from autoencoder import load_autoencoder
    from common import die, load_checkpoint, load_state
    from model import Denoiser
    ckpt = load_checkpoint(ckpt_path, 'diffusion')
    ae_path = ae_ckpt or ckpt['autoencoder']['path']
    ae = load_autoencoder(load_checkpoint(ae_path, 'autoencoder'), device)
    if ae.fingerprint() != ckpt['autoencoder']['fingerprint']:
        die(f"autoencoder '{ae_path}' (fingerprint {ae.fingerprint()}) is not the one diffusion checkpoint "
            f"'{ckpt_path}' was trained on (fingerprint {ckpt['autoencoder']['fingerprint']})")
    denoiser = Denoiser(**ckpt['model_args'])
    load_state(denoiser, ckpt['ema' if use_ema else 'model'], ckpt_path)
    return denoiser.to(device).eval(), ae, ckpt


@torch.no_grad()
def generate(denoiser, ae, n, steps, schedule_d, t_min, sampler='ddim', seed=0, batch_size=64,
             device='cpu', autocast=None):
    """n texts (and their latents, un-normalised) from the denoiser, decoded by the autoencoder."""
    texts, latents = [], []
    generator = torch.Generator(device).manual_seed(seed)
    shape = (ae.args['n_latents'], ae.args['dim'])
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        z = sample(denoiser, (b, *shape), steps, schedule_d, t_min, sampler, generator=generator,
                   device=device, autocast=autocast)
        z = ae.denormalize_z(z)                                               # back to the autoencoder's space
        texts += ae.decode(z)[1]
        latents.append(z.cpu())
    return texts, torch.cat(latents)
