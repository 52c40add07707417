"""
Generate text from a trained diffusion checkpoint (its EMA weights) and the autoencoder it was trained on.

    python sample.py --ckpt=out/tiny_diff/ckpt.pt                          # 8 texts to stdout
    python sample.py --ckpt=out/diff/ckpt.pt --num_samples=1000 --num_seeds=10 --out=samples.jsonl
    python sample.py --ckpt=out/tiny_cond/ckpt.pt --sources=pairs.jsonl --out=generations.jsonl --guidance=1.5
    echo "tom found a red ball in the park. he gave it to anna. anna was happy." | python sample.py --ckpt=out/tiny_cond/ckpt.pt --sources=-
    # round trip your own sentence through a trained autoencoder: encode, the latent's statistics, decode
    python sample.py --ae_ckpt=out/tiny_ae/ckpt.pt --roundtrip="tom found a red ball in the park."

--num_seeds=k draws num_samples texts for each of the seeds seed, seed+1, ..., seed+k-1 and writes each
row's seed, so that `python evaluate.py --samples=FILE` reports every metric as mean and std over seeds.
Everything about the models (sizes, schedule d, t_min, latent statistics) comes from the checkpoints,
never from flags typed again.
"""
import json
import sys
import time

import torch

import common
from autoencoder import load_autoencoder
from corpus import read_jsonl, read_lines
from diffusion import SAMPLERS
from pipeline import encode_texts, generate, load_pipeline

config = dict(
    ckpt='out/diff/ckpt.pt',     # diffusion checkpoint
    ae_ckpt='',                  # autoencoder checkpoint; '' = the path recorded in the diffusion checkpoint
    num_samples=8,               # texts per seed (unconditional models)
    num_seeds=1,                 # seeds seed .. seed + num_seeds - 1, each written with its rows
    steps=200,                   # Euler steps from t = 1 to t_min (the paper: 200)
    sampler='ddim',              # 'ddim' (Euler on the probability-flow ODE), 'ancestral' (reverse SDE), 'heun'
    seed=0,                      # the first seed
    batch_size=64,               # texts per sampler batch (and sources per encoder batch)
    out='',                      # also write JSONL: {"text", "seed", ...}; conditional: {"source", "target", "generation", ...}
    sources='',                  # conditional models: a .txt (one source a line), a .jsonl (source[, target]), or - for stdin
    guidance=1.0,                # classifier-free guidance weight w (1 = plain conditional; > 1 stronger)
    use_ema=True,                # sample from the EMA weights (the paper's choice)
    roundtrip='',                # a text (or - for stdin lines) to encode and decode with the autoencoder; no sampling
    device='auto',               # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1'
    dtype='bfloat16',            # autocast on GPU for the encoder and the denoiser
)


def read_sources(spec):
    """Sources for a conditional model: .jsonl rows with 'source' (and optionally 'target'), else lines."""
    if spec.endswith('.jsonl'):
        rows = [{k: row[k] for k in ('source', 'target') if k in row} for row in read_jsonl(spec, ['source'])]
    else:
        rows = [dict(source=line) for _, line in read_lines(spec)]
    if not rows:
        common.die(f"no sources in '{spec}'")
    return rows


@torch.no_grad()
def roundtrip(cfg, env):
    """text -> tokens -> latent z (N, d) -> decoded text, with the latent's statistics: what the latent keeps."""
    if cfg['ae_ckpt']:
        ae = load_autoencoder(common.load_checkpoint(cfg['ae_ckpt'], 'autoencoder'), env['device'])
    else:  # the autoencoder of a diffusion checkpoint
        ae = load_pipeline(cfg['ckpt'], '', env['device'])[1]
    texts = [line for _, line in read_lines('-')] if cfg['roundtrip'] == '-' else [cfg['roundtrip']]
    L, ctx = ae.args['max_len'], common.autocast(env['device_type'], cfg['dtype'])
    for text in texts:
        ids, mask, cut = ae.encoder.tokenize([text], L)
        with ctx:
            z = ae.encode(ids=ids, mask=mask).float()                          # (1, N, d) the compressor's output
        z_norm = ae.normalize_z(z)                                             # the diffusion space
        ids_hat, decoded = ae.decode(z)
        real = mask[0]
        acc = (ids_hat[0].cpu() == ids[0])[real].float().mean().item()
        print(f"input    {text}")
        print(f"tokens   {int(real.sum())} of L={L}" + (" (cut: longer than L)" if cut else ''))
        print(f"latent   z {tuple(z.shape[1:])} (N latent vectors of d features) | mean {z.mean():.4f} "
              f"std {z.std():.4f} min {z.min():.4f} max {z.max():.4f} | norm per vector "
              f"{z[0].norm(dim=-1).mean():.3f}")
        print(f"         normalised (z - mu_z) / sigma_z: mean {z_norm.mean():.4f} std {z_norm.std():.4f}")
        print(f"decoded  {decoded[0]}")
        print(f"tokens right {acc:.3f} | exact {'yes' if acc == 1.0 else 'no'}\n")


def main(cfg):
    env = common.setup(cfg['device'], cfg['seed'])
    if cfg['roundtrip']:
        return roundtrip(cfg, env)
    if cfg['sampler'] not in SAMPLERS:
        common.die(f"sampler must be one of {', '.join(SAMPLERS)}, not '{cfg['sampler']}'")
    if cfg['num_seeds'] < 1 or cfg['num_samples'] < 1 or cfg['batch_size'] < 1:
        common.die("num_seeds, num_samples and batch_size must be at least 1")
    denoiser, ae, ckpt = load_pipeline(cfg['ckpt'], cfg['ae_ckpt'], env['device'], cfg['use_ema'])
    d = ckpt['diffusion_args']
    ctx = common.autocast(env['device_type'], cfg['dtype'])
    rows, cond, guidance = None, None, None
    if denoiser.conditional:
        if not cfg['sources']:
            common.die(f"'{cfg['ckpt']}' is a conditional model: give --sources=FILE (or - for stdin)")
        rows = read_sources(cfg['sources'])
        cond, n_cut = encode_texts(ae, [r['source'] for r in rows], d['src_max_len'], cfg['batch_size'], ctx,
                                   desc='encoding sources')
        if n_cut:
            print(f"# {n_cut} of {len(rows)} sources were longer than {d['src_max_len']} tokens and were cut",
                  file=sys.stderr)
        guidance = cfg['guidance']
    elif cfg['sources']:
        common.die(f"'{cfg['ckpt']}' is an unconditional model: it takes no --sources")
    n = len(rows) if rows is not None else cfg['num_samples']
    meta = dict(ckpt=cfg['ckpt'], step=ckpt['step'], steps=cfg['steps'], sampler=cfg['sampler'], ema=cfg['use_ema'])
    f = open(cfg['out'], 'w') if cfg['out'] else None
    t0 = time.time()
    for seed in range(cfg['seed'], cfg['seed'] + cfg['num_seeds']):
        texts, _ = generate(denoiser, ae, n, cfg['steps'], d['schedule_d'], d['t_min'], cfg['sampler'], seed,
                            cfg['batch_size'], env['device'], ctx, cond=cond, guidance=guidance,
                            desc=f"seed {seed}")
        for text in texts:
            print(text)
        if f:
            for i, text in enumerate(texts):
                row = dict(text=text) if rows is None else dict(rows[i], generation=text, guidance=cfg['guidance'])
                f.write(json.dumps(dict(row, seed=seed, **meta)) + '\n')
            f.flush()  # a long run keeps every finished seed
    if f:
        f.close()
    print(f"# {n} samples x {cfg['num_seeds']} seed(s), {cfg['steps']} {cfg['sampler']} steps, "
          f"{time.time() - t0:.1f}s on {env['device']}", file=sys.stderr)


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
