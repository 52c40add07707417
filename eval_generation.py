"""
evaluate.py --mode=generation: the unconditional metrics of the paper's Table 4 (Sec. 6.1), MAUVE, PPL,
Div and Mem, as mean and std over sampling seeds, from a samples file (sample.py --num_seeds=k writes each
row's seed) or straight from a diffusion checkpoint (num_seeds x num_samples texts generated here).
References and training texts go through the autoencoder's tokenizer round trip first (eval_common.as_seen),
as the samples did.
"""
import json
import os
import random
import time

import numpy as np

import common
from corpus import is_valid_story
from eval_common import (as_seen, check_model, read_samples, recorded, refuse_conditional, report, run_encoder,
                         run_of, text_chunks, texts_of)
from metrics import diversity, length_stats, load_causal_lm, mauve_score, memorization, ngram_index, perplexity
from pipeline import autoguide, generate, load_pipeline


def run_generation(cfg, env):
    from autoencoder import resolve_encoder
    common.require(cfg, 'autoguidance', lambda v: v >= 0, ">= 0 (1 = off)")
    run, groups, encoder, max_len = None, None, None, None
    if cfg['samples']:                                                        # score a file of texts
        rows = read_samples(cfg['samples'], [cfg['text_field']])
        made = recorded(cfg['samples'], rows)
        groups = {seed: [r[cfg['text_field']] for r in group] for seed, group in rows.items()}
        out = cfg['out'] or os.path.splitext(cfg['samples'])[0] + '.eval.json'
        # the run's config, for its refs and train data: from ckpt=, or from the path sample.py recorded
        ckpt_path = cfg['ckpt'] or (made.get('ckpt') if os.path.isfile(str(made.get('ckpt'))) else '')
        if ckpt_path:
            ckpt = common.load_checkpoint(ckpt_path, 'diffusion')
            run = run_of(ckpt)
            encoder, max_len = run_encoder(ckpt, cfg['ae_ckpt']) if cfg['ref_roundtrip'] else (None, None)
    elif cfg['ckpt']:
        denoiser, ae, ckpt = load_pipeline(cfg['ckpt'], cfg['ae_ckpt'], env['device'], cfg['use_ema'])
        refuse_conditional(denoiser, cfg['ckpt'])
        run, encoder, max_len = run_of(ckpt), ae.encoder, ae.args['max_len']
        guide, w = autoguide(ckpt, cfg['autoguidance'], cfg['steps'], cfg['guide_t_min'], env['device'])
        made = dict(ckpt=cfg['ckpt'], step=ckpt['step'], steps=cfg['steps'], sampler=cfg['sampler'],
                    grid=cfg['grid'], ema=cfg['use_ema'], autoguidance=w,
                    **(dict(guide_t_min=cfg['guide_t_min']) if w != 1 and cfg['guide_t_min'] > 0 else {}))
        grid = '' if cfg['grid'] == 'uniform' else '_' + cfg['grid']
        ag = (f"_ag{w:g}" + (f"_from{cfg['guide_t_min']:g}" if cfg['guide_t_min'] > 0 else '')) if w != 1 else ''
        out = cfg['out'] or os.path.join(os.path.dirname(cfg['ckpt']), f"eval_{cfg['sampler']}{cfg['steps']}{grid}{ag}.json")
    else:
        common.die("mode=generation needs samples=PATH (a JSONL of texts) or ckpt=PATH (a diffusion checkpoint)")
    n_max = max(len(g) for g in groups.values()) if groups else cfg['num_samples']
    refs, refs_name = texts_of(cfg['refs'], 'validation', cfg, run, n_max)
    if refs is None:
        common.die("MAUVE needs references: pass refs=SPEC, or ckpt=PATH to use the run's validation texts")
    if len(refs) < n_max:
        common.die(f"{refs_name} holds {len(refs)} texts, fewer than the {n_max} samples of a seed "
                   f"(MAUVE compares sets of equal size)")
    train, train_name = text_chunks(cfg['train_data'], 'train', cfg, run, cfg['mem_rows'])  # read when indexed
    stories = 'stories' in (cfg['refs'], cfg['train_data'], run and run['data'])
    # every input is checked before any sampling: a bad one fails in one line, not after minutes of work
    feature_model = resolve_encoder(cfg['mauve_model']) if cfg['mauve_features'] == 'encoder' else cfg['mauve_model']
    check_model(feature_model, 'mauve_model')
    if cfg['ppl_model']:
        check_model(cfg['ppl_model'], 'ppl_model')
    # references and training texts as the autoencoder would write them (when it is known)
    encoder = encoder if cfg['ref_roundtrip'] else None
    train_grams = None
    if train is not None:  # Mem's index, once for all seeds and before any sampling: a bad row fails here
        # the run's own rows come decoded from its prepared folder (text_chunks): already the round trip
        fresh = encoder and cfg['train_data']
        chunks = (list(as_seen(encoder, c, max_len)) for c in train) if fresh else train
        train_grams = ngram_index(common.progress(chunks, desc='Mem: training texts', unit='chunk'))

    if groups is None:                                                        # generate: num_seeds x num_samples
        d, groups, seconds = ckpt['diffusion_args'], {}, []
        for seed in range(cfg['num_seeds']):
            t0 = time.time()
            groups[seed] = generate(denoiser, ae, cfg['num_samples'], cfg['steps'], d['schedule_d'], d['t_min'],
                                    cfg['sampler'], seed, cfg['batch_size'], env['device'],
                                    common.autocast(env['device_type'], cfg['dtype']), desc=f"sampling, seed {seed}",
                                    grid=cfg['grid'], guidance=w, guide=guide, guide_t_min=cfg['guide_t_min'])[0]
            seconds.append(time.time() - t0)
        # the texts too, with their seeds, so that --samples= scores them again without generating
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(os.path.splitext(out)[0] + '.samples.jsonl', 'w') as f:
            f.writelines(json.dumps(dict(text=t, seed=s, **made)) + '\n' for s, texts in groups.items() for t in texts)
        made['seconds_per_seed'] = seconds
    seen = (lambda texts, desc=None: list(as_seen(encoder, texts, max_len, desc=desc))) if encoder else \
        (lambda texts, desc=None: list(texts))
    round_trip = (f"references went through {encoder.name}'s tokenizer round trip (cut to {max_len} tokens), "
                  f"as the samples did") if encoder else "references as raw text (ref_roundtrip=False, or no autoencoder known: pass ckpt=)"
    lm = load_causal_lm(cfg['ppl_model'], env['device']) if cfg['ppl_model'] else None

    per_seed = []
    for seed, texts in common.progress(groups.items(), desc='scoring seeds', unit='seed'):
        # each seed draws its own equal-size reference set, seeded by the seed: repeatable, and the spread over
        # seeds includes the spread due to the choice of references
        ref = seen([refs[i] for i in sorted(random.Random(seed).sample(range(len(refs)), len(texts)))])
        mv = mauve_score(texts, ref, cfg['mauve_features'], feature_model, cfg['mauve_max_len'],
                         device=env['device'], batch_size=cfg['batch_size'])
        m = dict(mauve=mv['mauve'])
        if lm:
            ppl = perplexity(texts, *lm, batch_size=cfg['batch_size'], device=env['device'])
            m['ppl'], m['ppl_pooled'] = ppl['mean'], ppl['pooled']
        m['div'] = diversity(texts)
        m['ref_div'] = diversity(ref)  # the references' own Div: the paper's 'source text' row, same sample size
        if train_grams is not None:
            m['mem'] = memorization(texts, train_grams)
        if stories:  # the embedded corpus has an exact checker: the share of samples that are real stories
            m['valid'] = float(np.mean([is_valid_story(t) for t in texts]))
        per_seed.append((seed, dict(m, **length_stats(texts, ref))))
    by = dict(mauve=f"mauve-text, {mv['features']} features of {mv['feature_model']} (max {mv['max_length']} "
                    f"tokens), {mv['num_buckets']} buckets, k-means seed {mv['seed']}; references: a seeded draw "
                    f"of {mv['n_q']} from {refs_name}; {round_trip}",
              ppl=f"perplexity under {cfg['ppl_model']}: mean over texts of each text's perplexity (the paper's "
                  f"predecessors' way), BOS first if the tokenizer has one",
              ppl_pooled=f"perplexity under {cfg['ppl_model']}: pooled over all tokens of the seed's texts",
              div='prod over n=2..4 of unique/total n-grams of words(), pooled over the samples',
              ref_div=f"Div of the seed's references (the same n-grams, the same number of texts); {round_trip}",
              mem=f"share of 4-grams of words() found in {train_name}"
                  + (" (after the same tokenizer round trip)" if encoder or not cfg['train_data'] else ''),
              valid='share of samples that pass corpus.is_valid_story')
    return report(per_seed, by, out, dict(mode='generation', made=made))
