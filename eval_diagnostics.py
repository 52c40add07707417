"""
evaluate.py --mode=diagnostics: the latent-space diagnostics of the paper's Sec. 5 (Figs. 2-5, Table 1, and
sampling steps vs quality), each written as JSON and a PNG. Each diag_* returns a dict of plain values.
"""
import os
import time
from contextlib import nullcontext

import numpy as np
import torch

import common
from autoencoder import load_autoencoder
from corpus import is_valid_story
from diffusion import GRIDS, SAMPLERS, q_sample, sample
from eval_common import as_seen as _as_seen
from eval_common import check_model, floats, refuse_conditional, run_of, sampled_texts, texts_of, write_json
from metrics import bleu, diversity, load_causal_lm, perplexity, sentence_bleu
from pipeline import autoguide, load_pipeline

DIAGS = ('reconstruction', 'decoder_robustness', 'smoothness', 'diffusion_robustness', 'mismatch', 'steps')
AE_ONLY = DIAGS[:2]              # the first two need only an autoencoder

# The perturbations (eps, xi) come from seeded CPU generators and move to the device afterwards, so a GPU run
# perturbs with the same numbers as a CPU run; the sampler's own noise is drawn as pipeline.generate draws it.


def randn_like(x, seed):
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)


def encode_texts(ae, texts, batch_size, normalize, ctx=None):
    """Latents of `texts` in batches, the encoder under the autocast context `ctx` (bf16 on GPU); fp32 out."""
    with ctx or nullcontext():
        return torch.cat([ae.encode(list(texts[i:i + batch_size]), normalize=normalize).float()
                          for i in range(0, len(texts), batch_size)])


def decode_latents(ae, z, batch_size, normalized):
    """ae.decode in batches (a whole sweep at once would hold B x L x vocab logits): (ids on the CPU, texts)."""
    out = [ae.decode(zb, normalized=normalized) for zb in z.split(batch_size)]
    return torch.cat([ids.cpu() for ids, _ in out]), [t for _, texts in out for t in texts]


def as_seen(ae, texts):
    """The texts as the autoencoder sees them (tokenized, cut to L, detokenized): what a perfect decoder writes."""
    return list(_as_seen(ae.encoder, texts, ae.args['max_len']))


@torch.no_grad()
def diag_reconstruction(ae, texts, batch_size=64, quality=None, quality_name='none'):
    """Fig. 2's quantity: token accuracy of argmax(logits(decompress(encode(w)))) against the tokenized w
    over real tokens ([CLS] ... [SEP]), the exact-match rate (every real token right), and accuracy by position.
    With `quality` (texts -> number), also the quality of the reconstructed texts: the ceiling of what a
    generator decoded by this autoencoder can reach (on the story corpus, the share of valid stories)."""
    hits, real, exact, decoded = 0, 0, 0, []
    by_pos_hits, by_pos_real = torch.zeros(ae.args['max_len']), torch.zeros(ae.args['max_len'])
    for i in range(0, len(texts), batch_size):
        ids, mask, _ = ae.encoder.tokenize(list(texts[i:i + batch_size]), ae.args['max_len'])
        z = ae.encode(ids=ids, mask=mask)
        ids_hat = ae.token_ids(ae.decompress(z)).cpu()
        decoded += ae.encoder.decode(ids_hat) if quality else []
        hit = (ids_hat == ids) & mask
        hits, real = hits + hit.sum().item(), real + mask.sum().item()
        exact += (hit | ~mask).all(1).sum().item()
        by_pos_hits, by_pos_real = by_pos_hits + hit.sum(0), by_pos_real + mask.sum(0)
    by_pos = (by_pos_hits / by_pos_real.clamp_min(1))[by_pos_real > 0]
    r = dict(token_acc=hits / real, exact_match=exact / len(texts), acc_by_position=by_pos.tolist(),
             n_texts=len(texts), n_latents=ae.args['n_latents'], max_len=ae.args['max_len'])
    return dict(r, quality=quality(decoded), quality_name=quality_name) if quality else r


@torch.no_grad()
def diag_smoothness(denoiser, ae, texts, schedule_d, score, scorer, mus, ts, batch_size=64, seed=0, ctx=None):
    """Fig. 3: pairs (texts[:n], texts[n:2n]) -> normalised latents z1, z2 -> z_mu = mu z1 + (1 - mu) z2
    -> z_t = q_sample(z_mu, t) -> x0_hat = denoiser(z_t, t, sc = 0) -> text -> score(texts, endpoint pairs).
    One noise draw serves every t and mu, so the curves differ only by the noise level and the mix.
    'decoded directly' is the interpolation decoded with no noise and no denoiser (the autoencoder alone)."""
    n = len(texts) // 2
    ends = list(zip(as_seen(ae, texts[:n]), as_seen(ae, texts[n:2 * n])))
    z = encode_texts(ae, texts[:2 * n], batch_size, normalize=True, ctx=ctx)
    mu = torch.tensor(mus, device=z.device)[:, None, None, None]
    z_mu = (mu * z[None, :n] + (1 - mu) * z[None, n:]).flatten(0, 1)            # (len(mus) * n, N, d)
    eps = randn_like(z_mu, seed)

    def curve(z0_hat):  # score each mu's n decoded texts against their endpoints
        out = decode_latents(ae, z0_hat, batch_size, normalized=True)[1]
        return [score(out[k * n:(k + 1) * n], ends) for k in range(len(mus))]

    curves = {'decoded directly': curve(z_mu)}
    for t in ts:
        tt = torch.full((len(z_mu),), float(t), device=z.device)
        z_t = q_sample(z_mu, tt, eps, schedule_d)
        with ctx or nullcontext():  # the x0 estimate with no self-conditioning estimate (sc = 0), in batches
            x0 = torch.cat([denoiser(zc, tc, torch.zeros_like(zc)).float()
                            for zc, tc in zip(z_t.split(batch_size), tt.split(batch_size))])
        curves[f't={t:g}'] = curve(x0)
    return dict(mu=list(mus), t=list(ts), scorer=scorer, curves=curves, n_pairs=n,
                space='normalised latents (z - mu_z) / sigma_z, the diffusion space')


@torch.no_grad()
def diag_decoder_robustness(ae, texts, sigmas, batch_size=64, seed=0):
    """Fig. 4: corpus BLEU (sacrebleu, 0-100) of decode(z + sigma * eps) against the text, as sigma grows. The
    paper writes z + sigma eps in the autoencoder's own, *unnormalised* latent space, and so do we. Its scale:
    the compressor ends in a LayerNorm, so each latent vector has zero mean and unit variance over its d
    features before the LN's learned gain and bias: sigma = 1 is noise about as large as the signal. z_std
    reports the measured spread. The reference is the text as the autoencoder sees it (cut to L), so a
    perfect decoder scores 100."""
    refs = as_seen(ae, texts)
    z = encode_texts(ae, texts, batch_size, normalize=False)                 # (B, N, d) unnormalised
    eps = randn_like(z, seed)
    scores = [bleu(decode_latents(ae, z + s * eps, batch_size, normalized=False)[1], refs)[0] for s in sigmas]
    return dict(sigma=list(sigmas), bleu=scores, z_std=z.std().item(), n_texts=len(texts),
                space='unnormalised latents (the compressor output)')


def sample_with_injection(denoiser, shape, steps, d, t_min, sampler='ddim', seed=0, inject_step=-1, gamma=0.0,
                          device='cpu', ctx=None):
    """diffusion.sample seeded as pipeline.generate seeds it, with z_t += gamma * xi before step
    `inject_step`; xi comes from its own generator, so the sampler's noise stream is unchanged and two runs
    differ only by the injection (gamma = 0 reproduces the plain run exactly, a test checks)."""
    xi = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    return sample(denoiser, shape, steps, d, t_min, sampler, generator=torch.Generator(device).manual_seed(seed),
                  device=device, autocast=ctx, perturb=lambda i, z: z + gamma * xi if i == inject_step else z)


@torch.no_grad()
def diag_diffusion_robustness(denoiser, ae, n, steps, d, t_min, gammas, inject_at=0.75, sampler='ddim', seed=0,
                              batch_size=64, device='cpu', ctx=None):
    """Fig. 5: inject gamma * xi into z_t after a share `inject_at` of the steps (the paper picks a late step,
    in the second half, where the latent already means something), finish sampling, and report the MSE of
    the final x0 estimate from the uninjected run with the same seed (normalised space), plus the share of
    samples whose decoded text did not change."""
    shape, k = (n, ae.args['n_latents'], ae.args['dim']), int(inject_at * steps)
    clean = sample_with_injection(denoiser, shape, steps, d, t_min, sampler, seed, device=device, ctx=ctx)
    clean_texts = decode_latents(ae, clean, batch_size, normalized=True)[1]
    mse, same = [], []
    for g in gammas:
        shifted = sample_with_injection(denoiser, shape, steps, d, t_min, sampler, seed, k, g, device, ctx)
        texts = decode_latents(ae, shifted, batch_size, normalized=True)[1]
        mse.append(((shifted - clean) ** 2).mean().item())
        same.append(float(np.mean([a == b for a, b in zip(texts, clean_texts)])))
    return dict(gamma=list(gammas), mse=mse, same_text=same, inject_step=k, steps=steps, sampler=sampler,
                n_samples=n, space='normalised latents (the diffusion space)')


@torch.no_grad()
def reencode(ae, ids, batch_size):
    """E(D(z)) from decoded ids: everything after a row's first [SEP] becomes padding (as the decoder's text
    would be tokenized), then the frozen encoder + compressor, normalised. Ids, not text, so that no
    detokenize/retokenize round trip adds a mismatch of its own."""
    sep = ids == ae.encoder.sep_id
    after = (sep.long().cumsum(1) - sep.long()) > 0                          # (B, L) past the first [SEP]
    ids, mask = ids.masked_fill(after, ae.encoder.pad_id), ~after
    return torch.cat([ae.encode(ids=i, mask=m, normalize=True)
                      for i, m in zip(ids.split(batch_size), mask.split(batch_size))])


def mismatch(ae, z_hat, batch_size):
    """Table 1: MSE(z_hat, E(D(z_hat))) in the normalised latent space (where each feature has unit variance
    over real texts: two independent draws would give 2.0)."""
    ids, _ = decode_latents(ae, z_hat, batch_size, normalized=True)
    return ((z_hat - reencode(ae, ids, batch_size)) ** 2).mean().item()


@torch.no_grad()
def diag_mismatch(denoiser, ae, texts, n, steps, d, t_min, sampler='ddim', seed=0, batch_size=64, device='cpu',
                  ctx=None):
    """Table 1 for generated latents (the paper's quantity), and for real texts' latents as a floor: the
    autoencoder's own round trip, with no diffusion error in it."""
    z_hat = sample(denoiser, (n, ae.args['n_latents'], ae.args['dim']), steps, d, t_min, sampler,
                   generator=torch.Generator(device).manual_seed(seed), device=device, autocast=ctx)
    return dict(mse_generated=mismatch(ae, z_hat, batch_size),
                mse_real=mismatch(ae, encode_texts(ae, texts, batch_size, normalize=True, ctx=ctx), batch_size),
                n_samples=n, steps=steps, sampler=sampler, space='normalised latents (z - mu_z) / sigma_z')


@torch.no_grad()
def encoder_features(ae, texts, batch_size, ctx=None):
    """MAUVE's features from the autoencoder's own frozen encoder: its last hidden states mean-pooled over real
    tokens, (n, d) float32 (metrics.encoder_features does the same from a model name)."""
    feats = []
    for i in range(0, len(texts), batch_size):
        ids, mask, _ = ae.encoder.tokenize(texts[i:i + batch_size], ae.args['max_len'])
        ids, mask = ids.to(ae.encoder.device), mask.to(ae.encoder.device)
        with ctx or nullcontext():
            h = ae.encoder(ids, mask).float()
        m = mask[..., None].float()
        feats.append(((h * m).sum(1) / m.sum(1).clamp_min(1)).cpu())
    return torch.cat(feats).numpy()


def parse_series(spec):
    """'ddim,dpm2m@logsnr' -> [('ddim', 'uniform'), ('dpm2m', 'logsnr')]; a sampler alone runs on the uniform grid."""
    out = []
    for item in spec.split(','):
        sampler, _, grid = item.strip().partition('@')
        if sampler not in SAMPLERS or (grid or 'uniform') not in GRIDS:
            common.die(f"steps_samplers: '{item}' is not SAMPLER or SAMPLER@GRID (samplers {', '.join(SAMPLERS)}; "
                       f"grids {', '.join(GRIDS)})")
        out.append((sampler, grid or 'uniform'))
    return out


@torch.no_grad()
def diag_steps(denoiser, ae, n, steps_grid, d, t_min, quality=None, quality_name='', seed=0, batch_size=64,
               device='cpu', ctx=None, series=None, seeds=1, refs=None, guide=None, guidance=1.0, guide_t_min=0.0):
    """
    Steps vs quality, for each (sampler, grid) of `series` (default: every sampler on the uniform grid), over
    `seeds` sampling seeds (seed, seed + 1, ...; n samples each): a quality score (valid stories or PPL, when
    there is one), MAUVE against `refs` (n held-out texts) on the autoencoder's own encoder features, Div, the
    train-inference mismatch, and the wall time of the sampling loop alone (decoding excluded; 'heun' makes
    2 * steps - 1 network passes, the others steps). Each quantity: the per-seed values, their mean and std.
    guide, guidance: autoguidance as sample.py applies it (diffusion.sample; each pass then costs two network
    calls; at t >= guide_t_min only); None / 1 = plain sampling.
    """
    guidance = guidance if guide is not None else 1.0
    import mauve
    series = series or [(s, 'uniform') for s in SAMPLERS]
    q_features = encoder_features(ae, refs, batch_size, ctx) if refs else None
    out = dict(steps=list(steps_grid), n_samples=n, seeds=list(range(seed, seed + seeds)), quality_name=quality_name,
               mauve_name=f"MAUVE (mauve-text, auto buckets, k-means seed 25) on mean-pooled {ae.encoder.name} "
                          f"features against {len(refs or [])} held-out texts (their tokenizer round trip)",
               series=[f'{s}@{g}' for s, g in series], autoguidance=guidance,
               **(dict(guide_t_min=guide_t_min) if guidance != 1 and guide_t_min > 0 else {}))
    keys = ('seconds', 'quality', 'mauve', 'div', 'mismatch')
    for sampler, grid in common.progress(series, desc='steps: samplers', unit='sampler'):
        per = {k: [[] for _ in steps_grid] for k in keys}                      # [step index][seed]
        for j, steps in enumerate(steps_grid):
            for s in range(seed, seed + seeds):
                t0 = time.time()
                z = sample(denoiser, (n, ae.args['n_latents'], ae.args['dim']), steps, d, t_min, sampler,
                           generator=torch.Generator(device).manual_seed(s), device=device, autocast=ctx, grid=grid,
                           guide=guide, guidance=guidance, guide_t_min=guide_t_min)
                z = z.cpu().to(device)  # .cpu() waits for the GPU, so the clock measures the work
                per['seconds'][j].append(time.time() - t0)
                texts = decode_latents(ae, z, batch_size, normalized=True)[1]
                per['quality'][j].append(quality(texts) if quality else float('nan'))
                per['mauve'][j].append(float(mauve.compute_mauve(
                    p_features=encoder_features(ae, texts, batch_size, ctx), q_features=q_features, seed=25,
                    device_id=-1, verbose=False).mauve) if q_features is not None else float('nan'))
                per['div'][j].append(diversity(texts))
                per['mismatch'][j].append(mismatch(ae, z, batch_size))
        rows = {}
        for k in keys:
            rows[k] = [float(np.mean(v)) for v in per[k]]
            rows[k + '_std'] = [float(np.std(v)) for v in per[k]]
            rows[k + '_per_seed'] = per[k]
        out[sampler if grid == 'uniform' else f'{sampler}@{grid}'] = rows
    return out


def plot(path, title, x, panels, xlabel, logx=False):
    """One PNG with a panel per y quantity and a line per series: panels = {ylabel: {label: ys}}."""
    import matplotlib
    matplotlib.use('Agg')  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels.items()):
        for label, ys in series.items():
            ax.plot(x, ys, marker='o', label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if logx:  # log axis, ticks at the measured points
            ax.set_xscale('log')
            ax.set_xticks(x, [f'{v:g}' for v in x], minor=False)
            ax.minorticks_off()
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_diagnostics(cfg, env):
    dev, bs, seed, n = env['device'], cfg['batch_size'], cfg['seed'], cfg['diag_n']
    ctx = common.autocast(env['device_type'], cfg['dtype'])
    unknown = [name for name in cfg['diags'].split(',') if name not in DIAGS + ('all',)]
    if unknown:
        common.die(f"unknown diagnostic '{unknown[0]}' (known: {', '.join(DIAGS)})")
    series = parse_series(cfg['steps_samplers'])                              # a typo fails before any work
    denoiser = None
    if cfg['ckpt']:
        denoiser, ae, ckpt = load_pipeline(cfg['ckpt'], cfg['ae_ckpt'], dev, cfg['use_ema'])
        refuse_conditional(denoiser, cfg['ckpt'])
        d, t_min = ckpt['diffusion_args']['schedule_d'], ckpt['diffusion_args']['t_min']
    elif cfg['ae_ckpt']:
        ckpt = common.load_checkpoint(cfg['ae_ckpt'], 'autoencoder')
        ae = load_autoencoder(ckpt, dev)
    else:
        common.die("mode=diagnostics needs ckpt=PATH (a diffusion checkpoint) or ae_ckpt=PATH (autoencoder only)")
    names = cfg['diags'].split(',') if cfg['diags'] != 'all' else DIAGS if denoiser is not None else AE_ONLY
    for name in names:
        if denoiser is None and name not in AE_ONLY:
            common.die(f"diagnostic '{name}' needs a diffusion checkpoint: pass ckpt=PATH")
    path = cfg['ckpt'] or cfg['ae_ckpt']
    out_dir = cfg['out'] or os.path.join(os.path.dirname(os.path.abspath(path)), 'diagnostics')
    run = run_of(ckpt)
    held_out, _ = texts_of(cfg['refs'], 'validation', cfg, run, n)
    held_out = held_out[:n]
    # what decoded texts are scored with: PPL if a scorer LM is given (the paper), else the exact story checker
    # on the story corpus, else nothing (steps) / the BLEU to the nearer endpoint (smoothness)
    quality, quality_name = None, 'none'
    if cfg['ppl_model'] and {'smoothness', 'steps'} & set(names):  # reconstruction alone does not load an LM
        check_model(cfg['ppl_model'], 'ppl_model')
        lm = load_causal_lm(cfg['ppl_model'], dev)
        quality, quality_name = (lambda t: perplexity(t, *lm, batch_size=bs, device=dev)['mean']), \
            f"PPL under {cfg['ppl_model']}, mean over texts (lower = more fluent)"
    elif 'stories' in (run['data'], cfg['refs']):
        quality, quality_name = (lambda t: float(np.mean([is_valid_story(x) for x in t]))), \
            'share of valid stories (corpus.is_valid_story)'
    made = dict(ckpt=path, step=ckpt['step'], seed=seed, ema=cfg['use_ema'])
    for name in common.progress(names, desc='diagnostics', unit='diagnostic'):
        t0, logx = time.time(), False
        if name == 'reconstruction':
            r = diag_reconstruction(ae, held_out, bs, quality, quality_name)
            x, xlabel = list(range(len(r['acc_by_position']))), 'token position'
            panels = {'token accuracy': {'held-out texts': r['acc_by_position']}}
            line = f"token acc {r['token_acc']:.4f}, exact match {r['exact_match']:.4f}" + (
                f", reconstructions: {r['quality']:.4f} {quality_name}" if quality else '')
        elif name == 'decoder_robustness':
            r = diag_decoder_robustness(ae, held_out, floats(cfg, 'sigmas'), bs, seed)
            x, xlabel, panels = r['sigma'], 'sigma (unnormalised latent space)', {'BLEU': {'': r['bleu']}}
            line = 'BLEU ' + ', '.join(f"{b:.1f}@{s:g}" for s, b in zip(r['sigma'], r['bleu']))
        elif name == 'smoothness':
            # endpoints from the training texts, as in the paper (Sec. 5.1: "two random texts from the training
            # corpus"): at mu = 0 and 1 the latents are ones both models were trained on
            pairs = sampled_texts(cfg['train_data'], 'train', cfg, run, lambda N: min(N, n) // 2 * 2, seed,
                                  cfg['mem_rows'])                              # only the rows drawn are read
            score = (lambda t, ends: quality(t)) if quality else (lambda t, ends: float(np.mean(
                [max(sentence_bleu(x, a), sentence_bleu(x, b)) for x, (a, b) in zip(t, ends)])))
            scorer = quality_name if quality else 'mean sentence-BLEU to the nearer endpoint (the larger of the two)'
            mus = np.linspace(0, 1, cfg['interp_points']).tolist()
            r = diag_smoothness(denoiser, ae, pairs, d, score, scorer, mus, floats(cfg, 'smooth_t'), bs, seed, ctx)
            x, xlabel, panels = mus, 'mu (z = mu z1 + (1 - mu) z2)', {scorer.split(' (')[0]: r['curves']}
            line = ', '.join(f"{k} {np.nanmean(v):.3f}" for k, v in r['curves'].items()) + f" ({scorer}, mean over mu)"
        elif name == 'diffusion_robustness':
            r = diag_diffusion_robustness(denoiser, ae, n, cfg['steps'], d, t_min, floats(cfg, 'gammas'),
                                          cfg['inject_at'], cfg['sampler'], seed, bs, dev, ctx)
            x, xlabel = r['gamma'], f"gamma (injected after step {r['inject_step']} of {cfg['steps']})"
            panels = {'MSE of the final x0': {cfg['sampler']: r['mse']}, 'same text': {cfg['sampler']: r['same_text']}}
            line = 'MSE ' + ', '.join(f"{m:.4f}@{g:g}" for g, m in zip(r['gamma'], r['mse']))
        elif name == 'mismatch':
            r = diag_mismatch(denoiser, ae, held_out, n, cfg['steps'], d, t_min, cfg['sampler'], seed, bs, dev, ctx)
            x, xlabel = [0, 1], 'real texts (0), generated (1)'
            panels = {'MSE(z, E(D(z)))': {'': [r['mse_real'], r['mse_generated']]}}
            line = f"MSE(z_hat, E(D(z_hat))) {r['mse_generated']:.4f} generated, {r['mse_real']:.4f} real texts"
        else:  # steps
            x = [int(s) for s in floats(cfg, 'steps_grid')]
            refs = as_seen(ae, held_out)                                      # what a perfect decoder writes
            # the sampler as sample.py runs it: autoguidance w when the checkpoint keeps a guide
            guide, w = autoguide(ckpt, cfg['autoguidance'], 0, device=dev)  # no steps note: the sweep is the point
            r = diag_steps(denoiser, ae, n, x, d, t_min, quality, quality_name, seed, bs, dev, ctx, series,
                           cfg['steps_seeds'], refs, guide, w, cfg['guide_t_min'])
            xlabel = f"sampling steps (mean over {cfg['steps_seeds']} seeds" + (
                f", autoguidance w = {w:g})" if w != 1 else ')')
            logx = True
            labels = [s if g == 'uniform' else f'{s}@{g}' for s, g in series]
            panels = {label: {s: r[s][k] for s in labels} for k, label in (
                ('quality', quality_name.split(' (')[0]), ('mauve', 'MAUVE (encoder features)'), ('div', 'Div'),
                ('mismatch', 'mismatch MSE'), ('seconds', 'seconds (sampling)')) if quality or k != 'quality'}
            line = ', '.join(f"{s} {r[s]['quality'][-1]:.3f}" for s in labels) + f" {quality_name.split(' (')[0]} at {x[-1]} steps"
        r.update(made=made, seconds=time.time() - t0)
        write_json(os.path.join(out_dir, f'{name}.json'), r)
        plot(os.path.join(out_dir, f'{name}.png'), f"{name}: {path} (step {ckpt['step']})", x, panels, xlabel, logx)
        print(f"{name:<21} {line}  [{r['seconds']:.1f}s]")
    print(f"wrote {len(names)} diagnostics (JSON + PNG) to {out_dir}")
    return out_dir
