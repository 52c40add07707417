"""
Evaluation of generated text, as in Section 6.1 / Table 4 of the paper (METHOD.md section 4).

Unconditional generation is scored with MAUVE against held-out references, perplexity under GPT-2-large,
Div (n-gram diversity) and Mem (4-gram overlap with the training split), each as mean and std over seeds;
conditional generation (ParaDetox) with BLEU-4. The functions below are pure: texts in, numbers out. Heavy
packages (torch, transformers, mauve) are imported inside the function that needs them, so that
`import evaluate` stays instant for the scripts that only want Div/Mem/BLEU.
"""
import math
import re
from collections import Counter

import numpy as np

# ---- generation metrics ----

# One word tokenizer for Div, Mem and BLEU, so the three always count the same units. Lowercase, then a token
# is either a run of letters/digits/underscore or a single punctuation character: "Tom's dog, Rex." ->
# tom ' s dog , rex . Splitting punctuation off keeps "dog," and "dog" from counting as different words; it is
# deliberately simple and dependency-free (not GPT-2 BPE, not sacrebleu's 13a), so numbers from other
# tokenizers are close but not identical.
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


def memorization(texts, train_texts, n=4):
    """Mem = share of generated n-grams (repetitions counted) that occur anywhere in the training texts."""
    train_grams = {g for t in train_texts for g in ngrams(words(t), n)}
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return sum(g in train_grams for g in grams) / len(grams) if grams else 0.0


def _bleu_stats(hyp, ref, max_n):
    """Clipped n-gram matches and hypothesis n-gram counts for n = 1..max_n (Papineni et al., 2002)."""
    matches, totals = [], []
    for n in range(1, max_n + 1):
        hyp_counts, ref_counts = Counter(ngrams(hyp, n)), Counter(ngrams(ref, n))
        # clipping: a hypothesis n-gram is credited at most as often as it occurs in the reference
        matches.append(sum(min(c, ref_counts[g]) for g, c in hyp_counts.items()))
        totals.append(max(len(hyp) - n + 1, 0))
    return matches, totals


def _bleu_from_stats(matches, totals, hyp_len, ref_len, smooth):
    if hyp_len == 0:
        return 0.0
    # smooth=True is Lin & Och (2004) "BLEU+1": add one to numerator and denominator for n > 1 only, so one
    # missing 4-gram does not zero a whole sentence's score; unigram precision stays unsmoothed.
    precisions = []
    for n, (m, t) in enumerate(zip(matches, totals), start=1):
        add = 1 if smooth and n > 1 else 0
        precisions.append((m + add) / (t + add) if t + add else 0.0)
    if min(precisions) == 0.0:
        return 0.0  # geometric mean with a zero factor
    brevity_penalty = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity_penalty * math.exp(sum(math.log(p) for p in precisions) / len(precisions))


def bleu(hypotheses, references, max_n=4):
    """Corpus BLEU-max_n in [0, 1], one reference per hypothesis, no smoothing, on words() tokens.
    Corpus-level means matches, n-gram counts and lengths are summed over all pairs before the ratios."""
    assert len(hypotheses) == len(references)
    matches, totals, hyp_len, ref_len = [0] * max_n, [0] * max_n, 0, 0
    for h, r in zip(hypotheses, references):
        h, r = words(h), words(r)
        m, t = _bleu_stats(h, r, max_n)
        matches = [a + b for a, b in zip(matches, m)]
        totals = [a + b for a, b in zip(totals, t)]
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
    return _bleu_from_stats(matches, totals, hyp_len, ref_len, smooth=False)


def sentence_bleu(hyp, ref, max_n=4):
    """Per-sample BLEU with add-one smoothing for n > 1 (diagnostics, e.g. decoder robustness, Fig. 4)."""
    h, r = words(hyp), words(ref)
    return _bleu_from_stats(*_bleu_stats(h, r, max_n), len(h), len(r), smooth=True)


def load_causal_lm(name_or_path, device='cpu'):
    """A Hugging Face causal LM and its tokenizer (GPT-2-large in the paper), ready for perplexity()."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # GPT-2 has none; padded positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path).to(device).eval()
    return model, tokenizer


def perplexity(texts, model, tokenizer, batch_size=8, device='cpu', max_length=1024):
    """exp(total NLL / total predicted tokens), pooled over all texts (a long text weighs more than a short one).

    Texts are tokenized without the tokenizer's own special tokens. If the tokenizer has a bos_token (GPT-2:
    <|endoftext|>) it is prepended, so the first word is predicted from it and scored too; without one the first
    token is only context. Texts are cut to max_length tokens (BOS included); the rest is not scored.
    The model must already be on `device`; it is put in eval mode so dropout does not perturb the score.
    """
    import torch
    import torch.nn.functional as F
    model.eval()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(texts), batch_size):
        ids = [(bos + tokenizer(t, add_special_tokens=False)['input_ids'])[:max_length]
               for t in texts[i:i + batch_size]]
        T = max(len(x) for x in ids)
        if T < 2:
            continue  # only empty texts (or a lone BOS): nothing to predict
        # right-pad with token 0: padded positions sit after every real token, so a causal model never attends
        # to them from a real position, and their predictions are masked out of the sum below
        input_ids = torch.tensor([x + [0] * (T - len(x)) for x in ids], device=device)  # (B, T)
        mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids], device=device)  # (B, T)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
        if logits.element_size() < 4:
            logits = logits.float()  # a bf16/fp16 model: take log_softmax in fp32 (an fp64 model stays fp64)
        # position t predicts token t+1
        logp = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        total_nll -= (logp * mask[:, 1:]).sum().item()
        total_tokens += mask[:, 1:].sum().item()
    return math.exp(total_nll / total_tokens) if total_tokens else float('nan')


def encoder_features(texts, name_or_path, max_length=256, batch_size=32, device='cpu'):
    """Mean-pooled (over real tokens) last hidden states of a Hugging Face encoder, as a (n, d) float32 array."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModel.from_pretrained(name_or_path).to(device).eval()
    feats = []
    for i in range(0, len(texts), batch_size):
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
                              verbose=False, **mauve_kwargs)
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
