"""
The training scripts as a user runs them: exact resume, DDP under torchrun (gloo, 2 processes) equal to one
process, bad input ending in one line, NaN loss, and the tiny pipeline end to end. Tiny models on the
tiny random encoder of conftest.py, so that each test takes seconds.
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

import common
import train_ae
import train_diff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ae_cfg(encoder, out_dir, **kw):
    cfg = dict(train_ae.config, data='stories', n_stories=400, val_size=32, eval_size=32, encoder=encoder,
               max_len=28, n_latents=4, n_layers=1, head_dim=16, batch_size=8, micro_batch_size=8,
               max_steps=6, eval_interval=3, log_interval=1, lr=1e-3, warmup=2, device='cpu',
               compile=False, out_dir=str(out_dir), stats_size=64)
    cfg.update(kw)
    return cfg


def diff_cfg(ae_ckpt, out_dir, **kw):
    cfg = dict(train_diff.config, data='stories', n_stories=200, val_size=32, eval_size=32, size='tiny',
               ae_ckpt=str(ae_ckpt), batch_size=16, micro_batch_size=8, max_steps=6, eval_interval=3,
               eval_samples=2, sample_steps=3, log_interval=1, lr=1e-3, warmup=2, ema_decay=0.9,
               device='cpu', compile=False, out_dir=str(out_dir))
    cfg.update(kw)
    return cfg


def logged_losses(out_dir):
    """The step and eval lines of log.txt without their timing fields."""
    lines = open(os.path.join(out_dir, 'log.txt')).read().splitlines()
    keep = [l for l in lines if l.startswith(('step', 'eval'))]
    return [re.sub(r'\| [\d.,]+ ms/step.*$', '', l) for l in keep]


def run(args, env_extra=None, **kw):
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', **(env_extra or {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, **kw)


@pytest.fixture(scope='module')
def tiny_ae(tiny_encoder_path, tmp_path_factory):
    """A tiny trained autoencoder checkpoint, shared by the diffusion tests."""
    out = tmp_path_factory.mktemp('ae')
    train_ae.main(ae_cfg(tiny_encoder_path, out))
    return os.path.join(out, 'ckpt.pt')


def test_ae_exact_resume(tiny_encoder_path, tmp_path):
    # 6 steps straight == 3 steps, checkpoint, resume, 3 more: same logged losses, bit-identical weights
    straight = train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'a'))
    train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'b', max_steps=3))
    resumed = train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'b', init_from='resume'))
    a, b = logged_losses(tmp_path / 'a'), logged_losses(tmp_path / 'b')
    assert len(a) == 8 and a == b
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_head_over_the_data_vocabulary(tiny_encoder_path, tmp_path):
    # head_vocab='data': the head covers exactly the tokens of the training rows plus the specials, the map is
    # in the checkpoint, a reloaded model decodes through it, unseen ids score as [UNK], and resume keeps it
    from autoencoder import load_autoencoder, padded_vocab
    from corpus import Prepared
    train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'a', head_vocab='data', max_steps=3))
    ckpt = common.load_checkpoint(str(tmp_path / 'a' / 'ckpt.pt'), 'autoencoder')
    ae = load_autoencoder(ckpt)
    tok = ae.encoder.tokenizer
    rows = Prepared(ckpt['data_dir']).train
    ids = rows.batch(range(len(rows)))[0]
    want = sorted(set(ids.unique().tolist()) | {tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id})
    assert ckpt['model_args']['head_vocab'] == len(want) < ae.args['vocab_size']
    assert ckpt['model']['head_ids'].tolist() == want
    assert ae.token_head.out_features == padded_vocab(len(want))  # issue 12's padding composes: 63 -> 64, masked
    unseen = next(i for i in range(ae.args['vocab_size']) if i not in set(want))
    x = torch.tensor([[want[3], unseen, tok.sep_token_id]])
    assert ae.head_ids[ae.to_head(x)].tolist() == [[want[3], tok.unk_token_id, tok.sep_token_id]]
    out_ids, texts = ae.decode(torch.randn(2, ae.args['n_latents'], ae.args['dim']))
    assert set(out_ids.unique().tolist()) <= set(want) and len(texts) == 2
    train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'a', head_vocab='data', init_from='resume'))
    with pytest.raises(SystemExit, match="head_vocab=full differs from the checkpoint"):
        train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'a', init_from='resume', max_steps=9))
    with pytest.raises(SystemExit, match="head_vocab must be one of full, data"):
        train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'b', head_vocab='corpus'))


def test_lr_schedule_known_values():
    # the paper's: linear warm-up, then constant
    assert [common.lr_at(s, 1.0, 4) for s in (0, 1, 3, 4, 10 ** 6)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert common.lr_at(0, 1.0, 0) == 1.0
    # decay_lr: the peak at the end of the warm-up, halfway at mid-decay, min_lr at max_steps and after, never rising
    lr = lambda s: common.lr_at(s, 1.0, 10, 0.1, 110)
    assert lr(4) == 0.5 and lr(9) == 1.0 and lr(10) == 1.0 and lr(500) == 0.1
    assert math.isclose(lr(60), 0.55) and math.isclose(lr(110), 0.1)
    assert all(lr(s + 1) <= lr(s) for s in range(9, 120))


def test_diffusion_exact_resume(tiny_ae, tmp_path):
    # with an autoguidance guide taken at step 2, before the stop at 3: the resumed run keeps it
    raw_a, ema_a = train_diff.main(diff_cfg(tiny_ae, tmp_path / 'a', guide_step=2))
    train_diff.main(diff_cfg(tiny_ae, tmp_path / 'b', max_steps=3, guide_step=2))
    raw_b, ema_b = train_diff.main(diff_cfg(tiny_ae, tmp_path / 'b', init_from='resume', guide_step=2))
    assert logged_losses(tmp_path / 'a') == logged_losses(tmp_path / 'b')
    for m1, m2 in ((raw_a, raw_b), (ema_a, ema_b)):
        for k, v in m1.state_dict().items():
            assert torch.equal(v, m2.state_dict()[k]), k
    _, ema_2 = train_diff.main(diff_cfg(tiny_ae, tmp_path / 'c', max_steps=2))
    # resuming with another guide_step, or one already passed without a guide, is refused in one line
    for out, bad, words in (('b', 3, 'keeps the guide of step 2'), ('b', 0, 'keeps the guide of step 2'),
                            ('c', 1, 'keeps no guide')):
        with pytest.raises(SystemExit, match=words):
            train_diff.main(diff_cfg(tiny_ae, tmp_path / out, init_from='resume', max_steps=8, guide_step=bad))
        common.release_out_dir()
    guide_a = common.load_checkpoint(str(tmp_path / 'a' / 'ckpt.pt'), 'diffusion')
    guide_b = common.load_checkpoint(str(tmp_path / 'b' / 'ckpt.pt'), 'diffusion')
    assert guide_a['guide_step'] == guide_b['guide_step'] == 2
    for k, v in guide_a['guide'].items():
        assert torch.equal(v, guide_b['guide'][k]), k
    # the guide is the EMA model of step 2, and not the final one
    assert all(torch.equal(v, guide_a['guide'][k]) for k, v in ema_2.state_dict().items())
    assert not all(torch.equal(v, guide_a['guide'][k]) for k, v in ema_a.state_dict().items())
    # the latent cache was reused by the resumed run, not rebuilt: one memmap and one key per split
    assert len([f for f in os.listdir(tmp_path / 'b') if f.startswith('latents_')]) == 4
    assert open(tmp_path / 'b' / 'log.txt').read().count("latents 'train'") == 1


def test_checkpoints_load_weights_only(tiny_ae, tmp_path):
    train_diff.main(diff_cfg(tiny_ae, tmp_path, max_steps=3))
    for path, stage in ((tiny_ae, 'autoencoder'), (tmp_path / 'ckpt.pt', 'diffusion')):
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        assert ckpt['stage'] == stage and ckpt['step'] > 0
    assert not [f for f in os.listdir(tmp_path) if '.tmp.' in f]  # no temporary file left behind


def test_ddp_two_processes_match_one(tiny_encoder_path, tmp_path):
    # Same global batch (8): one process accumulating 2 micro-batches of 4, and two gloo processes with
    # one micro-batch of 4 each. Augmentations off: each rank draws its own random stream by design, so
    # only the deterministic training path can match (the batch split, no_sync, gradient averaging).
    common_flags = [f'--encoder={tiny_encoder_path}', '--data=stories', '--n_stories=400', '--val_size=32',
                    '--eval_size=32', '--max_len=28', '--n_latents=4', '--n_layers=1', '--head_dim=16',
                    '--batch_size=8', '--micro_batch_size=4', '--max_steps=3', '--eval_interval=3',
                    '--log_interval=1', '--warmup=1', '--device=cpu', '--compile=False', '--stats_size=64',
                    '--act_mask=0.0', '--act_delta=1.0', '--latent_dropout=0.0']
    one = run(['train_ae.py', *common_flags, f'--out_dir={tmp_path / "one"}'])
    assert one.returncode == 0, one.stderr[-2000:]
    two = run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train_ae.py',
               *common_flags, f'--out_dir={tmp_path / "two"}'])
    assert two.returncode == 0, two.stderr[-2000:]
    assert '2 processes' in open(tmp_path / 'two' / 'log.txt').read()
    a = torch.load(tmp_path / 'one' / 'ckpt.pt', weights_only=True)
    b = torch.load(tmp_path / 'two' / 'ckpt.pt', weights_only=True)
    assert len(b['rng']) == 2  # each rank's RNG state is saved
    for k, v in a['model'].items():
        torch.testing.assert_close(b['model'][k], v, rtol=1e-4, atol=1e-5, msg=k)
    # the logged numbers are the global batch's (mean over micro-steps and ranks), not rank 0's last
    # micro-batch: the same in both runs up to the last printed digit
    logged = lambda d: [tuple(map(float, re.findall(r'(?:loss|ce|mse|acc) ([\d.]+)', l)))
                        for l in open(d / 'log.txt') if l.startswith('step')]
    one_log, two_log = logged(tmp_path / 'one'), logged(tmp_path / 'two')
    assert len(one_log) == 3 and all(len(x) == 4 for x in one_log)
    torch.testing.assert_close(torch.tensor(two_log), torch.tensor(one_log), rtol=0, atol=1.5e-4)


def test_ddp_diffusion_runs(tiny_ae, tmp_path):
    flags = [f'--ae_ckpt={tiny_ae}', '--data=stories', '--n_stories=200', '--val_size=32', '--eval_size=32',
             '--size=tiny', '--batch_size=16', '--micro_batch_size=4', '--max_steps=2', '--eval_interval=2',
             '--eval_samples=1', '--sample_steps=2', '--device=cpu', '--compile=False', f'--out_dir={tmp_path}']
    r = run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train_diff.py', *flags])
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    assert ckpt['step'] == 2 and len(ckpt['rng']) == 2
    assert '2 micro-steps x 4 x 2 processes' in open(tmp_path / 'log.txt').read()


# -----------------------------------------------------------------------------
# bad input: one clear line, non-zero exit


def one_line_error(excinfo):
    msg = str(excinfo.value)
    assert msg.startswith('error: ') and '\n' not in msg
    return msg


def test_config_errors():
    with pytest.raises(SystemExit) as e:
        common.configure(train_ae.config, ['--n_latent=16'])
    assert "unknown config key 'n_latent'" in one_line_error(e) and 'n_latents' in str(e.value)
    with pytest.raises(SystemExit) as e:
        common.configure(train_ae.config, ['--max_steps=ten'])
    assert "'max_steps' must be of type int" in one_line_error(e)
    with pytest.raises(SystemExit) as e:
        common.configure(train_ae.config, ['--compile=1'])  # a bool is not an int, nor the reverse
    assert "'compile' must be of type bool" in one_line_error(e)
    with pytest.raises(SystemExit) as e:
        common.configure(train_diff.config, ['--schedule_d=fast'])  # a schedule parameter stays a number
    assert "'schedule_d' must be of type float" in one_line_error(e)
    with pytest.raises(SystemExit) as e:
        common.configure(train_ae.config, ['no/such/config.py'])
    assert 'not found' in one_line_error(e)
    cfg = common.configure(train_diff.config, ['--schedule_d=7', '--lr=1e-4', '--compile=False'])
    assert cfg['schedule_d'] == 7.0 and type(cfg['schedule_d']) is float and cfg['compile'] is False


def test_config_file_and_cli_errors(tmp_path):
    cfg_file = tmp_path / 'exp.py'
    cfg_file.write_text("max_steps = 7\nlr = 3e-4\n")
    cfg = common.configure(train_ae.config, [str(cfg_file), '--max_steps=9'])
    assert cfg['max_steps'] == 9 and cfg['lr'] == 3e-4  # later arguments win
    cfg_file.write_text("max_step = 7\n")
    r = run(['train_ae.py', str(cfg_file)])
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        f"error: unknown config key 'max_step' ({cfg_file}); known keys like it: max_len, max_steps"]


def test_data_errors(tiny_encoder_path, tmp_path):
    with pytest.raises(SystemExit) as e:
        train_ae.main(ae_cfg(tiny_encoder_path, tmp_path, data=str(tmp_path / 'missing.txt')))
    assert 'not found' in one_line_error(e)
    (tmp_path / 'empty.txt').write_text('\n\n')
    with pytest.raises(SystemExit) as e:
        train_ae.main(ae_cfg(tiny_encoder_path, tmp_path, data=str(tmp_path / 'empty.txt')))
    assert 'holds no text' in one_line_error(e)


def test_long_texts_are_chunked_and_cuts_counted(tiny_encoder_path, tmp_path):
    # 60 short lines, 20 lines of two 14-token sentences (together longer than a row of L - 2 = 26 tokens:
    # two rows, split at the sentence boundary, nothing cut) and 20 lines of one 40-token sentence (cut into
    # two rows, and counted)
    data = tmp_path / 'long.txt'
    data.write_text('\n'.join(['a short line'] * 60 + ['word ' * 13 + '. ' + 'word ' * 13 + '.'] * 20 +
                              ['word ' * 40] * 20))
    train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'out', data=str(data), max_steps=2, eval_interval=2,
                         val_size=8))
    ckpt = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)
    meta = ckpt['data']
    assert meta['val']['rows'] == 8 and meta['train']['documents'] == 100 - 8
    assert meta['train']['sentences_cut'] == 20 and meta['train']['rows'] == 52 + 2 * 20 + 2 * 20
    assert '20 sentences longer than L were cut' in open(tmp_path / 'out' / 'log.txt').read()


def test_nan_loss_stops_before_checkpoint(tiny_encoder_path, tmp_path):
    with pytest.raises(SystemExit) as e:
        train_ae.main(ae_cfg(tiny_encoder_path, tmp_path, lr=1e30, warmup=1, max_steps=6, eval_interval=6))
    assert 'training loss is nan' in one_line_error(e) or 'training loss is inf' in str(e.value)
    assert not os.path.exists(tmp_path / 'ckpt.pt')


def test_checkpoint_errors(tiny_ae, tmp_path):
    with pytest.raises(SystemExit) as e:
        common.load_checkpoint(tiny_ae, 'diffusion')
    assert "is from stage 'autoencoder'" in one_line_error(e)
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(SystemExit) as e:
        common.load_checkpoint(str(tmp_path / 'junk.pt'), 'autoencoder')
    assert 'could not be read' in one_line_error(e)
    # resuming with a different model shape is refused, not silently reshaped
    ckpt = torch.load(tiny_ae, weights_only=True)
    with pytest.raises(SystemExit) as e:
        train_ae.main(ae_cfg(ckpt['model_args']['encoder'], os.path.dirname(tiny_ae), init_from='resume',
                             n_latents=5, max_steps=7))
    assert '--n_latents=5 differs' in one_line_error(e)


def test_sample_refuses_another_autoencoder(tiny_encoder_path, tiny_ae, tmp_path):
    train_diff.main(diff_cfg(tiny_ae, tmp_path / 'diff', max_steps=3))
    train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'other_ae', seed=7, max_steps=3))
    r = run(['sample.py', f'--ckpt={tmp_path / "diff" / "ckpt.pt"}', f'--ae_ckpt={tmp_path / "other_ae" / "ckpt.pt"}',
             '--device=cpu'])
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('error: autoencoder') and 'is not the one' in last


# -----------------------------------------------------------------------------
# end to end, as the README runs it (tiny sizes)


def test_end_to_end(tiny_encoder_path, tmp_path):
    ae_dir, diff_dir = tmp_path / 'ae', tmp_path / 'diff'
    flags = ['--data=stories', '--n_stories=300', '--val_size=32', '--eval_size=32', '--device=cpu',
             '--compile=False', '--log_interval=2']
    r = run(['train_ae.py', f'--encoder={tiny_encoder_path}', '--max_len=28', '--n_latents=4', '--n_layers=1',
             '--head_dim=16', '--batch_size=8', '--micro_batch_size=8', '--max_steps=4', '--eval_interval=4',
             '--stats_size=64', f'--out_dir={ae_dir}', *flags])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run(['train_diff.py', f'--ae_ckpt={ae_dir / "ckpt.pt"}', '--size=tiny', '--batch_size=16',
             '--micro_batch_size=16', '--max_steps=4', '--eval_interval=4', '--eval_samples=1',
             '--sample_steps=2', '--guide_step=2', f'--out_dir={diff_dir}', *flags])
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / 'samples.jsonl'
    r = run(['sample.py', f'--ckpt={diff_dir / "ckpt.pt"}', '--num_samples=3', '--steps=5', '--device=cpu',
             f'--out={out}'])
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'autoguidance w=2.0 by the EMA of step 2' in r.stderr.splitlines()[-1]
    printed = r.stdout.splitlines()  # trained on the stories: each line marked by the checker
    assert len(printed) == 3 and all(re.match(r'\[(valid|invalid)\] \S', t) for t in printed)
    texts = [t.split('] ', 1)[1] for t in printed]
    rows = [json.loads(l) for l in open(out)]
    assert [row['text'] for row in rows] == texts and rows[0]['steps'] == 5 and rows[0]['sampler'] == 'ddim'
    assert rows[0]['autoguidance'] == 2.0
    assert 'note: autoguidance' not in r.stderr  # 5 steps: no note
    r = run(['sample.py', f'--ckpt={diff_dir / "ckpt.pt"}', '--num_samples=1', '--steps=21', '--device=cpu'])
    assert r.returncode == 0 and 'note: autoguidance w=2 at all 21 steps' in r.stderr  # many steps: one line
    for flag in ('--autoguidance=1', '--guide_t_min=0.5'):  # no guidance, or guidance in an interval: no note
        r = run(['sample.py', f'--ckpt={diff_dir / "ckpt.pt"}', '--num_samples=1', '--steps=21', '--device=cpu', flag,
                 f'--out={tmp_path / "g.jsonl"}'])
        assert r.returncode == 0 and 'note: autoguidance' not in r.stderr
    assert 'at t >= 0.5' in r.stderr.splitlines()[-1] and json.loads(open(tmp_path / 'g.jsonl').readline())[
        'guide_t_min'] == 0.5  # the interval is said and recorded


def test_diffusion_without_latent_cache(tiny_ae, tmp_path):
    # cache_latents=False encodes every micro-batch on the fly: same training loop, no train cache on disk
    train_diff.main(diff_cfg(tiny_ae, tmp_path, max_steps=2, eval_interval=2, cache_latents=False))
    files = os.listdir(tmp_path)
    assert 'ckpt.pt' in files and not [f for f in files if f.startswith('latents_') and '_train' in f]
    assert [f for f in files if f.startswith('latents_') and f.endswith('_val.f16')]
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 2


def test_latent_cache_two_ranks_equal_one(tiny_ae, tmp_path):
    # each of 2 gloo processes encodes its half of the rows into the one fp16 memmap: the same file as one process
    flags = [f'--ae_ckpt={tiny_ae}', '--data=stories', '--n_stories=203', '--val_size=32', '--eval_size=32',
             '--size=tiny', '--batch_size=8', '--micro_batch_size=4', '--max_steps=1', '--eval_interval=1',
             '--eval_samples=0', '--sample_steps=1', '--device=cpu', '--compile=False']
    one = run(['train_diff.py', *flags, f'--out_dir={tmp_path / "one"}'])
    assert one.returncode == 0, one.stderr[-2000:]
    two = run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train_diff.py', *flags,
               f'--out_dir={tmp_path / "two"}'])
    assert two.returncode == 0, two.stderr[-2000:]
    assert "latents 'train': 203 rows encoded by 2 process(es)" in open(tmp_path / 'two' / 'log.txt').read()
    for split in ('train', 'val'):
        a, b = (np.fromfile(next((tmp_path / d).glob(f'latents_*_{split}.f16')), dtype=np.float16) for d in ('one', 'two'))
        assert a.size == (203 if split == 'train' else 32) * 4 * 32 and np.isfinite(a).all()
        # the same rows through the same network; batches differ at the rank boundary, so allow fp16 rounding
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_conditional_ddp_without_cond_drop(tiny_ae, tmp_path):
    # cond_drop=0: the null source gets no gradient, and DDP must still finish its reduction every step
    flags = [f'--ae_ckpt={tiny_ae}', '--task=conditional', '--data=stories', '--n_stories=64', '--val_size=8',
             '--eval_size=8', '--size=tiny', '--cond_layers=1', '--cond_drop=0.0', '--src_max_len=28',
             '--batch_size=8', '--micro_batch_size=4', '--max_steps=3', '--eval_interval=3', '--eval_samples=1',
             '--sample_steps=1', '--device=cpu', '--compile=False', f'--out_dir={tmp_path}']
    r = run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train_diff.py', *flags])
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 3
