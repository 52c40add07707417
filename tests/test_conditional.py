"""
Conditional generation (paper Sec. 7): the source must matter, a dropped source must not, guidance weight 1
is plain conditional sampling, and a small source -> target task learns on the CPU far beyond what the
unconditional model reaches. Bad pair files end in one line.
"""
import json
import random
import re

import pytest
import torch

import diffusion
import pipeline
import train_ae
import train_diff
from corpus import Prepared, pair_documents
from model import Denoiser


def cond_denoiser(seed=0):
    torch.manual_seed(seed)
    m = Denoiser(latent_dim=8, n_latents=4, dim=32, n_layers=2, n_heads=2, cond_layers=1, n_cond_latents=4)
    torch.nn.init.normal_(m.out_proj.weight, std=0.5)  # zero-init would make every output 0, source or not
    return m.eval()


def test_source_matters_and_dropped_source_does_not():
    m = cond_denoiser()
    z, t, sc = torch.randn(3, 4, 8), torch.rand(3), torch.zeros(3, 4, 8)
    src_a, src_b = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    with torch.no_grad():
        assert not torch.allclose(m(z, t, sc, src_a), m(z, t, sc, src_b))
        dropped = torch.ones(3, dtype=torch.bool)
        assert torch.equal(m(z, t, sc, src_a, dropped), m(z, t, sc, src_b, dropped))
        # dropping is per example: only the dropped row forgets its source
        mixed = torch.tensor([True, False, False])
        out_a, out_b = m(z, t, sc, src_a, mixed), m(z, t, sc, src_b, mixed)
        assert torch.equal(out_a[0], out_b[0]) and not torch.allclose(out_a[1:], out_b[1:])
    with pytest.raises(ValueError):
        m(z, t, sc)  # a conditional model never silently runs without its source


def test_guidance_one_is_plain_conditional():
    m = cond_denoiser()
    src = torch.randn(5, 4, 8)
    kw = dict(shape=(5, 4, 8), steps=8, d=5.0, t_min=1e-3, cond=src)
    plain = diffusion.sample(m, generator=torch.Generator().manual_seed(0), **kw)
    w1 = diffusion.sample(m, guidance=1.0, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(w1, plain)


def test_guidance_formula():
    # one step from t = 1 returns the first guided estimate: x0_c + (w - 1) (x0_c - x0_null), where the
    # null half is the same model with every source dropped, all in one batched pass
    m = cond_denoiser()
    src, w = torch.randn(5, 4, 8), 3.0
    out = diffusion.sample(m, (5, 4, 8), 1, 5.0, 1e-3, cond=src, guidance=w,
                           generator=torch.Generator().manual_seed(0))
    z = torch.randn((5, 4, 8), generator=torch.Generator().manual_seed(0))  # the sampler's first draw
    t, sc = torch.ones(5), torch.zeros(5, 4, 8)
    with torch.no_grad():
        x0_c, x0_null = m(z, t, sc, src), m(z, t, sc, src, torch.ones(5, dtype=torch.bool))
    torch.testing.assert_close(out, x0_c + (w - 1) * (x0_c - x0_null), rtol=1e-4, atol=1e-5)
    assert (out - x0_c).abs().max() > 1e-3  # a real weight changes the result


def test_pair_file_errors(tmp_path):
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(json.dumps(dict(source='a')) + '\n')
    with pytest.raises(SystemExit, match="bad.jsonl:1 has no string field 'target'"):
        list(pair_documents(str(bad), 'train', {}))
    bad.write_text(json.dumps(dict(source='a', target='b')) + '\n' + json.dumps(dict(src='a', target='b')) + '\n')
    with pytest.raises(SystemExit, match="bad.jsonl:2 has no string field 'source'"):
        list(pair_documents(str(bad), 'train', {}))
    with pytest.raises(SystemExit, match="is not 'stories', 'hf:NAME"):
        list(pair_documents(str(tmp_path / 'pairs.txt'), 'train', {}))


def test_long_sources_are_cut_and_counted(tiny_encoder_path, tmp_path):
    pairs = [dict(source='red ' * (30 if i % 4 == 0 else 2), target='big dog') for i in range(40)]
    with open(tmp_path / 'pairs.jsonl', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in pairs)
    (tmp_path / 'texts.txt').write_text('big dog\nred red\n' * 20)
    train_ae.main(dict(train_ae.config, data=str(tmp_path / 'texts.txt'), val_size=8, eval_size=8,
                       encoder=tiny_encoder_path, max_len=8, n_latents=2, n_layers=1, head_dim=16, batch_size=8,
                       micro_batch_size=8, max_steps=1, eval_interval=1, device='cpu', compile=False,
                       out_dir=str(tmp_path / 'ae'), stats_size=8))
    train_diff.main(dict(train_diff.config, task='conditional', data=str(tmp_path / 'pairs.jsonl'), val_size=8,
                         eval_size=8, ae_ckpt=str(tmp_path / 'ae' / 'ckpt.pt'), size='tiny', cond_layers=1,
                         src_max_len=12, batch_size=8, micro_batch_size=8, max_steps=1, eval_interval=1,
                         eval_samples=1, sample_steps=1, device='cpu', compile=False, out_dir=str(tmp_path / 'd')))
    log = open(tmp_path / 'd' / 'log.txt').read()
    # 40 pairs, every 4th source 30 words long (32 tokens with [CLS] and [SEP]) against src_max_len = 12;
    # the first 8 pairs are held out (2 long sources), the other 32 train (8 long sources); no target is cut
    meta = Prepared(torch.load(tmp_path / 'd' / 'ckpt.pt', weights_only=True)['data_dir']).meta
    assert [meta[s]['sources_cut'] for s in ('train', 'val')] == [8, 2]
    assert [meta[s]['rows'] for s in ('train', 'val')] == [32, 8] and meta['train']['targets_cut'] == 0
    assert '8 sources longer than 12 and 0 targets longer than L were cut' in log


WORDS = ['red', 'blue', 'green', 'big', 'small', 'old', 'new', 'hot', 'cold', 'dark']


def test_small_task_learns_far_beyond_unconditional(tiny_encoder_path, tmp_path):
    """
    Source 'w1 w2' -> target 'w2 w1' over 10 words (90 ordered pairs; 70 to train, 20 held out). The
    autoencoder learns the 90 two-word texts; then a conditional and an unconditional denoiser are trained
    on the 70 training pairs, and both write a text for each held-out source. The unconditional model can
    only be right by chance (about 1 in 90); the conditional one must read its source.
    """
    pairs = [dict(source=f'{a} {b}', target=f'{b} {a}') for a in WORDS for b in WORDS if a != b]
    random.Random(0).shuffle(pairs)
    for name, rows in (('train', pairs[:70]), ('val', pairs[70:])):
        with open(tmp_path / f'{name}.jsonl', 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in rows)
    with open(tmp_path / 'texts.txt', 'w') as f:
        f.writelines(r['target'] + '\n' for r in pairs)
    train_ae.main(dict(train_ae.config, data=str(tmp_path / 'texts.txt'), val_data=str(tmp_path / 'texts.txt'),
                       encoder=tiny_encoder_path, max_len=6, n_latents=2, n_layers=1, head_dim=16, batch_size=32,
                       micro_batch_size=32, max_steps=300, eval_interval=300, log_interval=100, lr=2e-3, warmup=20,
                       act_mask=0.0, act_delta=1.0, latent_dropout=0.0, device='cpu', compile=False,
                       out_dir=str(tmp_path / 'ae'), stats_size=90, eval_size=90))
    exact = {}
    for task in ('conditional', 'unconditional'):
        flags = dict(train_diff.config, task=task, data=str(tmp_path / ('train.jsonl' if task == 'conditional'
                     else 'texts.txt')), val_data=str(tmp_path / 'val.jsonl' if task == 'conditional' else
                     tmp_path / 'texts.txt'), ae_ckpt=str(tmp_path / 'ae' / 'ckpt.pt'), size='tiny', cond_layers=1,
                     src_max_len=6, batch_size=64, micro_batch_size=64, max_steps=600, eval_interval=600,
                     eval_samples=0, sample_steps=2, log_interval=200, lr=2e-3, warmup=20, ema_decay=0.99,
                     device='cpu', compile=False, out_dir=str(tmp_path / task))
        train_diff.main(flags)
        denoiser, ae, ckpt = pipeline.load_pipeline(str(tmp_path / task / 'ckpt.pt'))
        val = pairs[70:]
        cond = ae.encode([r['source'] for r in val], normalize=True) if task == 'conditional' else None
        texts, _ = pipeline.generate(denoiser, ae, len(val), 20, ckpt['diffusion_args']['schedule_d'],
                                      ckpt['diffusion_args']['t_min'], cond=cond)
        exact[task] = sum(t == r['target'] for t, r in zip(texts, val)) / len(val)
    print('exact match on held-out sources:', exact)
    assert exact['conditional'] >= 0.5 and exact['unconditional'] <= 0.15, exact
