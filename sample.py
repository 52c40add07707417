"""
Generate text from a trained diffusion checkpoint (its EMA weights) and the autoencoder it was trained on.

    python sample.py --ckpt=out/tiny_diff/ckpt.pt                          # 8 texts to stdout
    python sample.py --ckpt=out/diff/ckpt.pt --num_samples=1000 --out=samples.jsonl --sampler=ancestral

Everything about the models (sizes, schedule d, t_min, latent statistics) comes from the checkpoints,
never from flags typed again.
"""
import json
import sys
import time

import common
from diffusion import generate, load_pipeline

config = dict(
    ckpt='out/diff/ckpt.pt',     # diffusion checkpoint
    ae_ckpt='',                  # autoencoder checkpoint; '' = the path recorded in the diffusion checkpoint
    num_samples=8,
    steps=200,                   # Euler steps from t = 1 to t_min (the paper: 200)
    sampler='ddim',              # 'ddim' (probability-flow ODE) or 'ancestral' (reverse SDE)
    seed=0,
    batch_size=64,
    out='',                      # also write {"text": ...} lines to this JSONL file
    use_ema=True,                # sample from the EMA weights (the paper's choice)
    device='auto',
    dtype='bfloat16',            # autocast on GPU for the denoiser
)


def main(cfg):
    env = common.setup(cfg['device'], cfg['seed'])
    if cfg['sampler'] not in ('ddim', 'ancestral'):
        common.die(f"sampler must be 'ddim' or 'ancestral', not '{cfg['sampler']}'")
    denoiser, ae, ckpt = load_pipeline(cfg['ckpt'], cfg['ae_ckpt'], env['device'], cfg['use_ema'])
    d = ckpt['diffusion_args']
    t0 = time.time()
    texts, _ = generate(denoiser, ae, cfg['num_samples'], cfg['steps'], d['schedule_d'], d['t_min'],
                        cfg['sampler'], cfg['seed'], cfg['batch_size'], env['device'],
                        common.autocast(env['device_type'], cfg['dtype']))
    dt = time.time() - t0
    for text in texts:
        print(text)
    if cfg['out']:
        meta = dict(ckpt=cfg['ckpt'], step=ckpt['step'], steps=cfg['steps'], sampler=cfg['sampler'],
                    seed=cfg['seed'], ema=cfg['use_ema'])
        with open(cfg['out'], 'w') as f:
            for text in texts:
                f.write(json.dumps(dict(text=text, **meta)) + '\n')
    print(f"# {len(texts)} samples, {cfg['steps']} {cfg['sampler']} steps, {dt:.1f}s on {env['device']}",
          file=sys.stderr)


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
