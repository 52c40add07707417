"""
Generate text from a trained diffusion checkpoint (its EMA weights) and the autoencoder it was trained on.

    python sample.py --ckpt=out/tiny_diff/ckpt.pt                          # 8 texts to stdout
    python sample.py --ckpt=out/diff/ckpt.pt --num_samples=1000 --out=samples.jsonl --sampler=ancestral
    python sample.py --ckpt=out/tiny_cond/ckpt.pt --sources=pairs.jsonl --out=generations.jsonl --guidance=1.5
    echo "tom found a red ball in the park. he gave it to anna. anna was happy." | python sample.py --ckpt=out/tiny_cond/ckpt.pt --sources=-

Everything about the models (sizes, schedule d, t_min, latent statistics) comes from the checkpoints,
never from flags typed again.
"""
import json
import sys
import time

import common
from corpus import read_jsonl, read_lines
from diffusion import SAMPLERS, generate, load_pipeline

config = dict(
    ckpt='out/diff/ckpt.pt',     # diffusion checkpoint
    ae_ckpt='',                  # autoencoder checkpoint; '' = the path recorded in the diffusion checkpoint
    num_samples=8,
    steps=200,                   # Euler steps from t = 1 to t_min (the paper: 200)
    sampler='ddim',              # 'ddim' (Euler on the probability-flow ODE), 'ancestral' (reverse SDE), 'heun'
    seed=0,
    batch_size=64,
    out='',                      # also write JSONL: {"text": ...}, or {"source", "target", "generation"}
    sources='',                  # conditional models: a .txt (one source a line), a .jsonl (source[, target]), or - for stdin
    guidance=1.0,                # classifier-free guidance weight w (1 = plain conditional; > 1 stronger)
    use_ema=True,                # sample from the EMA weights (the paper's choice)
    device='auto',
    dtype='bfloat16',            # autocast on GPU for the denoiser
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


def main(cfg):
    env = common.setup(cfg['device'], cfg['seed'])
    if cfg['sampler'] not in SAMPLERS:
        common.die(f"sampler must be one of {', '.join(SAMPLERS)}, not '{cfg['sampler']}'")
    denoiser, ae, ckpt = load_pipeline(cfg['ckpt'], cfg['ae_ckpt'], env['device'], cfg['use_ema'])
    d = ckpt['diffusion_args']
    ctx = common.autocast(env['device_type'], cfg['dtype'])
    rows, cond, guidance = None, None, None
    if denoiser.conditional:
        if not cfg['sources']:
            common.die(f"'{cfg['ckpt']}' is a conditional model: give --sources=FILE (or - for stdin)")
        rows = read_sources(cfg['sources'])
        ids, mask, n_cut = ae.encoder.tokenize([r['source'] for r in rows], d['src_max_len'])
        if n_cut:
            print(f"# {n_cut} of {len(rows)} sources were longer than {d['src_max_len']} tokens and were cut",
                  file=sys.stderr)
        cond = ae.encode(ids=ids, mask=mask, normalize=True)
        guidance = cfg['guidance']
    elif cfg['sources']:
        common.die(f"'{cfg['ckpt']}' is an unconditional model: it takes no --sources")
    n = len(rows) if rows is not None else cfg['num_samples']
    t0 = time.time()
    texts, _ = generate(denoiser, ae, n, cfg['steps'], d['schedule_d'], d['t_min'], cfg['sampler'], cfg['seed'],
                        cfg['batch_size'], env['device'], ctx, cond=cond, guidance=guidance)
    dt = time.time() - t0
    for text in texts:
        print(text)
    if cfg['out']:
        meta = dict(ckpt=cfg['ckpt'], step=ckpt['step'], steps=cfg['steps'], sampler=cfg['sampler'],
                    seed=cfg['seed'], ema=cfg['use_ema'])
        with open(cfg['out'], 'w') as f:
            for i, text in enumerate(texts):
                row = dict(text=text) if rows is None else dict(rows[i], generation=text, guidance=cfg['guidance'])
                f.write(json.dumps(dict(row, **meta)) + '\n')
    print(f"# {len(texts)} samples, {cfg['steps']} {cfg['sampler']} steps, {dt:.1f}s on {env['device']}",
          file=sys.stderr)


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
