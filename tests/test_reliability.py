"""
Nothing lost, nothing silent: every bad input ends in one line naming what is wrong (one table), a trained
checkpoint is never overwritten by accident, one run at a time holds an out_dir, a failed checkpoint write
keeps the previous one, SIGTERM saves and a resume from there is exact, the DDP ranks agree on when to stop,
checkpoints carry a format, and the padded token head gives the outputs of an unpadded one.
"""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

import common
import sample
import train_ae
import train_diff
from autoencoder import Autoencoder, padded_vocab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ae_cfg(encoder, out_dir, **kw):
    cfg = dict(train_ae.config, data='stories', n_stories=400, val_size=32, eval_size=32, encoder=encoder,
               max_len=28, n_latents=4, n_layers=1, head_dim=16, batch_size=8, micro_batch_size=8,
               max_steps=2, eval_interval=2, log_interval=1, lr=1e-3, warmup=2, device='cpu',
               compile=False, out_dir=str(out_dir), stats_size=64)
    cfg.update(kw)
    return cfg


def one_line_error(excinfo):
    msg = str(excinfo.value)
    assert msg.startswith('error: ') and '\n' not in msg, msg
    return msg


def env_of(**kw):
    return dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', **kw)


# -----------------------------------------------------------------------------
# the table of bad inputs: (script, flags, words the one-line error must contain). {enc} is the tiny
# encoder folder, {tmp} a temporary folder holding a file 'afile' and a config file 'broken.py'

NO_CUDA = not torch.cuda.is_available()
BAD = [
    ('train_ae', ['--max_len=0'], ['max_len=0', '>= 3']),
    ('train_ae', ['--max_len=1'], ['max_len=1', '>= 3']),
    ('train_ae', ['--n_latents=0'], ['n_latents=0', '>= 1']),
    ('train_ae', ['--n_latents=40'], ['n_latents=40', 'max_len=28']),
    ('train_ae', ['--micro_batch_size=0'], ['micro_batch_size=0']),
    ('train_ae', ['--eval_interval=0'], ['eval_interval=0']),
    ('train_ae', ['--head_dim=0'], ['head_dim=0']),
    ('train_ae', ['--head_dim=5'], ['head_dim=5', 'does not divide']),
    ('train_ae', ['--act_mask=1.0'], ['act_mask=1.0', '[0, 1)']),
    ('train_ae', ['--dtype=bf16'], ["dtype 'bf16'", 'bfloat16']),
    ('train_ae', ['--dtype=float16'], ["dtype 'float16'", 'GradScaler']),
    ('train_ae', ['--device=cuda' if NO_CUDA else '--device=cuda:99'], ['cuda', 'CUDA GPU']),
    ('train_ae', ['--device=gpu'], ["device 'gpu'"]),
    ('train_ae', ['--init_from=restart'], ["init_from", "'restart'"]),
    ('train_ae', ['--out_dir={tmp}/afile'], ['afile', 'is a file']),
    ('train_ae', ['--out_dir={tmp}/afile/sub'], ['cannot be created']),
    ('train_ae', ['--batch_size=512', '--micro_batch_size=64'], ['batch_size=512', 'larger than the 400']),
    ('train_ae', ['--encoder={tmp}/no_such_encoder'], ['no_such_encoder', 'could not be loaded']),
    ('train_ae', ['--encoder=no-such-org/no-such-model'], ['no-such-org/no-such-model', 'could not be loaded']),
    ('train_ae', ['{tmp}/broken.py'], ['broken.py', 'line 2']),
    ('train_diff', ['--size=huge'], ["size 'huge'"]),
    ('train_diff', ['--t_min=0.0'], ['t_min=0.0', '(0, 1)']),
    ('train_diff', ['--ema_decay=1.0'], ['ema_decay=1.0']),
    ('train_diff', ['--micro_batch_size=0'], ['micro_batch_size=0']),
    ('train_diff', ['--sample_steps=0'], ['sample_steps=0']),
    ('train_diff', ['--decay_lr=True', '--min_lr=0.1'], ['min_lr=0.1', 'in [0, lr]']),
    ('train_diff', ['--guide_step=2', '--max_steps=2'], ['guide_step=2', 'below max_steps=2']),
    ('train_diff', ['--guide_step=1', '--task=blocks'], ['guide_step=1', 'unconditional']),
    ('sample', ['--autoguidance=-1'], ['autoguidance=-1.0', '>= 0']),
    ('sample', ['--guide_t_min=-0.5'], ['guide_t_min=-0.5', '>= 0']),
    ('train_ae', ['--min_lr=-1e-5'], ['min_lr=-1e-05', 'in [0, lr]']),
    ('train_diff', ['--dtype=float16'], ['GradScaler']),
    ('train_diff', ['--ae_ckpt={tmp}/none.pt'], ['none.pt', 'not found']),
    ('sample', ['--steps=0'], ['steps=0', '>= 1']),
    ('sample', ['--grid=cosine'], ["grid must be one of uniform, logsnr, not 'cosine'"]),
    ('train_ae', ['--head_vocab=corpus'], ["head_vocab must be one of full, data, not 'corpus'"]),
    ('sample', ['--num_samples=-3'], ['num_samples=-3', '>= 1']),
    ('sample', ['--batch_size=0'], ['batch_size=0']),
    ('sample', ['--out={tmp}/missing/s.jsonl'], ['missing', 'does not exist']),
    ('sample', ['--out={tmp}'], ['is a folder']),
    ('sample', ['--dtype=fp32'], ["dtype 'fp32'"]),
]


@pytest.mark.parametrize('script,flags,words', BAD, ids=[f"{s}{' '.join(f)}" for s, f, _ in BAD])
def test_bad_input_one_line(script, flags, words, tiny_encoder_path, tmp_path):
    (tmp_path / 'afile').write_text('x')
    (tmp_path / 'broken.py').write_text("max_steps = 3\nlr = (1e-3\n")
    fill = lambda s: s.format(enc=tiny_encoder_path, tmp=tmp_path)
    base = {'train_ae': [f'--encoder={tiny_encoder_path}', '--data=stories', '--n_stories=400', '--val_size=32',
                         '--eval_size=32', '--max_len=28', '--n_latents=4', '--n_layers=1', '--head_dim=16',
                         '--batch_size=8', '--micro_batch_size=8', '--max_steps=1', '--stats_size=64',
                         '--device=cpu', '--compile=False', f'--out_dir={tmp_path / "out"}'],
            'train_diff': ['--data=stories', '--n_stories=100', '--device=cpu', '--compile=False',
                           f'--ae_ckpt={tmp_path / "none.pt"}', f'--out_dir={tmp_path / "out"}'],
            'sample': [f'--ckpt={tmp_path / "none.pt"}', '--device=cpu']}[script]
    module = dict(train_ae=train_ae, train_diff=train_diff, sample=sample)[script]
    argv = [fill(a) for a in flags if not a.startswith('--')] + base + [fill(a) for a in flags if a.startswith('--')]
    with pytest.raises(SystemExit) as e:
        module.main(common.configure(module.config, argv))
    msg = one_line_error(e)
    for w in words:
        assert w in msg, (w, msg)
    if script == 'sample' and 'missing' in flags[0]:
        assert not os.path.exists(tmp_path / 'missing')  # refused before anything was generated
    common.release_out_dir()
    common.restore_signals()


def test_bad_input_from_the_command_line(tmp_path):
    # the same through the real entry point: exit status 1, one line on stderr, no traceback
    (tmp_path / 'broken.py').write_text("max_steps = 3\nlr = (1e-3\n")
    for args, words in ((['train_ae.py', str(tmp_path / 'broken.py')], 'line 2'),
                        (['sample.py', '--steps=0'], 'steps=0')):
        r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env_of(), capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr


# -----------------------------------------------------------------------------
# nothing trained is lost


def test_scratch_run_refuses_to_overwrite(tiny_encoder_path, tmp_path):
    train_ae.main(ae_cfg(tiny_encoder_path, tmp_path))
    before = (tmp_path / 'ckpt.pt').read_bytes()
    with pytest.raises(SystemExit) as e:
        train_ae.main(ae_cfg(tiny_encoder_path, tmp_path, max_steps=1, eval_interval=1))
    assert 'already exists' in one_line_error(e) and '--overwrite=True' in str(e.value)
    assert (tmp_path / 'ckpt.pt').read_bytes() == before
    common.release_out_dir()
    train_ae.main(ae_cfg(tiny_encoder_path, tmp_path, max_steps=1, eval_interval=1, overwrite=True))
    assert torch.load(tmp_path / 'ckpt.pt', weights_only=True)['step'] == 1


def test_out_dir_lock_names_the_holder(tmp_path):
    env = dict(master=True)
    holder = subprocess.Popen([sys.executable, '-c', f"""
import sys; sys.path.insert(0, {ROOT!r})
import common
common.claim_out_dir({str(tmp_path)!r}, dict(master=True))
print('held', flush=True)
sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env_of())
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(SystemExit) as e:
            common.claim_out_dir(str(tmp_path), env)
        assert f'is in use by pid {holder.pid} on ' in one_line_error(e)
    finally:
        holder.communicate('\n', timeout=30)
    common.claim_out_dir(str(tmp_path), env)  # the holder ended: the lock is free
    common.release_out_dir()


def test_stale_temp_files_removed_at_start(tmp_path):
    (tmp_path / 'ckpt.pt.tmp.4242').write_bytes(b'half a checkpoint')
    (tmp_path / 'keep.txt').write_text('mine')
    common.claim_out_dir(str(tmp_path), dict(master=True), init_from='resume')
    common.release_out_dir()
    assert sorted(os.listdir(tmp_path)) == ['.lock', 'keep.txt']


def test_failed_checkpoint_write_keeps_the_previous(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.pt')
    common.save_checkpoint(dict(step=1, w=torch.ones(3)), path)
    before = open(path, 'rb').read()
    real_save = torch.save

    def disk_full(obj, f):
        f.write(b'partial bytes')  # the write starts, then the disk is full
        raise RuntimeError('[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file '
                           'data/0: file write failed')
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(SystemExit) as e:
        common.save_checkpoint(dict(step=2, w=torch.zeros(3)), path)
    assert 'could not write checkpoint' in one_line_error(e) and 'the previous one is kept' in str(e.value)
    monkeypatch.setattr(torch, 'save', real_save)
    assert open(path, 'rb').read() == before and os.listdir(tmp_path) == ['ckpt.pt']


def test_checkpoint_format_is_checked(tmp_path):
    for version, word in ((1, 'older'), (common.CHECKPOINT_FORMAT + 1, 'newer')):
        torch.save(dict(stage='autoencoder', format=version), tmp_path / 'c.pt')
        if version == 1:  # the files written before versions existed had no 'format' key
            torch.save(dict(stage='autoencoder'), tmp_path / 'c.pt')
        with pytest.raises(SystemExit) as e:
            common.load_checkpoint(str(tmp_path / 'c.pt'), 'autoencoder')
        assert f'has format {version}' in one_line_error(e) and word in str(e.value)
    common.save_checkpoint(dict(stage='autoencoder'), str(tmp_path / 'c.pt'))
    assert common.load_checkpoint(str(tmp_path / 'c.pt'), 'autoencoder')['format'] == common.CHECKPOINT_FORMAT


# -----------------------------------------------------------------------------
# signals


def test_sigterm_saves_and_resume_is_exact(tiny_encoder_path, tmp_path):
    flags = ['--data=stories', '--n_stories=400', '--val_size=32', '--eval_size=32', f'--encoder={tiny_encoder_path}',
             '--max_len=28', '--n_latents=4', '--n_layers=1', '--head_dim=16', '--batch_size=8',
             '--micro_batch_size=8', '--max_steps=40', '--eval_interval=20', '--log_interval=1', '--lr=1e-3',
             '--warmup=2', '--device=cpu', '--compile=False', '--stats_size=64']
    p = subprocess.Popen([sys.executable, 'train_ae.py', *flags, f'--out_dir={tmp_path / "b"}'], cwd=ROOT,
                         env=env_of(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith('step       2 '):
            p.send_signal(signal.SIGTERM)
            break
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    last = out.strip().splitlines()[-1]
    stopped = int(re.match(r'stopped by SIGTERM after step (\d+); checkpoint .* saved', last).group(1))
    assert 2 <= stopped < 40
    assert torch.load(tmp_path / 'b' / 'ckpt.pt', weights_only=True)['step'] == stopped
    straight = train_ae.main(common.configure(train_ae.config, flags + [f'--out_dir={tmp_path / "a"}']))
    resumed = train_ae.main(common.configure(train_ae.config, flags + [f'--out_dir={tmp_path / "b"}',
                                                                      '--init_from=resume']))
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    lines = lambda d: [re.sub(r'\| [\d.,]+ ms/step.*$', '', l) for l in open(d / 'log.txt')
                       if l.startswith(('step', 'eval'))]
    assert lines(tmp_path / 'a') == lines(tmp_path / 'b')


def test_signal_before_the_first_step_ends_in_one_line():
    code = f"""
import os, signal, sys, time
sys.path.insert(0, {ROOT!r})
import common
common.install_signals()
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
"""
    r = subprocess.run([sys.executable, '-c', code], env=env_of(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        'error: stopped by SIGTERM before the first training step; nothing to save']


def test_second_signal_exits_at_once():
    code = f"""
import os, signal, sys, time
sys.path.insert(0, {ROOT!r})
import common
common.install_signals()
common.arm_stop()
os.kill(os.getpid(), signal.SIGINT)
assert common.stop_requested(dict(ddp=False)) == signal.SIGINT
os.kill(os.getpid(), signal.SIGTERM)  # torchrun forwards Ctrl-C as SIGTERM: the same request, not a second
assert common.stop_requested(dict(ddp=False)) == signal.SIGINT
print('first one only flagged', flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)
"""
    r = subprocess.run([sys.executable, '-c', code], env=env_of(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 128 + signal.SIGINT and r.stdout == 'first one only flagged\n'
    assert r.stderr.strip().splitlines() == ['error: second SIGINT: exiting now, without a checkpoint']


def test_ddp_ranks_agree_on_the_stop(tmp_path):
    # only rank 1 receives the signal; both ranks must see it at the same step
    script = tmp_path / 'agree.py'
    script.write_text(f"""
import signal, sys
sys.path.insert(0, {ROOT!r})
import common
env = common.setup('cpu', 0)
common.install_signals()
common.arm_stop()
seen = [common.stop_requested(env)]
if env['rank'] == 1:
    signal.raise_signal(signal.SIGTERM)
seen.append(common.stop_requested(env))
print(f"rank {{env['rank']}} {{seen}}", flush=True)
common.teardown(env)
""")
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        str(script)], cwd=ROOT, env=env_of(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    # two processes share stdout: their lines can run together, so each match stops at its own ']'
    assert sorted(re.findall(r'rank \d \[[^]]*\]', r.stdout)) == [f'rank 0 [0, {int(signal.SIGTERM)}]',
                                                               f'rank 1 [0, {int(signal.SIGTERM)}]']


# -----------------------------------------------------------------------------
# the padded token head


def test_padded_token_head_gives_unpadded_outputs(tiny_ae_args):
    V = tiny_ae_args['vocab_size']
    assert padded_vocab(30522) == 30528 and padded_vocab(64) == 64 and padded_vocab(V) % 64 == 0
    torch.manual_seed(0)
    ae = Autoencoder(tiny_ae_args).eval()
    assert ae.token_head.out_features == padded_vocab(V) > V
    # the unpadded reference: a V-wide head holding the first V rows of the padded one
    ref = torch.nn.Linear(tiny_ae_args['dim'], V)
    ref.weight.data.copy_(ae.token_head.weight[:V])
    ref.bias.data.copy_(ae.token_head.bias[:V])
    with torch.no_grad():
        ae.token_head.bias[V:] = 1e4  # padding rows that would win every argmax if they were not masked
    h = torch.randn(3, tiny_ae_args['max_len'], tiny_ae_args['dim'])
    ids = torch.randint(V, (3, tiny_ae_args['max_len']))
    mask = torch.ones_like(ids, dtype=torch.bool)
    z = ae.compress(ae.normalize_h(h), mask)
    logits, expected = ae.logits(ae.decompress(z)), ref(ae.decompress(z))
    assert torch.equal(logits[..., :V], expected) and torch.isneginf(logits[..., V:]).all()
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    ce = torch.nn.functional.cross_entropy(expected.flatten(0, 1), ids.flatten())
    loss, stats = ae(h, ids, mask, mse_weight=0.0)
    torch.testing.assert_close(stats['ce'], ce, rtol=0, atol=1e-6)
    # the gradient never reaches the padding rows
    ae.train()
    ae(h, ids, mask)[0].backward()
    assert ae.token_head.weight.grad[V:].abs().sum() == 0 and ae.token_head.weight.grad[:V].abs().sum() > 0


def test_truncated_latent_cache_is_rebuilt(tiny_encoder_path, tmp_path):
    train_ae.main(ae_cfg(tiny_encoder_path, tmp_path / 'ae'))
    cfg = dict(train_diff.config, data='stories', n_stories=100, val_size=16, eval_size=16, size='tiny',
               ae_ckpt=str(tmp_path / 'ae' / 'ckpt.pt'), batch_size=8, micro_batch_size=8, max_steps=1,
               eval_interval=1, eval_samples=1, sample_steps=1, device='cpu', compile=False,
               out_dir=str(tmp_path / 'diff'))
    train_diff.main(cfg)
    caches = sorted((tmp_path / 'diff').glob('latents_*_train.f16'))
    assert len(caches) == 1
    good = caches[0].read_bytes()
    caches[0].write_bytes(good[:len(good) // 2])  # a cache cut short (a full disk, a copy interrupted)
    train_diff.main(dict(cfg, overwrite=True))
    assert caches[0].read_bytes() == good  # rebuilt, the same latents
