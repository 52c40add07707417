"""
Generate text from a trained diffusion checkpoint (its EMA weights) and the autoencoder it was trained on.

    python sample.py --ckpt=out/tiny_diff/ckpt.pt                          # 8 texts to stdout (10 Euler steps)
    python sample.py --ckpt=out/tiny_diff/ckpt.pt --steps=200 --autoguidance=1   # the paper's sampler: 200 Euler steps
    python sample.py --ckpt=out/diff/ckpt.pt --num_samples=1000 --num_seeds=10 --out=samples.jsonl
    python sample.py --ckpt=out/tiny_cond/ckpt.pt --sources=pairs.jsonl --out=generations.jsonl --guidance=1.5
    echo "tom found a red ball in the park. he gave it to anna. anna was happy." | python sample.py --ckpt=out/tiny_cond/ckpt.pt --sources=-
    # round trip your own sentence through a trained autoencoder: encode, the latent's statistics, decode
    python sample.py --ae_ckpt=out/tiny_ae/ckpt.pt --roundtrip="tom found a red ball in the park."
    # long text (a block model): continue a prompt, prompts from a file, or a prepared folder's held-out documents
    python sample.py --ckpt=out/tiny_long/ckpt.pt --prompt="tom found a red ball in the park. he gave it to anna. anna was happy."
    python sample.py --ckpt=out/tiny_long/ckpt.pt --prompts=prompts.txt --n_blocks=6 --out=continuations.jsonl
    python sample.py --ckpt=out/long_wiki_n16/ckpt.pt --prompts=data/wiki_l128 --prompt_blocks=2 --n_blocks=6 --out=cont.jsonl

--num_seeds=k draws num_samples texts for each of the seeds seed, seed+1, ..., seed+k-1 and writes each
row's seed, so that `python evaluate.py --samples=FILE` reports every metric as mean and std over seeds.
Block models (train_diff.py task='blocks') write long text block by block: a prompt is chunked as the
training data are (corpus.chunk_document: whole sentences, at most L tokens a chunk), encoded and put
after the document-start marker, and up to n_blocks blocks follow, each committed by decoding it and
encoding the text again (reencode) so that the model always reads clean encodings of real text, as in
training; a document ends at the end marker. Without a prompt, num_samples documents are written from the
start marker. --guidance=0 samples every block without its prefix (the no-prefix baseline). Prompts given to
an unconditional single-window model give the independent-window baseline: n_blocks independent samples
per prompt, in the same rows (--independent=True without prompts: num_samples such documents).

Everything about the models (sizes, schedule d, t_min, latent statistics) comes from the checkpoints,
never from flags typed again.
"""
import json
import os
import sys
import time

import torch

import common
from autoencoder import load_autoencoder
from corpus import Prepared, chunk_document, read_jsonl, read_lines
from corpus import is_valid_story
from diffusion import GRIDS, SAMPLERS, end_marker, sample_blocks
from pipeline import autoguide, encode_texts, generate, load_pipeline

config = dict(
    ckpt='out/diff/ckpt.pt',     # diffusion checkpoint
    ae_ckpt='',                  # autoencoder checkpoint; '' = the path recorded in the diffusion checkpoint
    num_samples=8,               # texts per seed (unconditional models)
    num_seeds=1,                 # seeds seed .. seed + num_seeds - 1, each written with its rows
    sampler='ddim',              # 'ddim' (Euler on the probability-flow ODE, the paper's), 'ancestral' (reverse SDE),
                                 # 'heun', 'dpm2m' (DPM-Solver++(2M), second order, one pass a step)
    steps=10,                    # steps from t = 1 to t_min. 10, not the paper's 200: on the quickstart's models
                                 # 10 Euler steps with autoguidance gave 73.7% valid stories, 200 without it (the
                                 # paper's sampler: --steps=200 --autoguidance=1) 67.0%, 200 with it 28.7%
                                 # (README, "Few-step sampling")
    grid='uniform',              # time grid: 'uniform' in t (the paper's) or 'logsnr' (uniform in log-SNR)
    seed=0,                      # the first seed
    batch_size=64,               # texts per sampler batch (and sources per encoder batch)
    out='',                      # also write JSONL: {"text", "seed", ...}; conditional: {"source", "target", "generation", ...}
    sources='',                  # conditional models: a .txt (one source a line), a .jsonl (source[, target]), or - for stdin
    guidance=1.0,                # classifier-free guidance weight w (1 = plain conditional; > 1 stronger;
                                 # block models: 0 = the null model, every block without its prefix)
    autoguidance=2.0,            # w of autoguidance for unconditional models that keep a guide (train_diff.py
                                 # guide_step): x0 + (w - 1)(x0 - x0_guide); 1 = off; models without a guide
                                 # sample plainly (the last line says which). README, "Quickstart"
    guide_t_min=0.0,             # autoguidance only at the steps with t >= this (a guidance interval; 0 = all):
                                 # 0.5 kept w = 2 useful at 200 steps (README, "Few-step sampling")
    # long text: block models (train_diff.py task='blocks')
    prompt='',                   # one prompt to continue
    prompts='',                  # prompts to continue: a .txt (one a line), a .jsonl ("prompt" field), - for stdin,
                                 # or a prepared folder: its held-out documents' first prompt_blocks rows
    prompt_blocks=1,             # prepared-folder prompts: rows (blocks) of each document given; the rest is the reference
    n_blocks=8,                  # blocks (chunks) generated at most after the prompt; fewer if the document ends
    reencode=True,               # commit each block as the encoding of its decoded text (else its x0 latent)
    independent=False,           # a single-window model without prompts: num_samples documents of n_blocks
                                 # independent samples (the independent-window baseline of free generation)
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


def prompt_rows(text, tokenizer, L):
    """
    A prompt as the training data's rows: chunked by corpus.chunk_document (whole sentences, at most L tokens
    a row), each row as ids [CLS] ... [SEP] [PAD]... (L,) with its mask, and its text.
    """
    rows, _ = chunk_document(text, tokenizer, L)
    ids = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row) + 2] = torch.tensor([tokenizer.cls_token_id, *row, tokenizer.sep_token_id])
    mask = ids != tokenizer.pad_token_id
    return ids, mask, [tokenizer.decode(row) for row in rows]


def folder_prompts(cfg, ae):
    """
    Prompts from a prepared folder (data/prepare.py, the same tokenizer and L): the first prompt_blocks rows
    of each held-out document that has more, up to num_samples documents, with the rest of the document as
    the reference. Returns [(ids, mask, prompt texts, reference texts)].
    """
    data = Prepared(cfg['prompts']).check(ae.encoder.tokenizer, ae.args['max_len'])
    docs, p, out = data.docs('val'), cfg['prompt_blocks'], []
    if p < 1:
        common.die(f"prompt_blocks must be at least 1, not {p}")
    for lo, hi in zip(docs[:-1].tolist(), docs[1:].tolist()):
        if hi - lo > p and len(out) < cfg['num_samples']:
            ids, mask = data.val.batch(range(lo, hi))
            texts = ae.encoder.decode(ids)
            out.append((ids[:p], mask[:p], texts[:p], texts[p:]))
    if not out:
        common.die(f"no held-out document of '{cfg['prompts']}' has more than prompt_blocks={p} rows")
    return out


def read_prompts(cfg):
    """The prompts to continue (--prompt, or --prompts=FILE), or [] for free generation."""
    if cfg['prompt'] and cfg['prompts']:
        common.die("give --prompt or --prompts, not both")
    if cfg['prompt']:
        return [cfg['prompt']]
    if not cfg['prompts']:
        return []
    if cfg['prompts'].endswith('.jsonl'):
        prompts = [row['prompt'] for row in read_jsonl(cfg['prompts'], ['prompt'])]
    else:
        prompts = [line for _, line in read_lines(cfg['prompts'])]
    if not prompts:
        common.die(f"no prompts in '{cfg['prompts']}'")
    return prompts


@torch.no_grad()
def continue_documents(denoiser, ae, prompts, cfg, d, device, ctx, chunked=None, seed=0):
    """
    Rows of {"prompt", "prompt_chunks", "blocks", "generation", "ended"} (and "reference" for prompts from a
    prepared folder, given as `chunked`): each prompt (or, with none, num_samples empty ones) continued by
    up to n_blocks blocks. Prompts of the same chunk count are batched
    together (the KV cache holds one prefix length per batch). The commit hook decodes each new block and,
    with reencode, commits the encoding of that text; the texts are the ones the hook decoded.
    """
    N, c = ae.args['n_latents'], ae.args['dim']
    marker = end_marker(N, c).to(device)
    tok, L = ae.encoder.tokenizer, ae.args['max_len']
    if chunked is None:
        chunked = [prompt_rows(p, tok, L) for p in prompts] or [(None, None, [])] * cfg['num_samples']
    rows = [None] * len(chunked)
    generator = torch.Generator(device).manual_seed(seed)
    for m in sorted({len(ch[2]) for ch in chunked}):
        group = [i for i, ch in enumerate(chunked) if len(ch[2]) == m]
        for s in range(0, len(group), cfg['batch_size']):
            idx = group[s:s + cfg['batch_size']]
            prompt = marker.expand(len(idx), 1, N, c)                          # the document-start marker
            if m:
                ids = torch.cat([chunked[i][0] for i in idx])
                mask = torch.cat([chunked[i][1] for i in idx])
                with ctx:
                    z = ae.encode(ids=ids, mask=mask, normalize=True).float()
                prompt = torch.cat([prompt, z.view(len(idx), m, N, c)], dim=1)
            said = {}

            def commit(x0, j):
                with ctx:
                    said[j] = ae.decode(x0, normalized=True)[1]
                    return ae.encode(said[j], normalize=True).float() if cfg['reencode'] else x0
            blocks, length = sample_blocks(denoiser, prompt, 1 + m + cfg['n_blocks'], cfg['steps'], d['schedule_d'],
                                           d['t_min'], cfg['sampler'], cfg['guidance'], commit, generator, device, ctx,
                                           cfg['grid'])
            n_gen = blocks.shape[1] - 1 - m
            for b, i in enumerate(idx):
                texts = [said[1 + m + j][b] for j in range(int(length[b]))]
                rows[i] = dict(prompt=prompts[i] if prompts else '', prompt_chunks=chunked[i][2], blocks=texts,
                               generation=' '.join(texts), ended=bool(length[b] < n_gen))
                if len(chunked[i]) > 3:
                    rows[i]['reference'] = chunked[i][3]
    return rows


def independent_windows(denoiser, ae, prompts, cfg, d, device, ctx, chunked=None, seed=0):
    """
    The independent-window baseline of long text: a single-window model cannot read a prompt, so each
    prompt is "continued" by n_blocks independent samples, in continue_documents' rows (never ended).
    """
    tok, L = ae.encoder.tokenizer, ae.args['max_len']
    if chunked is None:
        chunked = [prompt_rows(p, tok, L) for p in prompts] or [(None, None, [])] * cfg['num_samples']
    k = cfg['n_blocks']
    texts, _ = generate(denoiser, ae, len(chunked) * k, cfg['steps'], d['schedule_d'], d['t_min'], cfg['sampler'],
                        seed, cfg['batch_size'], device, ctx, grid=cfg['grid'])
    rows = []
    for i, ch in enumerate(chunked):
        rows.append(dict(prompt=prompts[i] if prompts else '', prompt_chunks=ch[2], blocks=texts[i * k:(i + 1) * k],
                         generation=' '.join(texts[i * k:(i + 1) * k]), ended=False))
        if len(ch) > 3:
            rows[-1]['reference'] = ch[3]
    return rows


def long_text(denoiser, ae, ckpt, cfg, env, ctx):
    """Continue prompts (or write documents from scratch) with a block model, for each seed; JSONL rows as
    continue_documents writes them, with their seed. A single-window model gives the independent-window baseline."""
    d, blocks = ckpt['diffusion_args'], ckpt['diffusion_args'].get('task') == 'blocks'
    if blocks and cfg['sources']:
        common.die(f"'{cfg['ckpt']}' is a block model (long text): continue prompts with --prompt or --prompts")
    if denoiser.conditional:
        common.die(f"'{cfg['ckpt']}' is a conditional model: it takes --sources, not prompts")
    if cfg['n_blocks'] < 1:
        common.die(f"n_blocks must be at least 1, not {cfg['n_blocks']}")
    chunked = folder_prompts(cfg, ae) if cfg['prompts'] and os.path.isdir(cfg['prompts']) else None
    prompts = [' '.join(c[2]) for c in chunked] if chunked else read_prompts(cfg)
    meta = dict(ckpt=cfg['ckpt'], step=ckpt['step'], steps=cfg['steps'], sampler=cfg['sampler'], grid=cfg['grid'],
                ema=cfg['use_ema'], guidance=cfg['guidance'], reencode=cfg['reencode'], context=blocks)
    f = open(cfg['out'], 'w') if cfg['out'] else None
    t0, n_rows = time.time(), 0
    for seed in range(cfg['seed'], cfg['seed'] + cfg['num_seeds']):
        run = continue_documents if blocks else independent_windows  # the latter: the independent-window baseline
        rows = run(denoiser, ae, prompts, cfg, d, env['device'], ctx, chunked, seed)
        n_rows += len(rows)
        for row in rows:
            print(row['generation'])
        if f:
            for row in rows:
                f.write(json.dumps(dict(row, seed=seed, **meta)) + '\n')
            f.flush()
    if f:
        f.close()
    print(f"# {n_rows} documents, {cfg['num_seeds']} seed(s), {cfg['steps']} {cfg['sampler']} steps, "
          f"{time.time() - t0:.1f}s on {env['device']}", file=sys.stderr)


def check_config(cfg):
    """Every value checked, and the output file's folder, before anything is loaded or generated."""
    common.at_least(cfg, 1, 'num_samples', 'num_seeds', 'steps', 'batch_size')  # steps=0: the mean latent
    common.at_least(cfg, 1, 'n_blocks', 'prompt_blocks')
    common.require(cfg, 'guidance', lambda v: v >= 0, ">= 0 (1 = plain conditional)")
    common.require(cfg, 'autoguidance', lambda v: v >= 0, ">= 0 (1 = off)")
    common.at_least(cfg, 0, 'guide_t_min')
    if cfg['sampler'] not in SAMPLERS:
        common.die(f"sampler must be one of {', '.join(SAMPLERS)}, not '{cfg['sampler']}'")
    if cfg['grid'] not in GRIDS:
        common.die(f"grid must be one of {', '.join(GRIDS)}, not '{cfg['grid']}'")
    common.autocast('cpu', cfg['dtype'])  # refuses a dtype it does not know
    if cfg['out']:
        common.check_writable_file(cfg['out'], 'out')


def main(cfg):
    check_config(cfg)
    env = common.setup(cfg['device'], cfg['seed'])
    if cfg['roundtrip']:
        return roundtrip(cfg, env)
    denoiser, ae, ckpt = load_pipeline(cfg['ckpt'], cfg['ae_ckpt'], env['device'], cfg['use_ema'])
    d = ckpt['diffusion_args']
    ctx = common.autocast(env['device_type'], cfg['dtype'])
    if d.get('task') == 'blocks' or cfg['prompt'] or cfg['prompts'] or cfg['independent']:
        return long_text(denoiser, ae, ckpt, cfg, env, ctx)
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
    guide = None
    if not denoiser.conditional:
        guide, guidance = autoguide(ckpt, cfg['autoguidance'], cfg['steps'], cfg['guide_t_min'], env['device'])
    how = ('' if denoiser.conditional else
           f", autoguidance w={cfg['autoguidance']} by the EMA of step {ckpt['guide_step']}"
           + (f" at t >= {cfg['guide_t_min']:g}" if cfg['guide_t_min'] > 0 else '') if guide is not None
           else ', no autoguidance (w=1)' if cfg['autoguidance'] == 1 else ', no autoguidance (the checkpoint keeps no guide)')
    n = len(rows) if rows is not None else cfg['num_samples']
    meta = dict(ckpt=cfg['ckpt'], step=ckpt['step'], steps=cfg['steps'], sampler=cfg['sampler'], grid=cfg['grid'],
                ema=cfg['use_ema'], autoguidance=cfg['autoguidance'] if guide is not None else 1.0,
                **(dict(guide_t_min=cfg['guide_t_min']) if guide is not None and cfg['guide_t_min'] > 0 else {}))
    # a model trained on the embedded story corpus has an exact checker: each printed sample is marked by it
    check = rows is None and trained_on_stories(ckpt)
    f = open(cfg['out'], 'w') if cfg['out'] else None
    t0, n_valid = time.time(), 0
    for seed in range(cfg['seed'], cfg['seed'] + cfg['num_seeds']):
        texts, _ = generate(denoiser, ae, n, cfg['steps'], d['schedule_d'], d['t_min'], cfg['sampler'], seed,
                            cfg['batch_size'], env['device'], ctx, cond=cond, guidance=guidance,
                            desc=f"seed {seed}", grid=cfg['grid'], guide=guide, guide_t_min=cfg['guide_t_min'])
        for text in texts:
            if check:
                ok = is_valid_story(text)
                n_valid += ok
                print(f"[{'valid' if ok else 'invalid'}] {text}")
            else:
                print(text)
        if f:
            for i, text in enumerate(texts):
                row = dict(text=text) if rows is None else dict(rows[i], generation=text, guidance=cfg['guidance'])
                f.write(json.dumps(dict(row, seed=seed, **meta)) + '\n')
            f.flush()  # a long run keeps every finished seed
    if f:
        f.close()
    print(f"# {n} samples x {cfg['num_seeds']} seed(s), {cfg['steps']} {cfg['sampler']} steps ({cfg['grid']} grid)"
          f"{how}, {time.time() - t0:.1f}s on {env['device']}" + (
              f"; {n_valid} of {n * cfg['num_seeds']} are valid stories (corpus.is_valid_story)" if check else ''),
          file=sys.stderr)


def trained_on_stories(ckpt):
    """Whether a diffusion checkpoint records that it was trained on the embedded story corpus: its prepared
    data's meta.json (kept in the checkpoint; older checkpoints: read from the folder, if it is still there)."""
    meta = ckpt.get('data')
    if meta is None:
        try:
            with open(os.path.join(ckpt.get('data_dir', ''), 'meta.json')) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return False
    return meta.get('source', {}).get('data') == 'stories'


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
