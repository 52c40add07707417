"""
evaluate.py as a user runs it: every latent diagnostic end to end, generation from a checkpoint with the
mean/std over seeds, the conditional metrics on a known answer, and bad input ending in one line. Tiny
checkpoints trained in-process (a few steps) on the tiny random encoder of conftest.py, a tiny random GPT-2
as the perplexity model: CPU, the whole file in well under a minute and a half.
"""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import eval_diagnostics
import evaluate
import train_ae
import train_diff
from diffusion import SAMPLERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




@pytest.fixture(scope='module')
def run(tiny_encoder_path, tmp_path_factory):
    """A tiny autoencoder, a tiny diffusion model on it, and a tiny GPT-2 folder: paths in a dict."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    root = tmp_path_factory.mktemp('eval_run')
    ae_cfg = dict(train_ae.config, data='stories', n_stories=200, val_size=64, eval_size=64, stats_size=64,
                  encoder=tiny_encoder_path, max_len=28, n_latents=4, n_layers=1, head_dim=16, batch_size=8,
                  micro_batch_size=8, max_steps=4, eval_interval=4, log_interval=4, lr=1e-3, warmup=1,
                  device='cpu', compile=False, out_dir=str(root / 'ae'))
    train_ae.main(ae_cfg)
    diff_cfg = dict(train_diff.config, data='stories', n_stories=200, val_size=64, eval_size=64, size='tiny',
                    ae_ckpt=str(root / 'ae' / 'ckpt.pt'), batch_size=8, micro_batch_size=8, max_steps=4,
                    eval_interval=4, log_interval=4, eval_samples=1, sample_steps=2, lr=1e-3, warmup=1,
                    device='cpu', compile=False, out_dir=str(root / 'diff'), guide_step=2)  # keeps a guide
    train_diff.main(diff_cfg)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_path)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=len(tokenizer),
                                      bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
    gpt2.save_pretrained(root / 'gpt2')
    tokenizer.save_pretrained(root / 'gpt2')
    return dict(root=root, ae=str(root / 'ae' / 'ckpt.pt'), diff=str(root / 'diff' / 'ckpt.pt'),
                gpt2=str(root / 'gpt2'), encoder=tiny_encoder_path)


def cfg(**kw):
    return dict(evaluate.config, device='cpu', batch_size=16, **kw)


def finite_numbers(obj):
    """Every number in a JSON tree (the `made` provenance block aside)."""
    if isinstance(obj, dict):
        return [x for k, v in obj.items() if k != 'made' for x in finite_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in finite_numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


EXPECTED = dict(
    reconstruction=('token_acc', 'exact_match', 'acc_by_position'),
    decoder_robustness=('sigma', 'bleu', 'z_std', 'space'),
    smoothness=('mu', 't', 'scorer', 'curves'),
    diffusion_robustness=('gamma', 'mse', 'same_text', 'inject_step'),
    mismatch=('mse_generated', 'mse_real', 'space'),
    steps=('steps', 'quality_name', *SAMPLERS),  # a curve per sampler of diffusion.py
)


def test_every_diagnostic_writes_json_and_png(run, tmp_path):
    out = tmp_path / 'diag'
    evaluate.main(cfg(mode='diagnostics', ckpt=run['diff'], ppl_model=run['gpt2'], diag_n=8, steps=4,
                      interp_points=3, smooth_t='0,0.2', sigmas='0,1', gammas='0,0.5', steps_grid='2,4',
                      out=str(out)))
    for name, keys in EXPECTED.items():
        assert (out / f'{name}.png').stat().st_size > 0, name
        r = json.loads((out / f'{name}.json').read_text())
        assert set(keys) <= set(r), (name, set(keys) - set(r))
        numbers = finite_numbers(r)
        assert numbers and all(math.isfinite(x) for x in numbers), name
    smooth = json.loads((out / 'smoothness.json').read_text())
    assert smooth['scorer'].startswith('PPL under') and len(smooth['curves']) == 3  # direct + 2 levels
    assert all(len(v) == 3 for v in smooth['curves'].values())
    rob = json.loads((out / 'diffusion_robustness.json').read_text())
    assert rob['mse'][0] == 0.0 and rob['same_text'][0] == 1.0  # no injection, the same seed: the same run
    recon = json.loads((out / 'reconstruction.json').read_text())
    assert 0.0 <= recon['exact_match'] <= recon['token_acc'] <= 1.0
    # steps: every sampler@grid of the default series, each quantity per seed (3 seeds) and as mean and std
    st = json.loads((out / 'steps.json').read_text())
    assert st['series'] == ['ddim@uniform', 'ancestral@uniform', 'heun@uniform', 'dpm2m@uniform', 'dpm2m@logsnr']
    for name in ('ddim', 'dpm2m@logsnr'):
        assert [len(v) for v in st[name]['mauve_per_seed']] == [3, 3] and len(st[name]['quality_std']) == 2
        assert all(0.0 <= m <= 1.0 for m in st[name]['mauve'])
        assert st[name]['quality'][0] == pytest.approx(sum(st[name]['quality_per_seed'][0]) / 3)
    with pytest.raises(SystemExit, match="steps_samplers: 'euler' is not SAMPLER or SAMPLER@GRID"):
        evaluate.main(cfg(mode='diagnostics', ckpt=run['diff'], steps_samplers='ddim,euler', out=str(tmp_path / 'x')))


def test_steps_diagnostic_samples_with_the_guide_as_sample_py_does(run, monkeypatch):
    # diag_steps with a guide draws exactly the latents of diffusion.sample(guide=, guidance=w) for each seed,
    # and a guide that differs from the model changes them (so the guide is really used)
    from diffusion import sample
    from pipeline import denoiser_of, load_pipeline
    denoiser, ae, ckpt = load_pipeline(run['diff'])
    torch.manual_seed(3)
    guide = denoiser_of(ckpt, {k: torch.randn_like(v) * 0.1 for k, v in ckpt['ema'].items()}, 'a guide', 'cpu')
    d, t_min = ckpt['diffusion_args']['schedule_d'], ckpt['diffusion_args']['t_min']
    seen = []
    monkeypatch.setattr(eval_diagnostics, 'sample', lambda *a, **kw: seen.append(sample(*a, **kw)) or seen[-1])

    def direct(seed, **kw):
        shape = (4, ae.args['n_latents'], ae.args['dim'])
        return sample(denoiser, shape, 3, d, t_min, 'ddim', generator=torch.Generator().manual_seed(seed), **kw)
    r = eval_diagnostics.diag_steps(denoiser, ae, 4, [3], d, t_min, seed=7, seeds=2, series=[('ddim', 'uniform')],
                                    guide=guide, guidance=2.0)
    assert r['autoguidance'] == 2.0 and len(seen) == 2
    torch.testing.assert_close(seen[0], direct(7, guide=guide, guidance=2.0))
    torch.testing.assert_close(seen[1], direct(8, guide=guide, guidance=2.0))
    assert (seen[0] - direct(7)).abs().max() > 1e-3
    seen.clear()  # no guide: plain sampling, recorded as w = 1 whatever guidance says
    r = eval_diagnostics.diag_steps(denoiser, ae, 4, [3], d, t_min, seed=7, series=[('ddim', 'uniform')], guidance=2.0)
    assert r['autoguidance'] == 1.0
    torch.testing.assert_close(seen[0], direct(7))


def test_autoguidance_reaches_the_steps_diagnostic_and_generation(run, tmp_path):
    # --autoguidance=2 on a model that keeps a guide: the steps sweep records w = 2, generation names its JSON so;
    # evaluate.py's default (1, the paper's protocol) samples plainly
    evaluate.main(cfg(mode='diagnostics', ckpt=run['diff'], diags='steps', steps_grid='2', steps_seeds=1, diag_n=4,
                      steps_samplers='ddim', ppl_model='', autoguidance=2.0, out=str(tmp_path / 'd')))
    assert json.loads((tmp_path / 'd' / 'steps.json').read_text())['autoguidance'] == 2.0
    for w, name in ((2.0, 'eval_ddim2_ag2.json'), (1.0, 'eval_ddim2.json')):  # beside the checkpoint
        evaluate.main(cfg(ckpt=run['diff'], num_samples=4, num_seeds=1, steps=2, ppl_model='', autoguidance=w,
                          mauve_features='encoder', mauve_model=run['encoder']))
        assert json.loads((run['root'] / 'diff' / name).read_text())['made']['autoguidance'] == w
    assert evaluate.config['autoguidance'] == 1.0


def test_training_texts_are_read_in_chunks_and_sampled_by_row(run):
    # Mem's training texts come in chunks (never all at once), the first n when capped; smoothness reads only the
    # rows it draws, and draws the same texts as sampling from the whole decoded list would
    from common import load_checkpoint
    from eval_common import run_of, sampled_texts, text_chunks, texts_of
    r = run_of(load_checkpoint(run['diff'], 'diffusion'))
    cfg = dict(evaluate.config)
    everything = texts_of('', 'train', cfg, r)[0]
    chunks, name = text_chunks('', 'train', cfg, r, chunk=64)
    sizes = [len(c) for c in chunks]
    assert max(sizes) == 64 and sum(sizes) == len(everything) > 64 and 'first' not in name
    chunks, name = text_chunks('', 'train', cfg, r, n=70, chunk=64)
    assert [t for c in chunks for t in c] == everything[:70] and 'the first 70' in name
    import random
    size = lambda N: min(N, 9) // 2 * 2  # noqa: E731
    expect = [everything[i] for i in random.Random(4).sample(range(len(everything)), 8)]
    assert sampled_texts('', 'train', cfg, r, size, seed=4) == expect
    # a raw 'stories' source: the run's own n_stories stories (not `cap` new ones), drawn as from the whole list
    stories = texts_of('stories', 'train', cfg, r)[0]
    assert len(stories) == r['n_stories'] == 200
    assert sampled_texts('stories', 'train', cfg, r, size, seed=4, cap=5000) == \
        [stories[i] for i in random.Random(4).sample(range(200), 8)]
    assert sampled_texts('stories', 'train', cfg, r, size, seed=4, cap=50) == \
        [stories[i] for i in random.Random(4).sample(range(50), 8)]
    chunks, name = text_chunks('', 'train', cfg, r, n=10 ** 6)
    assert 'first' not in name and sum(len(c) for c in chunks) == len(everything)  # a cap that does not bind
    with pytest.raises(SystemExit, match="no_such.txt"):  # a bad raw source fails when asked, not when read
        text_chunks(os.path.join(str(run['root']), 'no_such.txt'), 'train', cfg, r)


def test_diagnostics_without_ppl_model_and_autoencoder_only(run, tmp_path):
    # no scorer LM on the story corpus: smoothness and steps score with the exact story checker
    evaluate.main(cfg(mode='diagnostics', ckpt=run['diff'], ppl_model='', diags='smoothness,reconstruction',
                      diag_n=4, steps=2, interp_points=2, smooth_t='0.1', out=str(tmp_path / 'a')))
    assert 'valid stories' in json.loads((tmp_path / 'a' / 'smoothness.json').read_text())['scorer']
    recon = json.loads((tmp_path / 'a' / 'reconstruction.json').read_text())
    assert 'valid stories' in recon['quality_name'] and recon['quality'] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 texts
    # an autoencoder alone: 'all' means the diagnostics that need no denoiser, and neither loads the PPL model
    evaluate.main(cfg(mode='diagnostics', ae_ckpt=run['ae'], ppl_model=str(tmp_path / 'no_lm'), diag_n=4,
                      sigmas='0,0.5', out=str(tmp_path / 'b')))
    assert sorted(os.listdir(tmp_path / 'b')) == ['decoder_robustness.json', 'decoder_robustness.png',
                                                   'reconstruction.json', 'reconstruction.png']
    with pytest.raises(SystemExit, match="needs a diffusion checkpoint"):
        evaluate.main(cfg(mode='diagnostics', ae_ckpt=run['ae'], diags='mismatch', out=str(tmp_path / 'c')))


def test_reconstruction_scores_the_decoded_texts(run):
    # the quality callable sees exactly decode(encode(x)), the texts a generator's output would become
    from autoencoder import load_autoencoder
    from common import load_checkpoint
    from corpus import stories
    ae = load_autoencoder(load_checkpoint(run['ae'], 'autoencoder'), 'cpu')
    texts = stories(6, seed=5)
    r = eval_diagnostics.diag_reconstruction(ae, texts, batch_size=4, quality=list, quality_name='the texts')
    assert r['quality'] == ae.decode(ae.encode(texts))[1] and r['quality_name'] == 'the texts'
    assert 'quality' not in eval_diagnostics.diag_reconstruction(ae, texts, batch_size=4)


@pytest.mark.parametrize('sampler', ['ddim', 'ancestral', 'heun'])
def test_injection_loop_mirrors_the_sampler(run, sampler):
    # the diagnostics' injection is diffusion.sample's perturb hook: with gamma = 0 it is the plain run
    from diffusion import sample
    from pipeline import load_pipeline
    denoiser, ae, ckpt = load_pipeline(run['diff'])
    d, shape = ckpt['diffusion_args'], (3, ae.args['n_latents'], ae.args['dim'])
    ref = sample(denoiser, shape, 5, d['schedule_d'], d['t_min'], sampler, generator=torch.Generator().manual_seed(7))
    mine = eval_diagnostics.sample_with_injection(denoiser, shape, 5, d['schedule_d'], d['t_min'], sampler, seed=7,
                                          inject_step=2, gamma=0.0)
    assert torch.equal(ref, mine)
    shifted = eval_diagnostics.sample_with_injection(denoiser, shape, 5, d['schedule_d'], d['t_min'], sampler, seed=7,
                                             inject_step=2, gamma=1.0)
    assert not torch.equal(ref, shifted)


def test_reencode_cuts_after_the_first_sep():
    # E(D(z)) must see the decoded text as a tokenizer would give it: [CLS] ... [SEP] then padding, masked
    from types import SimpleNamespace
    seen = {}

    def encode(ids, mask, normalize):
        seen.update(ids=ids, mask=mask)
        return ids.float()[..., None]
    ae = SimpleNamespace(encoder=SimpleNamespace(sep_id=102, pad_id=0), encode=encode)
    eval_diagnostics.reencode(ae, torch.tensor([[101, 7, 8, 102, 9, 102], [101, 7, 7, 7, 7, 7]]), batch_size=8)
    assert seen['ids'].tolist() == [[101, 7, 8, 102, 0, 0], [101, 7, 7, 7, 7, 7]]  # no [SEP]: all of it is text
    assert seen['mask'].tolist() == [[True] * 4 + [False] * 2, [True] * 6]


def test_generation_from_checkpoint_mean_std_over_seeds(run, tmp_path):
    out = tmp_path / 'gen.json'
    common = dict(ckpt=run['diff'], num_samples=8, num_seeds=2, steps=2, ppl_model=run['gpt2'],
                  mauve_features='encoder', mauve_model=run['encoder'], mauve_max_len=32, out=str(out))
    evaluate.main(cfg(**common))
    r = json.loads(out.read_text())
    assert [p['seed'] for p in r['per_seed']] == [0, 1]
    assert {'mauve', 'ppl', 'div', 'mem', 'valid', 'len_mean', 'ref_len_mean'} <= set(r['metrics'])
    for key, s in r['metrics'].items():
        values = np.array([np.nan if p[key] is None else p[key] for p in r['per_seed']], dtype=float)
        np.testing.assert_allclose(s['mean'] if s['mean'] is not None else np.nan, np.mean(values), equal_nan=True)
        np.testing.assert_allclose(s['std'] if s['std'] is not None else np.nan, np.std(values, ddof=1),
                                   equal_nan=True)
        assert s['by'], key  # every number says what produced it
    assert run['encoder'] in r['metrics']['mauve']['by'] and run['gpt2'] in r['metrics']['ppl']['by']
    assert (r['made']['steps'], r['made']['sampler']) == (2, 'ddim')
    # repeatable: the texts were written beside the JSON with their seeds; scoring them again gives the same
    samples = tmp_path / 'gen.samples.jsonl'
    assert len(samples.read_text().splitlines()) == 16
    again = evaluate.main(cfg(**dict(common, samples=str(samples), out=str(tmp_path / 'again.json'))))
    assert again['per_seed'] == r['per_seed']


def test_conditional_bleu_and_bertscore(run, tmp_path):
    targets = ['tom found a red ball in the park and gave it to anna .',
               'the small cat sat on the warm mat all day long .',
               'she was very happy to see her old friend again today .']

    def score(generations, name):
        path = tmp_path / f'{name}.jsonl'
        path.write_text(''.join(json.dumps(dict(source=t, target=t, generation=g)) + '\n'
                                for t, g in zip(targets, generations)))
        return evaluate.main(cfg(mode='conditional', samples=str(path), bertscore_model=run['encoder']))['metrics']

    same = score(targets, 'same')
    assert same['bleu4']['mean'] == pytest.approx(100.0) and 'tok:13a' in same['bleu4']['by']
    assert same['rougeL']['mean'] == pytest.approx(1.0)
    assert same['bertscore_f1']['mean'] == pytest.approx(1.0, abs=1e-5)
    label = same['bertscore_f1']['by']
    assert f"model {run['encoder']}, layer 1," in label and 'idf False' in label and 'baseline False' in label
    other = score(['a dog ran far away from the big house .', 'it rained .', ''], 'other')
    assert other['bleu4']['mean'] < 10 and other['rouge2']['mean'] < 0.1 and other['bertscore_f1']['mean'] < 0.99


def test_bad_input_ends_in_one_line(tmp_path):
    for kw, msg in ((dict(samples=str(tmp_path / 'missing.jsonl')), 'not found'),
                    (dict(mode='bogus'), "unknown mode 'bogus'"),
                    (dict(), 'needs samples=PATH'),
                    (dict(mode='conditional', samples=str(tmp_path / 'missing.jsonl')), 'not found')):
        with pytest.raises(SystemExit) as e:
            evaluate.main(cfg(**kw))
        text = str(e.value)
        assert text.startswith('error:') and msg in text and '\n' not in text
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"text": "fine"}\n{"txt": "no"}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2 has no string field 'text'"):
        evaluate.main(cfg(samples=str(bad), refs='stories'))
    good = tmp_path / 'good.jsonl'
    good.write_text('{"text": "fine"}\n')
    with pytest.raises(SystemExit, match=r"mauve_model='.*nowhere' cannot be loaded"):  # before any work
        evaluate.main(cfg(samples=str(good), refs='stories', mauve_features='encoder',
                          mauve_model=str(tmp_path / 'nowhere')))
    # and from the command line: exit status 1, one line on stderr, no traceback
    proc = subprocess.run([sys.executable, 'evaluate.py', '--mode=bogus'], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE='1'), timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == ["error: unknown mode 'bogus' (use "
                                                                         "generation, conditional, diagnostics, long)"]


def test_sample_several_seeds_then_score_over_seeds(run, tmp_path, capsys):
    import sample
    from pipeline import generate, load_pipeline
    path = tmp_path / 'samples.jsonl'
    sample.main(dict(sample.config, ckpt=run['diff'], num_samples=5, num_seeds=2, seed=3, steps=2, batch_size=4,
                     out=str(path), device='cpu'))
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert [r['seed'] for r in rows] == [3] * 5 + [4] * 5
    # trained on the embedded stories: every printed sample is marked by corpus.is_valid_story, and counted
    from corpus import is_valid_story
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    assert printed == [f"[{'valid' if is_valid_story(r['text']) else 'invalid'}] {r['text']}" for r in rows]
    assert f"{sum(is_valid_story(r['text']) for r in rows)} of 10 are valid stories" in captured.err
    denoiser, ae, ckpt = load_pipeline(run['diff'])
    d = ckpt['diffusion_args']
    for seed in (3, 4):  # each seed's rows are exactly what that seed generates
        texts = generate(denoiser, ae, 5, 2, d['schedule_d'], d['t_min'], seed=seed, batch_size=4)[0]
        assert [r['text'] for r in rows if r['seed'] == seed] == texts
    r = evaluate.main(cfg(samples=str(path), ppl_model='', mauve_features='encoder', mauve_model=run['encoder'],
                          mauve_max_len=32))
    assert [p['seed'] for p in r['per_seed']] == [3, 4]
    assert r['metrics']['div']['std'] is not None and math.isfinite(r['metrics']['div']['std'])  # not nan: 2 seeds
    assert 'tokenizer round trip' in r['metrics']['mauve']['by']  # the references went through it too


def test_roundtrip_one_sentence(run, capsys):
    import sample
    sample.main(dict(sample.config, ae_ckpt=run['ae'], roundtrip='tom found a red ball in the park.', device='cpu'))
    out = capsys.readouterr().out
    assert 'input    tom found a red ball in the park.' in out
    assert 'latent   z (4, 32)' in out and 'normalised' in out
    decoded = re.search(r'^decoded  (.*)$', out, re.M).group(1)
    from autoencoder import load_autoencoder
    from common import load_checkpoint
    ae = load_autoencoder(load_checkpoint(run['ae'], 'autoencoder'), 'cpu')
    assert decoded == ae.decode(ae.encode(['tom found a red ball in the park.']))[1][0]


def test_reference_round_trip_matches_the_decoder(run):
    # the round trip references go through is what a perfect decoder writes: the autoencoder's tokenizer,
    # cut to L, detokenized (an uncased encoder lowercases)
    from autoencoder import load_autoencoder
    from common import load_checkpoint
    from eval_common import as_seen
    ae = load_autoencoder(load_checkpoint(run['ae'], 'autoencoder'), 'cpu')
    texts = ['Tom found a RED ball.', 'x ' * 100]
    seen = list(as_seen(ae.encoder, texts, ae.args['max_len'], batch_size=1))
    assert seen[0] == 'tom found a red ball.'
    ids, mask, cut = ae.encoder.tokenize(texts, ae.args['max_len'])
    assert cut == 1 and seen[1] == ae.encoder.decode(ids)[1] and len(seen[1].split()) == ae.args['max_len'] - 2
