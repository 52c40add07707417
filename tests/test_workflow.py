"""
The user's workflow around the method: --help, config.json and repeating a run from it, keep-every-k
checkpoints, the optional tracker (nothing imported when off), MFU in the log line, progress bars that
stay quiet where nobody watches, and a repository that stands alone (every file it names is in it; the
two halves of the method do not import each other). CPU, seconds.
"""
import builtins
import importlib.util
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

import common
import flops
import train_ae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['train_ae', 'train_diff', 'sample', 'evaluate', 'bench']


@pytest.mark.parametrize('name', SCRIPTS + ['data/prepare'])
def test_help_names_every_key_with_its_comment(name, capsys):
    spec = importlib.util.spec_from_file_location(name.replace('/', '_'), os.path.join(ROOT, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the script's module, not run: __name__ is not '__main__'
    with pytest.raises(SystemExit) as e:
        common.configure(module.config, ['--lr=oops', '--help'], source=module.__file__)  # --help wins
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key, value in module.config.items():
        line = next((l for l in out.splitlines() if l.strip().startswith(f"{key}={value!r}")), None)
        assert line is not None, key
        assert len(line.split(f"{key}={value!r}", 1)[1].strip()) > 3, f"{name}: config key '{key}' has no comment"


def test_help_from_the_command_line_exits_0():
    proc = subprocess.run([sys.executable, 'sample.py', '--help'], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE='1'), timeout=120)
    assert proc.returncode == 0 and 'num_seeds=1' in proc.stdout


def tiny_ae_cfg(encoder, out_dir, **kw):
    cfg = dict(train_ae.config, data='stories', n_stories=100, val_size=16, eval_size=16, stats_size=32,
               encoder=encoder, max_len=16, n_latents=2, n_layers=1, head_dim=16, batch_size=4,
               micro_batch_size=4, max_steps=4, eval_interval=2, log_interval=1, lr=1e-3, warmup=1,
               device='cpu', compile=False, out_dir=str(out_dir))
    return dict(cfg, **kw)


def test_config_json_repeats_the_run_keeps_every_k_and_logs_mfu(tiny_encoder_path, tmp_path):
    cfg = tiny_ae_cfg(tiny_encoder_path, tmp_path / 'a', keep_every=2)
    train_ae.main(cfg)
    saved = tmp_path / 'a' / 'config.json'
    # the configurator takes config.json as it takes a .py config file, and resolves the same config
    assert common.configure(train_ae.config, [str(saved)]) == cfg
    # a flag after it still wins, as after a .py file
    assert common.configure(train_ae.config, [str(saved), '--lr=0.5'])['lr'] == 0.5
    # keep_every=2 over 4 steps: ckpt_2.pt and ckpt_4.pt besides the latest, each holding its own step
    kept = sorted(f for f in os.listdir(tmp_path / 'a') if f.startswith('ckpt'))
    assert kept == ['ckpt.pt', 'ckpt_2.pt', 'ckpt_4.pt']
    steps = [common.load_checkpoint(str(tmp_path / 'a' / f), 'autoencoder')['step'] for f in kept]
    assert steps == [4, 2, 4]
    # MFU in the step line: a count over an unknown CPU peak prints '-'
    line = [l for l in open(tmp_path / 'a' / 'log.txt') if l.startswith('step')][-1]
    assert re.search(r'\| [\d.e+-]+ TFLOP/s \| mfu -$', line.strip()), line
    with pytest.raises(SystemExit, match='keep_every=3 must be a multiple of eval_interval=2'):
        train_ae.main(tiny_ae_cfg(tiny_encoder_path, tmp_path / 'b', keep_every=3))
    bad = tmp_path / 'bad.json'
    bad.write_text('{"lr": ')
    with pytest.raises(SystemExit, match="is not valid JSON"):
        common.configure(train_ae.config, [str(bad)])


def test_tracker_off_imports_nothing_and_on_logs(tiny_encoder_path, tmp_path, monkeypatch):
    imported, real_import = [], builtins.__import__

    def spy(name, *args, **kw):
        imported.append(name)
        return real_import(name, *args, **kw)
    monkeypatch.delitem(sys.modules, 'wandb', raising=False)
    monkeypatch.setattr(builtins, '__import__', spy)
    train_ae.main(tiny_ae_cfg(tiny_encoder_path, tmp_path / 'off', max_steps=2))
    monkeypatch.setattr(builtins, '__import__', real_import)
    assert imported and not [n for n in imported if n.split('.')[0] == 'wandb']
    # on: a stand-in wandb module records what the run sends
    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(('init', kw)),
                                 log=lambda metrics, step: calls.append(('log', metrics, step)))
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    cfg = tiny_ae_cfg(tiny_encoder_path, tmp_path / 'on', max_steps=2, wandb_log=True, wandb_run_name='r1')
    train_ae.main(cfg)
    assert calls[0] == ('init', dict(project='nanocosmos', name='r1', config=cfg))
    logged = [(c[2], sorted(c[1])) for c in calls[1:]]
    assert (1, ['grad_norm', 'loss', 'lr', 'ms_per_step']) in logged
    assert (2, ['val_exact', 'val_loss', 'val_token_acc']) in logged
    assert common.tracker(dict(cfg, wandb_log=True), master=False)({'loss': 1.0}, 3) is None  # rank > 0: nothing
    assert len(calls) == 1 + len(logged)


def test_mfu_fields_and_training_flops():
    assert flops.mfu_fields(2e12, 1.0, 1e12, world_size=2) == ' | 2 TFLOP/s | mfu 100.0%'
    assert flops.mfu_fields(1e12, 2.0, 1e12) == ' | 0.5 TFLOP/s | mfu 50.0%'
    assert flops.mfu_fields(1e12, 1.0, 0.0) == ' | 1 TFLOP/s | mfu -'  # unknown peak (CPU)
    assert flops.mfu_fields(None, 1.0, 1e12) == ' | TFLOP/s - | mfu -'  # unknown count (conditional)
    args = dict(latent_dim=8, dim=16, n_layers=2, n_heads=2, n_latents=4)
    assert flops.diffusion_train_flops(args, 3, 0.5) == 4 * flops.denoiser_flops(args, 3, 4)
    assert flops.diffusion_train_flops(args, 3, 0.0) == 3 * flops.denoiser_flops(args, 3, 4)
    assert flops.diffusion_train_flops(dict(args, cond_layers=1), 3, 0.5) is None
    assert flops.peak_flops('NVIDIA H100 80GB HBM3') == 989e12 and flops.peak_flops('NVIDIA H100 PCIe') == 756e12
    assert flops.peak_flops('cpu') == 0.0


def test_progress_is_quiet_unless_watched(monkeypatch):
    monkeypatch.setattr(sys.stderr, 'isatty', lambda: True, raising=False)
    monkeypatch.delenv('NANOCOSMOS_PROGRESS', raising=False)
    monkeypatch.delenv('RANK', raising=False)
    assert common.progress_on()
    monkeypatch.setenv('RANK', '1')
    assert not common.progress_on()  # only rank 0 draws bars
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('NANOCOSMOS_PROGRESS', '0')
    assert not common.progress_on()  # asked to be quiet
    monkeypatch.setenv('NANOCOSMOS_PROGRESS', '')
    monkeypatch.setattr(sys.stderr, 'isatty', lambda: False, raising=False)
    assert not common.progress_on()  # a log file or a pipe
    monkeypatch.setenv('NANOCOSMOS_PROGRESS', '1')
    assert common.progress_on()
    bar = common.progress(range(3), desc='x', disable=True)
    assert bar.disable and list(bar) == [0, 1, 2]


def repo_files():
    out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [f for f in out if os.path.isfile(os.path.join(ROOT, f))]


def test_every_file_the_repository_names_is_in_it():
    """Any *.py or *.md name in the repository's text (README, docs, code, configs, CI) must resolve to a file
    in it: relative to the root, to the naming file's folder, or by its bare name anywhere in the tree.
    tests/ is not scanned: the tests name missing files on purpose. A glob (nanoGPT's data/*/prepare.py) is
    a pattern, not a file."""
    files = repo_files()
    names = {os.path.basename(f) for f in files}
    pattern = re.compile(r"(?<![\w./\\*-])([\w./-]*\w\.(?:py|md))\b")  # not inside a glob like data/*/prepare.py
    missing = []
    for f in files:
        if f.startswith('tests/') or not (f.endswith(('.py', '.md', '.txt')) or f.startswith('.ci/')):
            continue
        with open(os.path.join(ROOT, f), encoding='utf-8') as fh:
            for i, line in enumerate(fh, 1):
                for name in pattern.findall(line):
                    here = [name, os.path.join(os.path.dirname(f), name)]
                    if not any(os.path.isfile(os.path.join(ROOT, p)) for p in here) and name not in names:
                        missing.append(f"{f}:{i}: {name}")
    assert not missing, missing


def test_the_two_halves_of_the_method_do_not_import_each_other():
    imports = re.compile(r"^\s*(?:from|import)\s+(\w+)", re.M)
    for a, b in (('diffusion', 'autoencoder'), ('autoencoder', 'diffusion')):
        src = open(os.path.join(ROOT, f'{a}.py')).read()
        assert b not in imports.findall(src), f"{a}.py imports {b}"
    # and no module imports a script
    scripts = set(SCRIPTS) | {'roundtrip'}
    for f in repo_files():
        if f.endswith('.py') and not f.startswith(('tests/', 'data/')) and os.path.splitext(f)[0] not in scripts:
            found = set(imports.findall(open(os.path.join(ROOT, f)).read())) & scripts
            assert not found, f"{f} imports the script(s) {found}"
