"""
The autoencoder of autoencoder.py on the tiny random encoder of conftest.py: it can memorise a handful of
sentences exactly, each augmentation does what its docstring says and only in training mode, the
tokenizer wrapper truncates / masks / decodes as documented, the latent statistics normalise, and the
optional KL term is the Gaussian KL of the module's own outputs. CPU, about 10 s in all.
"""
import pytest
import torch

from autoencoder import (Autoencoder, TextEncoder, latent_feature_dropout, mask_activations, noise_activations,
                         perturb_activations)




@pytest.fixture(scope='module')
def encoder(tiny_encoder_path):
    return TextEncoder(tiny_encoder_path)


def _batch(args, B=6, seed=0):
    """Random encoder states, ids and a padding mask of varied lengths (no encoder needed)."""
    g = torch.Generator().manual_seed(seed)
    L, d = args['max_len'], args['dim']
    h = 2.0 + 3.0 * torch.randn(B, L, d, generator=g)
    ids = torch.randint(1000, 2000, (B, L), generator=g)
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None] < lengths[:, None]
    ids[~mask] = 0
    return h, ids, mask


# -----------------------------------------------------------------------------
# the autoencoder can memorise


TEXTS = ["the cat sat on the mat", "a dog ran home.", "she likes green apples", "we went to the river",
         "he reads a big book"]


def test_overfits_a_handful_of_sentences(tiny_ae_args, encoder):
    torch.manual_seed(0)
    ae = Autoencoder(tiny_ae_args, encoder)
    ids, mask, n_trunc = encoder.tokenize(TEXTS, tiny_ae_args['max_len'])
    assert n_trunc == 0
    h = encoder(ids, mask)
    ae.set_encoder_stats(h, mask)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    ae.train()
    for _ in range(150):  # 100% accuracy is reached after ~80 steps on this code; 150 leaves a margin
        loss, stats = ae(h, ids, mask, act_mask=0.0, act_delta=1.0, latent_dropout=0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ae.eval()
    with torch.no_grad():
        _, stats = ae(h, ids, mask)
    assert stats['acc'].item() == 1.0
    dec_ids, texts = ae.decode(ae.encode(TEXTS))
    assert texts == TEXTS
    assert torch.equal(dec_ids[mask], ids[mask])  # the decoder also writes [CLS] and the [SEP]


# -----------------------------------------------------------------------------
# augmentations


def test_mask_activations_zeroes_a_fraction_of_positions():
    torch.manual_seed(0)
    h = torch.rand(200, 500, 4) + 1.0  # no zeros of its own
    out = mask_activations(h, 0.3)
    zero_pos = (out == 0).all(-1)
    kept_pos = (out == h).all(-1)
    assert torch.all(zero_pos ^ kept_pos)  # a position is zeroed entirely or left alone
    assert abs(zero_pos.float().mean().item() - 0.3) < 0.01
    assert torch.equal(mask_activations(h, 0.0), h)


def test_noise_activations_statistics():
    torch.manual_seed(0)
    x = torch.randn(100, 100, 100)  # unit variance input
    for delta in (0.7, 0.3):
        y = noise_activations(x, delta)
        assert abs(y.mean().item()) < 0.01
        assert abs(y.var().item() - 1.0) < 0.01  # variance-preserving
        corr = torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1].item()
        assert abs(corr - delta) < 0.01
    assert torch.equal(noise_activations(x, 1.0), x)


def test_latent_feature_dropout():
    torch.manual_seed(0)
    z = torch.randn(200, 16, 64)
    out = latent_feature_dropout(z, 0.4)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - 0.4) < 0.01
    assert torch.equal(out[~dropped], z[~dropped])  # the rest is left unscaled (no 1 / (1 - p))
    # individual features, not whole latent vectors
    assert not (dropped.all(-1)).any()


def _kind(out, h):
    """Per example: 'mask' when every position is h or all-zero, 'noise' when no position is either."""
    same = (out == h).all(-1)
    zero = (out == 0).all(-1)
    is_mask = (same | zero).all(-1)
    is_noise = ~(same | zero).any(-1)
    return is_mask, is_noise


def test_perturb_activations_picks_per_example():
    torch.manual_seed(0)
    h = torch.randn(64, 20, 8) + 5.0
    out = perturb_activations(h, 0.3, 0.7)
    is_mask, is_noise = _kind(out, h)
    assert torch.all(is_mask ^ is_noise)  # each example is entirely one kind
    assert 10 < int(is_mask.sum()) < 54  # both kinds in one batch (P(all one kind) = 2^-63)
    assert (out == 0).all(-1)[is_mask].any()  # the masked examples really are masked
    # one perturbation enabled: every example gets it; none: h as is
    assert _kind(perturb_activations(h, 0.3, 1.0), h)[0].all()
    assert _kind(perturb_activations(h, 0.0, 0.7), h)[1].all()
    assert torch.equal(perturb_activations(h, 0.0, 1.0), h)


def test_augmentations_only_in_training(tiny_ae_args):
    torch.manual_seed(0)
    ae = Autoencoder(tiny_ae_args)
    h, ids, mask = _batch(tiny_ae_args)
    aug = dict(act_mask=0.3, act_delta=0.7, latent_dropout=0.4)
    with torch.no_grad():
        ae.eval()
        clean = ae(h, ids, mask)[0]
        a1, a2 = ae(h, ids, mask, **aug)[0], ae(h, ids, mask, **aug)[0]
        assert torch.equal(a1, a2) and torch.equal(a1, clean)  # eval: deterministic, no augmentation
        ae.train()
        assert torch.equal(ae(h, ids, mask)[0], clean)  # train without augmentation = eval
        assert not torch.equal(ae(h, ids, mask, **aug)[0], clean)
        # each knob on its own is wired in
        for one in (dict(act_mask=0.3), dict(act_delta=0.7), dict(latent_dropout=0.4)):
            assert not torch.equal(ae(h, ids, mask, **one)[0], clean), one


# -----------------------------------------------------------------------------
# tokenization


def test_tokenize_truncates_masks_and_decodes(encoder):
    L = 16
    long1 = ' '.join(['word'] * 30)
    exact = ' '.join(['cat'] * (L - 2))  # [CLS] + 14 words + [SEP] = exactly L tokens: not truncated
    short = 'a small dog'
    long2 = 'one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen'
    texts = [long1, short, exact, long2]
    ids, mask, n_truncated = encoder.tokenize(texts, L)
    assert ids.shape == mask.shape == (4, L)
    assert n_truncated == 2
    full = [encoder.tokenizer(t)['input_ids'] for t in texts]
    for i in (0, 3):  # cut to L keeping [SEP] last
        assert ids[i].tolist() == full[i][:L - 1] + [encoder.sep_id]
        assert mask[i].all()
    assert ids[2].tolist() == full[2] and mask[2].all()
    # mask = the first len(tokens) positions; padding with [PAD]
    assert mask.sum(1).tolist() == [L, len(full[1]), L, L]
    assert torch.equal(mask, torch.arange(L)[None] < mask.sum(1, keepdim=True))
    assert torch.all(ids[~mask] == encoder.pad_id)
    assert ids[1, :len(full[1])].tolist() == full[1]
    assert encoder.decode(ids[1:3]) == [short, exact]

    # decode cuts at the first [SEP]: what follows it is never read
    tok = encoder.tokenizer
    a, b, c = tok.convert_tokens_to_ids(['red', 'ball', 'tree'])
    cls, sep, pad = tok.cls_token_id, encoder.sep_id, encoder.pad_id
    rows = torch.tensor([[cls, a, b, sep, c, c, sep, pad],
                         [a, b, sep, c, pad, pad, pad, pad],     # no [CLS]
                         [cls, a, c, b, a, c, b, a]])            # no [SEP]: the whole row
    assert encoder.decode(rows) == ['red ball', 'red ball', 'red tree ball red tree ball red']


# -----------------------------------------------------------------------------
# latent statistics


def test_latent_stats(tiny_ae_args):
    ae = Autoencoder(tiny_ae_args)
    N, d = tiny_ae_args['n_latents'], tiny_ae_args['dim']
    g = torch.Generator().manual_seed(0)
    mu, sigma = 3 * torch.randn(N, d, generator=g), torch.rand(N, d, generator=g) * 4 + 0.1
    z_all = mu + sigma * torch.randn(500, N, d, generator=g)
    fp0 = ae.fingerprint()
    ae.set_latent_stats(z_all)
    assert ae.z_stats_count.item() == 500
    zn = ae.normalize_z(z_all)
    assert zn.mean(0).abs().max().item() < 1e-4       # per (position, feature)
    assert (zn.std(0) - 1).abs().max().item() < 1e-4
    torch.testing.assert_close(ae.denormalize_z(ae.normalize_z(z_all)), z_all, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ae.normalize_z(ae.denormalize_z(zn)), zn, rtol=1e-5, atol=1e-5)
    fp1 = ae.fingerprint()
    assert fp1 != fp0 and fp1 == ae.fingerprint()  # changes with the stats, stable otherwise
    ae.set_latent_stats(z_all[:250])
    assert ae.fingerprint() not in (fp0, fp1)


# -----------------------------------------------------------------------------
# KL path


def test_kl_term_matches_formula(tiny_ae_args):
    beta = 0.1
    torch.manual_seed(0)
    ae = Autoencoder(dict(tiny_ae_args, kl_beta=beta)).eval()
    assert ae.to_logvar is not None
    h, ids, mask = _batch(tiny_ae_args)
    with torch.no_grad():
        loss, stats = ae(h, ids, mask)
        mu = ae.compress(ae.normalize_h(h), mask)
        lv = ae.to_logvar(mu)
        kl = 0.5 * (mu ** 2 + lv.exp() - lv - 1).mean()
        torch.testing.assert_close(stats['kl'], kl)
        assert stats['kl'].item() > 0
        torch.testing.assert_close(loss, stats['ce'] + stats['mse'] + beta * kl)
        # training mode samples z = mu + sigma * eps: the loss is stochastic there, not in eval
        assert torch.equal(ae(h, ids, mask)[0], loss)
        ae.train()
        assert not torch.equal(ae(h, ids, mask)[0], ae(h, ids, mask)[0])
    # kl_beta = 0: no log-variance head, no KL
    ae0 = Autoencoder(tiny_ae_args).eval()
    assert ae0.to_logvar is None
    with torch.no_grad():
        assert ae0(h, ids, mask)[1]['kl'].item() == 0.0
