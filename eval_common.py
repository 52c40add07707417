"""
What the three evaluations of evaluate.py share: reading sample files, the texts a run was trained and
validated on, the tokenizer round trip that makes references comparable with samples, the check that a
scorer model is at hand, and the report (mean and std over seeds, each number labelled with what made it).
"""
import itertools
import json
import math
import os
import random

import common
from corpus import PREPARE_DEFAULTS, Prepared, documents, read_jsonl
from metrics import seed_protocol


def floats(cfg, key):
    try:
        return [float(x) for x in cfg[key].split(',') if x.strip()]
    except ValueError:
        common.die(f"config key '{key}' must be comma-separated numbers, got '{cfg[key]}'")


def read_samples(path, fields):
    """The rows of a samples JSONL, each with string `fields`, grouped by their 'seed' field when they have
    one (sample.py writes it) so that metrics get a mean and std over seeds. Bad input ends in one line."""
    if not os.path.isfile(path):
        common.die(f"samples file '{path}' not found")
    groups = {}
    for row in read_jsonl(path, fields):
        groups.setdefault(row.get('seed', 0), []).append(row)
    if not groups:
        common.die(f"samples file '{path}' holds no rows")
    return dict(sorted(groups.items()))


def recorded(path, groups):
    """What made a samples file, as far as its rows say (sample.py records checkpoint, steps, sampler...)."""
    first = next(iter(groups.values()))[0]
    keys = ('ckpt', 'step', 'steps', 'sampler', 'grid', 'ema', 'guidance', 'autoguidance', 'guide_t_min')
    return dict(samples=path, **{k: first[k] for k in keys if k in first})


def refuse_conditional(denoiser, path):
    if denoiser.conditional:  # it needs sources: sample.py --sources=... writes what mode=conditional scores
        common.die(f"'{path}' is a conditional model: generate with sample.py --sources=FILE --out=gen.jsonl and "
                   f"score with --mode=conditional --samples=gen.jsonl (or run the autoencoder diagnostics)")


def texts_of(spec, split, cfg, run, n=0):
    """(texts, a label saying which): the corpus `spec` if given (a prepared folder, whose rows are decoded, or a
    raw source, read as documents), else the rows of the prepared folder the run trained on, decoded by its
    tokenizer: the same round trip (casing, accents, spacing) that generated samples go through. n > 0: at
    most the first n texts (and a raw 'stories' spec makes n). A list: for references and other small sets;
    a training split goes through text_chunks."""
    if raw(spec):
        docs = raw_documents(spec, split, cfg, run, n_stories=n or None)
        return list(itertools.islice(docs, n or None)), f"{spec} ({split})"
    chunks, name = text_chunks(spec, split, cfg, run, n)
    return (None, None) if chunks is None else ([t for c in chunks for t in c], name)


def text_chunks(spec, split, cfg, run, n=0, chunk=1024):
    """(an iterator over lists of at most `chunk` texts, a label) for the texts of texts_of, read as they are
    consumed: a paper-scale training split is never held at once. n > 0: at most the first n texts (the label
    says so when that cuts a prepared split; a raw source says 'at most'). (None, None) without a spec or a run."""
    if raw(spec):
        docs = itertools.islice(raw_documents(spec, split, cfg, run), n or None)
        first = list(itertools.islice(docs, chunk))  # read now: a bad source fails before any work
        return itertools.chain([first] if first else [], iter(lambda: list(itertools.islice(docs, chunk)), [])), \
            f"{spec} ({split}{f', at most the first {n:,}' if n else ''})"
    folder = spec or (run['data_dir'] if run else None)
    if folder is None:
        return None, None
    rows, decode = prepared_split(folder, split)
    cut = f", the first {n:,} of {len(rows):,}" if 0 < n < len(rows) else ''
    n = min(n or len(rows), len(rows))
    chunks = (decode(*rows.batch(range(i, min(i + chunk, n)))) for i in range(0, n, chunk))
    return chunks, (f"{spec} ({split}{cut})" if spec else f"the run's {split} rows ({folder}{cut})")


def sampled_texts(spec, split, cfg, run, size, seed, cap=0):
    """random.Random(seed).sample of size(N) texts of the N a split holds (texts_of's spec and run), reading only
    the rows drawn when the texts are a prepared folder's; a raw source draws from its first `cap` (0 = all)."""
    if raw(spec):  # the run's own count of generated stories, capped (texts_of would make `cap` of them)
        texts = [t for c in text_chunks(spec, split, cfg, run, cap)[0] for t in c]
        return [texts[i] for i in random.Random(seed).sample(range(len(texts)), size(len(texts)))]
    rows, decode = prepared_split(spec or run['data_dir'], split)
    return decode(*rows.batch(random.Random(seed).sample(range(len(rows)), size(len(rows)))))


def raw(spec):
    """Whether a corpus spec is a raw source (read as documents) rather than '' or a prepared folder."""
    return bool(spec) and not os.path.isfile(os.path.join(spec, 'meta.json'))


def raw_documents(spec, split, cfg, run, n_stories=None):
    """The documents of a raw source, with the run's seed and count of generated stories unless n_stories."""
    opts = dict(PREPARE_DEFAULTS, text_field=cfg['text_field'], seed=run['seed'] if run else 0)
    return documents(spec, split, opts, n_stories=n_stories or (run['n_stories'] if run else 20000))


def prepared_split(folder, split):
    """(the split's rows, decode(ids, mask) -> texts by the folder's tokenizer, [CLS] and [SEP] dropped)."""
    from transformers import AutoTokenizer

    from autoencoder import resolve_encoder
    data = Prepared(folder)
    tok = AutoTokenizer.from_pretrained(resolve_encoder(data.meta['encoder']))
    return (data.val if split == 'validation' else data.train), lambda ids, mask: tok.batch_decode(
        [r[1:m.sum() - 1] for r, m in zip(ids.tolist(), mask)], clean_up_tokenization_spaces=True)


def run_of(ckpt):
    """A checkpoint's config, with the prepared folder its run read."""
    return dict(ckpt['config'], data_dir=ckpt['data_dir'])


def check_model(name, key):
    """A scorer model that is not at hand (offline, a typo) fails here, in one line, before any work is done."""
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        common.die(f"{key}='{name}' cannot be loaded ({str(e).splitlines()[0][:150]}); pass a local folder "
                   f"(the module docstring has an offline command)")


def write_json(path, obj):
    """JSON has no NaN: an undefined number (the std of one seed, the PPL of empty texts) is written as null."""
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return [clean(v) for v in x] if isinstance(x, (list, tuple)) else x
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(clean(obj), f, indent=1)


def as_seen(encoder, texts, max_len, batch_size=256, desc=None):
    """
    The texts as the autoencoder sees them and as a perfect decoder writes them: tokenized by its encoder's
    tokenizer, cut to max_len tokens, detokenized (an uncased encoder lowercases, accents and spacing
    follow the tokenizer). Samples are decoded ids, so references and training texts go through the same
    round trip before MAUVE, PPL, Div or Mem compare them: the metrics then measure the model, not the
    tokenizer. A generator over the texts, in batches (the training texts for Mem may be many).
    """
    for i in common.progress(range(0, len(texts), batch_size), desc=desc, unit='batch', disable=desc is None):
        yield from encoder.decode(encoder.tokenize(list(texts[i:i + batch_size]), max_len)[0])


def run_encoder(diff_ckpt, ae_ckpt=''):
    """(TextEncoder, L) of the autoencoder a diffusion checkpoint (a loaded dict) was trained on, for the
    round trip of a samples file's references; (None, None) when that autoencoder is not at hand."""
    from autoencoder import TextEncoder
    path = ae_ckpt or diff_ckpt['autoencoder']['path']
    if not os.path.isfile(path):
        return None, None
    args = common.load_checkpoint(path, 'autoencoder')['model_args']
    return TextEncoder(args['encoder']), args['max_len']


def report(per_seed, by, out, head):
    """Mean and std over seeds of every metric, each with what produced it: printed, and written to `out`."""
    summary = seed_protocol([m for _, m in per_seed])
    for k, s in summary.items():
        s['by'] = by.get(k, "words() tokens per text (ref_*: the seed's references)")
    print(' | '.join(f'{k} {v}' for k, v in head['made'].items() if k != 'seconds_per_seed'))
    print(f"{'metric':<16}{'mean':>10}{'std':>10}  by ({len(per_seed)} seeds)")
    for k, s in summary.items():
        print(f"{k:<16}{s['mean']:>10.4f}{s['std']:>10.4f}  {s['by']}")
    result = dict(head, metrics=summary, per_seed=[dict(seed=seed, **m) for seed, m in per_seed])
    write_json(out, result)
    print(f"wrote {out}")
    return result
