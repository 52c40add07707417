"""
evaluate.py --mode=conditional: the metrics of the paper's Sec. 7 tasks on a JSONL of {source, target,
generation} rows (sample.py --sources=... writes one, with each row's seed): corpus BLEU-4 (sacrebleu),
ROUGE-1/2/L F1 (rouge-score) and BERTScore P/R/F1 (bert-score), each as mean and std over seeds and
labelled with what made it (sacrebleu's signature; BERTScore's model, layer, idf and rescaling).
"""
import os

import numpy as np

import common
from eval_common import as_seen, check_model, read_samples, recorded, report, run_encoder
from metrics import bertscore, bertscore_model, bleu, rouge


def run_conditional(cfg, env):
    if not cfg['samples']:
        common.die("mode=conditional needs samples=PATH, a JSONL of {source, target, generation}")
    groups = read_samples(cfg['samples'], ['source', 'target', 'generation'])
    made = recorded(cfg['samples'], groups)
    name, path = bertscore_model(cfg['bertscore_model'])
    check_model(path, 'bertscore_model')
    # the targets as the autoencoder would write them, when the run is known and ref_roundtrip is on: an
    # uncased encoder writes lowercase text, which a case-sensitive BLEU would otherwise count as wrong
    ckpt_path = cfg['ckpt'] or (made.get('ckpt') if os.path.isfile(str(made.get('ckpt'))) else '')
    encoder, max_len = (run_encoder(common.load_checkpoint(ckpt_path, 'diffusion'), cfg['ae_ckpt'])
                        if ckpt_path and cfg['ref_roundtrip'] else (None, None))
    round_trip = (f"targets through {encoder.name}'s tokenizer round trip (cut to {max_len} tokens)" if encoder
                  else 'targets as raw text')
    per_seed = []
    for seed, rows in common.progress(groups.items(), desc='scoring seeds', unit='seed'):
        gen, tgt = [r['generation'] for r in rows], [r['target'] for r in rows]
        if encoder:
            tgt = list(as_seen(encoder, tgt, max_len))
        score, signature = bleu(gen, tgt)
        bs = bertscore(gen, tgt, name, cfg['bertscore_idf'], cfg['bertscore_rescale'], cfg['batch_size'],
                       env['device'])
        m = dict(bleu4=score, **{k: v for k, v in rouge(gen, tgt).items()},
                 **{f'bertscore_{k}': float(np.mean(bs[k])) for k in ('p', 'r', 'f1')})  # mean over pairs
        per_seed.append((seed, m))
    label = (f"BERTScore (bert-score {bs['hash']}): model {bs['model']}, layer {bs['layer']}, "
             f"idf {bs['idf']}, rescaled with baseline {bs['rescale']}; mean over pairs; {round_trip}")
    by = dict(bleu4=f"corpus BLEU-4, 0-100, sacrebleu {signature}; {round_trip}",
              **{k: f"{k.upper().replace('ROUGE', 'ROUGE-')} F1, 0-1, rouge-score with the Porter stemmer, mean over "
                    f"pairs; {round_trip}" for k in ('rouge1', 'rouge2', 'rougeL')},
              **{f'bertscore_{k}': label for k in ('p', 'r', 'f1')})
    out = cfg['out'] or os.path.splitext(cfg['samples'])[0] + '.eval.json'
    return report(per_seed, by, out, dict(mode='conditional', made=made))
