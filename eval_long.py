"""
Long-text metrics for the continuations sample.py writes with a block model (JSONL rows with
"prompt_chunks", "blocks", "ended"): exact coherence on the chained stories, and repetition measures that
need no model.

    python sample.py --ckpt=out/tiny_long/ckpt.pt --prompts=prompts.txt --n_blocks=3 --out=cont.jsonl
    python eval_long.py --samples=cont.jsonl

Chained stories (corpus.chained_stories): story k+1's giver is story k's receiver and the object with its
colour carries over, so coherence across blocks is exact to check:
    valid      share of generated blocks that are valid stories (the autoencoder's valid-reconstruction
               rate caps it)
    link       share of adjacent pairs (last prompt block -> first generated, then generated -> generated)
               that are both valid and chained (corpus.chain_ok)
    full       share of documents whose every such pair is linked
Any text:
    rep-4      share of the generated 4-grams already seen earlier in the same document (prompt included)
    echo       mean over generated blocks of the largest share of the block's 4-grams found in one earlier
               block: copying the previous block, the typical failure of block-by-block generation, gives 1
    loop       share of documents whose last two blocks are the same text (generation stuck in a loop)
    ended      share of documents that reached the end marker; blocks: mean generated blocks per document
With --ppl_model (a causal LM folder, GPT-2-large for real text):
    ppl@k      perplexity of the k-th generated block given the prompt and the blocks before it, pooled over
               documents: how the text drifts as it goes on

Rows continued from a prepared folder (sample.py --prompts=FOLDER) carry the rest of each document as
"reference": the same metrics are then printed for it (the data's own level), and with --ae_ckpt for its
reconstruction by the autoencoder (decode(encode(block)) per block: the ceiling a generator on that
autoencoder can reach, e.g. the share of valid stories it can write at all).
"""
import json
import math
import sys

import torch

import common
from corpus import chain_ok, is_valid_story, read_jsonl

config = dict(
    samples='',                  # JSONL written by sample.py from a block model (prompt_chunks, blocks, ended)
    stories=True,                # also score the chained-story metrics (valid, link, full)
    ae_ckpt='',                  # an autoencoder checkpoint: also score the reconstruction of the references
    ppl_model='',                # a causal LM (local folder or hub name): perplexity of each block given what precedes it
    ppl_context=768,             # tokens of context kept before a block (cut on the left); the model's window bounds it
    device='auto',
)


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


def main(cfg):
    if not cfg['samples']:
        common.die("give --samples=FILE, the JSONL sample.py wrote from a block model")
    rows = read_jsonl(cfg['samples'], [])
    bad = [i for i, r in enumerate(rows, 1) if not all(k in r for k in ('prompt_chunks', 'blocks', 'ended'))]
    if bad:
        common.die(f"{cfg['samples']}:{bad[0]} has no 'prompt_chunks', 'blocks' and 'ended' (not from a block model?)")
    if not rows:
        common.die(f"no rows in '{cfg['samples']}'")
    results = dict(generated=score(rows, cfg['stories']))
    if all('reference' in r for r in rows):
        results['reference'] = score([dict(r, blocks=r['reference'], ended=True) for r in rows], cfg['stories'])
        if cfg['ae_ckpt']:
            from autoencoder import load_autoencoder
            env = common.setup(cfg['device'], 0)
            ae = load_autoencoder(common.load_checkpoint(cfg['ae_ckpt'], 'autoencoder'), env['device'])
            results['reconstruction'] = score(reconstructed(rows, ae), cfg['stories'])
    elif cfg['ae_ckpt']:
        common.die(f"'{cfg['samples']}' holds no references to reconstruct (continue a prepared folder's documents)")
    if cfg['ppl_model']:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        env = common.setup(cfg['device'], 0)
        tok = AutoTokenizer.from_pretrained(cfg['ppl_model'])
        lm = AutoModelForCausalLM.from_pretrained(cfg['ppl_model']).to(env['device'])
        for name in list(results):
            if name == 'generated':
                results[name].update(block_perplexity(rows, lm, tok, env['device'], cfg['ppl_context']))
            elif name == 'reference':
                ref = [dict(r, blocks=r['reference']) for r in rows]
                results[name].update(block_perplexity(ref, lm, tok, env['device'], cfg['ppl_context']))
    for name, out in results.items():
        print(f"{name:<15}" + ' | '.join(f"{k} {v:.3f}" for k, v in out.items()) + f" | {len(rows)} documents")
    return results


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
