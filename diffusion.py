"""
Gaussian diffusion in the normalised latent space (paper Sec. 6 and App. C), x0-parametrised, with
TEncDM's tan schedule, per-example self-conditioning, EMA, and a hand-written sampler:

    alpha(t)  = 1 / (1 + d^2 tan^2(pi t / 2))                 noise schedule, d = schedule_d   (alpha_bar)
    z_t       = sqrt(alpha(t)) z_0 + sqrt(1 - alpha(t)) eps    forward process                 (q_sample)
    loss      = || z_0 - z_theta(z_t, t, sc) ||^2              t ~ U(t_min, 1)                 (diffusion_loss)
    eps_hat   = (z_t - sqrt(alpha_t) z0_hat) / sqrt(1 - alpha_t)                               (sample)
    DDIM      z_s = sqrt(alpha_s) z0_hat + sqrt(1 - alpha_s) eps_hat  (probability-flow ODE step)
    ancestral z_s ~ q(z_s | z_t, z0_hat)                                (reverse-SDE step)
    DPM++(2M) z_s = (sigma_s / sigma_t) z_t + sqrt(alpha_s) (1 - e^-h) D,  D = x0_hat + (x0_hat - x0_prev) / (2r)
    guidance  x0_hat = x0_hat + (w - 1)(x0_hat - x0_other): other = the null source (classifier-free, conditional)
              or a weaker guide model (autoguidance, unconditional; ours)

Long text (Cola DLM): block_loss, the same x0 loss on every block of a window with its own t, and
sample_blocks, block by block with `sample` against a KV cache of the committed blocks.

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


def diffusion_loss(model, z0, d, t_min, self_cond_prob=0.5, cond=None, cond_drop_prob=0.0):
    """
    The x0-prediction loss on a batch of normalised latents z0 (B, N, d). Self-conditioning is decided
    per example (the predecessor chose once per batch): for a share self_cond_prob of the examples, a
    first pass without grad and with sc = 0 gives an estimate that the second pass reads (detached);
    the others read sc = 0. The first pass runs on the whole batch, which keeps shapes static for
    torch.compile; its outputs for the sc = 0 examples are simply not used.
    Conditional models get the source latent `cond`; a share cond_drop_prob of the examples sees the
    null source instead, which trains the unconditional half of classifier-free guidance.
    Latents have no padding, so the MSE runs over every position.
    """
    B = z0.shape[0]
    t = t_min + (1 - t_min) * torch.rand(B, device=z0.device)
    z_t = q_sample(z0, t, torch.randn_like(z0), d)
    # a conditional model always gets a drop mask, all False when cond_drop_prob = 0: the null source then
    # stays in the graph with a zero gradient, which DDP needs (an unused parameter stops its reduction)
    drop = None if cond is None else torch.rand(B, device=z0.device) < cond_drop_prob
    sc = torch.zeros_like(z0)
    if self_cond_prob > 0:
        with torch.no_grad():
            first = model(z_t, t, sc, cond, drop).float()
        use = (torch.rand(B, device=z0.device) < self_cond_prob)[:, None, None]
        sc = torch.where(use, first, sc)
    x0_hat = model(z_t, t, sc, cond, drop)
    return F.mse_loss(x0_hat.float(), z0)


@torch.no_grad()
def ema_update(ema_model, model, decay):
    """ema <- decay * ema + (1 - decay) * model, parameters and buffers alike (one fused multi-tensor op)."""
    torch._foreach_lerp_(list(ema_model.parameters()), [p.detach() for p in model.parameters()], 1 - decay)
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


# -----------------------------------------------------------------------------
# block diffusion for long text (model.BlockDenoiser): a document is a sequence of K blocks (K, N, d),
# each the normalised latent of one autoencoder chunk; a marker block E separates documents.


def end_marker(n_latents, dim):
    """
    The marker block E (N, d) that starts and ends every document: a fixed +-2 pattern from a fixed seed,
    not the latent of any text. The empty text's own latent would not do: the autoencoder never saw an
    empty text, so it decodes to an ordinary story and lies among real chunks. E lies within the range
    of normalised latents (they are O(1), |z| up to ~4) but far from every chunk (on the tiny story
    autoencoder, when this was designed: mean squared distance >= 4.7 to each of 512 real chunks, ~2 between
    real chunks), so is_end_block's threshold of 2 finds it.
    """
    g = torch.Generator().manual_seed(20261126)
    return 2.0 * torch.sign(torch.randn(n_latents, dim, generator=g))


def is_end_block(z, marker):
    """(B,) True where the block z (B, N, d) is the end marker: mean squared distance to E below 2."""
    return ((z.float() - marker.to(z.device)) ** 2).mean(dim=(1, 2)) < 2.0


def block_loss(model, z0, d, t_min, self_cond_prob=0.5, drop_prob=0.1):
    """
    The x0 loss of a block model on windows z0 (B, K, N, c) of K consecutive clean blocks: every block is
    noised with its own t (BD3-LM; the noisy blocks never see each other, so K draws per window are one
    pass), self-conditioning is decided per block, and a share drop_prob of the blocks loses its view of
    the clean prefix (classifier-free guidance through the mask). Marker blocks are in the loss: they
    teach the model where documents end and begin.
    """
    B, K = z0.shape[:2]
    t = t_min + (1 - t_min) * torch.rand(B, K, device=z0.device)
    z_t = q_sample(z0.flatten(0, 1), t.flatten(), torch.randn_like(z0).flatten(0, 1), d).view_as(z0)
    drop = torch.rand(B, K, device=z0.device) < drop_prob if drop_prob > 0 else None
    sc = torch.zeros_like(z0)
    if self_cond_prob > 0:
        with torch.no_grad():
            first = model(z0, z_t, t, sc, drop).float()
        use = (torch.rand(B, K, device=z0.device) < self_cond_prob)[:, :, None, None]
        sc = torch.where(use, first, sc)
    x0_hat = model(z0, z_t, t, sc, drop)
    return F.mse_loss(x0_hat.float(), z0)


@torch.no_grad()
def sample_blocks(model, prompt, n_blocks, steps, d, t_min, sampler='ddim', guidance=None, commit=None,
                  generator=None, device='cpu', autocast=None, grid='uniform'):
    """
    Continue the n documents whose first m clean blocks are `prompt` (n, m, N, c) (E first for a document
    start; m >= 1) block by block up to n_blocks blocks in all, with diffusion.sample for each block.
    The committed blocks sit in a per-layer KV cache, so a block costs `steps` passes over N queries
    whatever its index. guidance=w: x0 = x0_c + (w - 1)(x0_c - x0_null), the null pass being the same
    block at the same index with no prefix (what block_loss's drop trains); w = 0 is the null model alone
    (the no-prefix baseline). Each new block is committed as commit(x0, k) (the script's decode +
    re-encode hook; None commits the x0 estimate itself). When the window is full (k = model.max_blocks)
    it slides: the last max_blocks // 2 blocks are prefilled again at indices 0.. (training windows start
    mid-document, so that state is in distribution).
    Generation stops once every document has produced the end marker. Returns the blocks (n, n_out, N, c),
    prompt included, and each document's length in blocks before its first generated end marker.
    """
    ctx = autocast or nullcontext()
    n, m, N, c = prompt.shape
    K = model.max_blocks
    marker = end_marker(N, c).to(device)
    blocks = [prompt[:, i].to(device).float() for i in range(m)]
    length = torch.full((n,), -1, dtype=torch.long, device=device)          # -1: no end marker yet
    zero_t, zero_sc = torch.zeros(n, device=device), torch.zeros(n, N, c, device=device)

    def prefill(window):
        caches = [dict() for _ in model.blocks]
        with ctx:
            for i, z in enumerate(window):
                model.step(z, zero_t, zero_sc, i, caches, store=True)      # clean rows: t = 0, no sc
        return caches

    start = max(0, m - K + 1)                                                # room for one more block
    caches = prefill(blocks[start:])
    for j in range(m, n_blocks):
        if j - start == K:                                                   # the window is full: slide
            start = j - K // 2
            caches = prefill(blocks[start:])
        k = j - start

        def net(z, t, sc, cond=None, cond_drop=None):
            with ctx:
                if guidance == 0:                                            # the null model alone: no prefix
                    return model.step(z, t, sc, k, None).float()
                x0_c = model.step(z, t, sc, k, caches).float()
                if guidance is None or guidance == 1:
                    return x0_c
                x0_u = model.step(z, t, sc, k, None).float()                  # null: no prefix, same index
            return x0_c + (guidance - 1) * (x0_c - x0_u)

        x0 = sample(net, (n, N, c), steps, d, t_min, sampler, generator=generator, device=device, grid=grid)
        ended = is_end_block(x0, marker)
        x0 = commit(x0, j) if commit is not None else x0
        x0 = torch.where(ended[:, None, None], marker, x0)                   # an end is committed exactly as E
        length = torch.where((length < 0) & ended, torch.full_like(length, j - m), length)
        blocks.append(x0)
        with ctx:
            model.step(x0, zero_t, zero_sc, k, caches, store=True)           # commit: the clean stream's rows
        if (length >= 0).all():
            break
    length = torch.where(length < 0, torch.full_like(length, len(blocks) - m), length)
    return torch.stack(blocks, dim=1), length


SAMPLERS = ('ddim', 'ancestral', 'heun', 'dpm2m')
GRIDS = ('uniform', 'logsnr')


def log_snr(t, d):
    """lambda(t) = log(alpha / (1 - alpha)) = -2 log(d tan(pi t / 2)) for the tan schedule (+inf at 0, -inf at 1)."""
    return -2.0 * torch.log(d * torch.tan(0.5 * math.pi * t.double()))


def time_grid(steps, t_min, d, grid='uniform', device='cpu'):
    """
    The steps + 1 times (float32, strictly decreasing) a sampler visits, from t = 1 to t_min.
    'uniform': uniform in t (the paper's "200 uniform steps").
    'logsnr': 1, then `steps` points uniform in the log-SNR lambda(t) from the uniform grid's second point
        down to t_min. lambda(1) = -inf, so the first interval cannot be uniform in lambda; starting the
        log-SNR part where the uniform grid's first step ends keeps that first (exact-in-the-limit, pure
        noise) step the same and spends the others evenly in lambda, which puts more of them at low noise.
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown time grid '{grid}' (use one of {', '.join(GRIDS)})")
    ts = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
    if grid == 'logsnr' and steps > 1:
        lam = torch.linspace(log_snr(ts[1], d).item(), log_snr(torch.tensor(t_min), d).item(), steps,
                             dtype=torch.float64)
        ts[1:] = torch.atan(torch.exp(-lam / 2) / d) * 2 / math.pi            # lambda^-1
        ts[-1] = t_min                                                         # exactly, whatever the rounding
    return ts.float().to(device)


@torch.no_grad()
def sample(model, shape, steps, d, t_min, sampler='ddim', cond=None, guidance=None, generator=None,
           device='cpu', autocast=None, perturb=None, grid='uniform', guide=None, guide_t_min=0.0):
    """
    Generate normalised latents of `shape` (B, N, d) with `steps` steps from t = 1 down to t_min on the
    time grid `grid` (time_grid), starting from N(0, I) and carrying the self-conditioning estimate from
    step to step. Returns the final x0 estimate of the last network pass, not the last noisy state (decoding
    the noisy state was a predecessor mistake); 'dpm2m' returns its final state over sqrt(alpha(t_min)),
    see below. `steps` network passes for 'ddim', 'ancestral' and 'dpm2m', 2 * steps - 1 for 'heun'.
    `model(z_t, t, sc, cond, cond_drop)` may be any x0-predictor (the tests pass the exact one for
    Gaussian data).

    sampler='ddim': the paper's Euler step on the probability-flow ODE, in DDIM form
        z_s = sqrt(a_s) x0_hat + sqrt(1 - a_s) eps_hat.
    sampler='ancestral': the stochastic reverse-SDE step, in its exact-Gaussian (DDPM posterior) form
        z_s ~ q(z_s | z_t, x0_hat). Our choice over TEncDM's Euler-Maruyama step: the two agree to first
        order in the step size, but Euler-Maruyama multiplies by beta(t) = -d log alpha / dt, which is
        infinite at t = 1 for this schedule, so its first step is undefined; the posterior form is not.
    sampler='heun': Heun's second-order method on the same ODE (2 * steps - 1 network passes). In the
        variables xbar = z / sqrt(a), sigma = sqrt((1 - a) / a) the DDIM step is exactly Euler,
        xbar_s = xbar_t + (sigma_s - sigma_t) eps_hat, and Heun averages eps_hat at both ends. The first
        step (sigma = inf at t = 1) stays Euler.
    sampler='dpm2m': DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2), the second-order multistep
        solver of the same ODE in the data (x0) parametrisation: one network pass per step, like 'ddim', and
        the previous step's x0_hat as the second point. With lambda = log(sqrt(a) / sigma) (half the log-SNR), h = lambda_s - lambda_t and
        r = h_prev / h, each step is exactly the exponential integrator of x0_hat extrapolated linearly in
        lambda, D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev:
            z_s = (sigma_s / sigma_t) z_t + sqrt(a_s) (1 - e^-h) D,   sigma = sqrt(1 - a).
        With D = x0_hat this is the DDIM step; the first step (h = inf), the second (r = inf) and the last
        (see below) are that step. The solver's answer is its final state, so it returns z_{t_min} /
        sqrt(a(t_min)) = x0_hat + e^-h (z_t / sqrt(a_t) - x0_hat), the last x0_hat up to the noise left at t_min.

    Conditional models: `cond` is the normalised source latent. guidance=None samples plainly
    conditionally; guidance=w runs the conditional and the null-source halves in one batched pass and
    uses x0 = x0_c + (w - 1) (x0_c - x0_uncond), so w = 1 is plain conditional (and skips the null half)
    and w > 1 pushes away from the unconditional prediction.

    Autoguidance (Karras et al. 2024, arXiv 2406.02507, "Guiding a diffusion model with a bad version of
    itself"): with a `guide`, a weaker x0-predictor of the same data (train_diff.py keeps the EMA weights of an
    early step, `guide_step`), guidance=w uses x0 = x0 + (w - 1) (x0 - x0_guide) instead of the null source:
    it pushes away from what the weaker model gets wrong. The guide reads the same state and self-conditioning
    estimate; w = 1 skips its pass. Our addition, not COSMOS's (README, "Quickstart"). guide_t_min > 0 applies
    it only at the steps with t >= guide_t_min and samples plainly below (no guide pass there): a guidance
    interval (Kynkaanniemi et al. 2024, arXiv 2404.07724), which keeps w from compounding over many small
    low-noise steps (README, "Few-step sampling").

    perturb(i, z) -> z, if given, may change the state before step i (evaluate.py injects noise mid-
    trajectory through it for the paper's Fig. 5); it draws no numbers from `generator`.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}' (use one of {', '.join(SAMPLERS)})")
    if guide is not None and cond is not None:
        raise ValueError("autoguidance (guide) is for unconditional models; a conditional one has its null source")
    ts = time_grid(steps, t_min, d, grid, device)
    ctx = autocast or nullcontext()
    B = shape[0]

    def denoise(z, t, sc):
        tb = t.expand(B).contiguous()  # the stride training uses: a stride-0 view would recompile a compiled model
        with ctx:
            if guidance is None or guidance == 1 or (cond is None and guide is None):  # w = 1: no second pass
                return model(z, tb, sc, cond).float()
            if guide is not None:                                            # autoguidance
                if guide_t_min > 0 and t < guide_t_min:                      # outside the interval: plainly
                    return model(z, tb, sc).float()
                x0_c, x0_u = model(z, tb, sc).float(), guide(z, tb, sc).float()
                return x0_c + (guidance - 1) * (x0_c - x0_u)
            drop = torch.arange(2 * B, device=device) >= B                   # second half: null source
            two = lambda x: torch.cat([x, x])
            x0_c, x0_u = model(two(z), two(tb), two(sc), two(cond), drop).float().chunk(2)
        return x0_c + (guidance - 1) * (x0_c - x0_u)

    z = torch.randn(shape, generator=generator, device=device)
    x0 = torch.zeros(shape, device=device)
    x0_prev, h_prev = None, None                                              # dpm2m's previous step
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        if perturb is not None:
            z = perturb(i, z)
        x0 = denoise(z, t, x0)
        a_t, a_s = alpha_bar(t, d), alpha_bar(s, d)
        if sampler == 'dpm2m':
            h = (0.5 * (log_snr(s, d) - log_snr(t, d))).float()               # in log(alpha/sigma): inf at t = 1
            D = x0
            # second order from the third step; the last step first order (Lu et al.'s "lower order final"):
            # on the uniform grid the last interval is far longer in lambda than the one before (r << 1), and
            # the extrapolation overshoots (Gaussian test: std 0.64-0.73 for 0.5 at 10-20 steps without it)
            if x0_prev is not None and torch.isfinite(h_prev) and i < steps - 1:
                r = h_prev / h
                D = x0 + (x0 - x0_prev) / (2 * r)
            z = ((1 - a_s) / (1 - a_t)).sqrt() * z + a_s.sqrt() * (-torch.expm1(-h)) * D
            x0_prev, h_prev = x0, h
            continue
        eps = (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        if sampler == 'ancestral':
            # posterior q(z_s | z_t, x0): variance (1 - a_s)/(1 - a_t) * (1 - a_t/a_s); the rest of the
            # noise budget keeps the direction of eps_hat (DDIM with eta = 1 is the same step)
            var = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
            noise = torch.randn(shape, generator=generator, device=device)
            z = a_s.sqrt() * x0 + (1 - a_s - var).clamp_min(0).sqrt() * eps + var.sqrt() * noise
            continue
        z_t, z = z, a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps                  # DDIM = Euler
        if sampler == 'heun' and i > 0:
            x0_s = denoise(z, s, x0)                                          # slope at the Euler end point
            eps_s = (z - a_s.sqrt() * x0_s) / (1 - a_s).sqrt()
            sigma_t, sigma_s = ((1 - a_t) / a_t).sqrt(), ((1 - a_s) / a_s).sqrt()
            xbar_s = z_t / a_t.sqrt() + (sigma_s - sigma_t) * 0.5 * (eps + eps_s)
            z, x0 = a_s.sqrt() * xbar_s, x0_s
    if sampler == 'dpm2m':
        return z / alpha_bar(ts[-1], d).sqrt()
    return x0
