"""
The plumbing the two training scripts and sample.py share, written once: config overrides and value
checks, distributed setup, the precision context, the learning-rate schedule, the output folder (lock,
overwrite refusal, stale temp files), atomic checkpoints, stopping on a signal, and the log line.
Nothing here knows about COSMOS; model.py, autoencoder.py and diffusion.py hold the method.

Config, nanoGPT-style: each script starts with a flat dict of plain values. `configure` overrides it from
config files (`python train_ae.py config/tiny_ae.py`) and flags (`--lr=3e-4`), in command-line order, and
refuses, in one line, a key that is not in the dict or a value of the wrong type.
"""
import ast
import datetime
import fcntl
import functools
import glob
import json
import math
import os
import re
import signal
import socket
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

# -----------------------------------------------------------------------------
# config


def die(msg):
    """Bad input ends here: one line on stderr naming what is wrong, exit status 1, no traceback."""
    raise SystemExit(f"error: {msg}")


def _coerce(key, value, default):
    """Give `value` the type of `default`, or die naming the key."""
    want = type(default)
    if isinstance(value, str) and want is not str:
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            die(f"config key '{key}' must be of type {want.__name__}, got '{value}'")
    if want is float and type(value) is int:
        value = float(value)  # --lr=1 means 1.0
    if type(value) is not want:  # `type is` so that True is not accepted as an int
        die(f"config key '{key}' must be of type {want.__name__}, got {type(value).__name__} {value!r}")
    return value


def configure(config, argv, source=None):
    """Return a copy of `config` overridden by the config files (.py or .json) and --key=value flags in
    `argv`. --help (or -h) prints every key with its default and its comment, read from `source` (the
    calling script's file by default), and exits 0."""
    if '--help' in argv or '-h' in argv:
        print(config_help(config, source or sys._getframe(1).f_globals.get('__file__', '')))
        raise SystemExit(0)
    config = dict(config)

    def set_key(key, value, where):
        if key not in config:
            close = [k for k in config if k.split('_')[0] == key.split('_')[0]] or sorted(config)
            die(f"unknown config key '{key}' ({where}); known keys like it: {', '.join(close[:8])}")
        config[key] = _coerce(key, value, config[key])

    for arg in argv:
        if arg.startswith('--'):
            key, eq, value = arg[2:].partition('=')
            if not eq:
                die(f"flag '{arg}' has no value: write --{key}=VALUE")
            set_key(key, value, arg)
        else:
            if not os.path.isfile(arg):
                die(f"config file '{arg}' not found")
            if arg.endswith('.json'):  # out_dir/config.json of an earlier run (write_config_json)
                scope = read_config_json(arg)
            else:
                scope = {}
                try:
                    with open(arg) as f:
                        exec(compile(f.read(), arg, 'exec'), scope)  # a config file is plain Python assignments
                except SyntaxError as e:
                    die(f"config file '{arg}' line {e.lineno}: {e.msg}")
                except Exception as e:  # a NameError, an import that fails, ...: say which line of the file
                    tb = e.__traceback__
                    while tb.tb_next is not None:
                        tb = tb.tb_next
                    line = tb.tb_lineno if tb.tb_frame.f_code.co_filename == arg else '?'
                    die(f"config file '{arg}' line {line}: {type(e).__name__}: {e}")
            for key, value in scope.items():
                if not key.startswith('_') and not isinstance(value, type(sys)):
                    set_key(key, value, arg)
    return config


def require(cfg, key, ok, rule):
    """Die naming `key` unless ok(cfg[key]): values that parse but mean nothing (a batch of 0) end here."""
    if not ok(cfg[key]):
        die(f"{key}={cfg[key]!r} is not allowed: it must be {rule}")


def at_least(cfg, minimum, *keys):
    for key in keys:
        require(cfg, key, lambda v: v >= minimum, f">= {minimum}")


def in_unit(cfg, *keys, closed_right=False):
    """Shares and probabilities: in [0, 1) (a share of 1 would drop everything), or [0, 1] if closed_right."""
    for key in keys:
        if closed_right:
            require(cfg, key, lambda v: 0 <= v <= 1, "in [0, 1]")
        else:
            require(cfg, key, lambda v: 0 <= v < 1, "in [0, 1)")


def config_help(config, source):
    """Every config key with its default and the comment written beside it in `source`'s config block (a
    continuation comment on the lines below a key is joined to it), as --help prints it."""
    comments, key, column = {}, None, -1
    try:
        lines = open(source).read().splitlines() if source else []
    except OSError:
        lines = []
    for line in lines:
        m = re.match(r"\s+(\w+)=.*?(#\s?(.*))$", line)
        if m and m.group(1) in config:
            key, column, comments[m.group(1)] = m.group(1), m.start(2), m.group(3).strip()
        elif key and line.strip().startswith('#') and line.index('#') == column:  # a comment continued below
            comments[key] += ' ' + line.strip().lstrip('#').strip()
        else:
            key = None
    name = os.path.basename(source) if source else 'script'
    out = [f"usage: python {name} [config files (.py or .json) ...] [--key=value ...]",
           "config files and flags override the defaults below, in command-line order:", '']
    width = max(len(f"{k}={v!r}") for k, v in config.items())
    out += [f"  {f'{k}={v!r}':<{width}}  {comments.get(k, '')}".rstrip() for k, v in config.items()]
    return '\n'.join(out)


def write_config_json(cfg, out_dir):
    """The resolved config as out_dir/config.json: `python train_ae.py out/ae/config.json` repeats the run."""
    path = os.path.join(out_dir, 'config.json')
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, 'w') as f:
        json.dump(cfg, f, indent=1)
        f.write('\n')
    os.replace(tmp, path)
    return path


def read_config_json(path):
    """A config.json as a dict; JSON has no tuples, so lists come back as the tuples the configs use."""
    try:
        with open(path) as f:
            scope = json.load(f)
    except (OSError, ValueError) as e:
        die(f"config file '{path}' is not valid JSON ({e})")
    if not isinstance(scope, dict):
        die(f"config file '{path}' must hold a JSON object of config keys")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in scope.items()}


# -----------------------------------------------------------------------------
# progress bars


def progress(iterable=None, desc=None, total=None, disable=False, **kw):
    """
    tqdm over `iterable`, shown only where a person watches: on rank 0, when stderr is a terminal.
    NANOCOSMOS_PROGRESS=0 silences every bar, NANOCOSMOS_PROGRESS=1 shows them even into a file or pipe.
    Loops that a log line already reports (the training steps) do not use it.
    """
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, disable=disable or not progress_on(), dynamic_ncols=True, **kw)


def progress_on():
    """Whether progress is shown (see progress); also passed to libraries that draw their own (verbose=)."""
    forced = os.environ.get('NANOCOSMOS_PROGRESS', '')
    if forced == '0' or int(os.environ.get('RANK', 0)) != 0:
        return False
    return forced == '1' or sys.stderr.isatty()


# -----------------------------------------------------------------------------
# devices, precision, distributed


def check_device(device):
    """'auto', 'cpu', 'cuda' or 'cuda:N' that exists on this machine, else one line."""
    if device not in ('auto', 'cpu', 'cuda') and not re.fullmatch(r'cuda:\d+', device):
        die(f"device '{device}' is not 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            die(f"device '{device}' asked for, but torch sees no CUDA GPU here (torch {torch.__version__}); "
                f"use --device=cpu")
        if ':' in device and int(device.split(':')[1]) >= torch.cuda.device_count():
            die(f"device '{device}' does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)")


def setup(device, seed, backend=None):
    """
    One plain process, or DDP when torchrun's environment says so (RANK is set). Returns a small dict
    with rank, local_rank, world_size, master, device and device_type. Every rank seeds with seed + rank
    so that augmentations and noise differ between ranks while the model init (seeded before DDP
    broadcasts it anyway) is the same.
    """
    check_device(device)
    ddp = int(os.environ.get('RANK', -1)) != -1
    rank, local_rank, world = 0, 0, 1
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if ddp:
        rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
        world = int(os.environ['WORLD_SIZE'])
        if device.startswith('cuda'):
            device = f'cuda:{local_rank}'
            torch.cuda.set_device(device)
        # the timeout covers the longest wait at a barrier: rank 0 preparing a raw source, or the slowest
        # rank's share of a latent cache (the default 10 minutes is far too short for a paper-scale corpus)
        # device_id binds each rank's NCCL communicator to its GPU (without it NCCL guesses from the rank)
        dist.init_process_group(backend=backend or ('nccl' if device.startswith('cuda') else 'gloo'),
                                timeout=datetime.timedelta(hours=6),
                                device_id=torch.device(device) if device.startswith('cuda') else None)
    # a CPU (gloo) group for the stop flag: agreeing on it every step then needs no GPU sync
    cpu_group = None
    if ddp:
        cpu_group = (dist.new_group(backend='gloo', timeout=datetime.timedelta(hours=6))
                     if dist.get_backend() != 'gloo' else dist.group.WORLD)
    torch.manual_seed(seed + rank)
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (optimizer, schedule) use tf32
        torch.backends.cudnn.allow_tf32 = True
    return dict(ddp=ddp, rank=rank, local_rank=local_rank, world_size=world, master=rank == 0,
                device=device, device_type=device_type, cpu_group=cpu_group)


def teardown(env):
    """The end of a run: signal handlers back as they were, the out_dir lock released, DDP closed."""
    restore_signals()
    release_out_dir()
    if env['ddp']:
        # every rank past its last collective before any group goes: a rank that destroyed its gloo groups
        # while a peer still finished the last all_reduce aborted now and then (SIGABRT, "terminate called
        # without an active exception": 4 of 10 runs of the two-rank stop test on this CPU, 0 of 15 with this)
        dist.barrier(group=env['cpu_group'])
        dist.destroy_process_group()


DTYPES = ('bfloat16', 'float32')


def autocast(device_type, dtype, cpu=False):
    """
    The one mixed-precision context: bf16 autocast on GPU, nothing on CPU (CPU runs stay fp32) unless
    cpu=True asks for CPU bf16 autocast (the tests run the bf16 path so). float16 is refused: without a
    GradScaler its small gradients underflow to zero silently, and bf16 needs no scaler.
    """
    if dtype not in DTYPES:
        die(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}"
            + (" (float16 would need a GradScaler; use bfloat16)" if dtype == 'float16' else ''))
    if dtype == 'float32' or (device_type != 'cuda' and not cpu):
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def to_device(x, env):
    """A CPU batch onto the device: through pinned memory on CUDA, so that non_blocking really overlaps."""
    if env['device_type'] != 'cuda':
        return x.to(env['device'])
    return x.pin_memory().to(env['device'], non_blocking=True)


def global_mean(values, env):
    """
    The mean of each per-micro-step sum in `values` (a 1-D tensor, summed over `accum` micro-steps on this
    rank) over the global batch: summed over ranks, divided by the micro-steps of all ranks. One small
    all_reduce, called at log time only, so every rank logs and checks the same numbers.
    """
    values = values.detach().float().clone()
    if env['ddp']:
        dist.all_reduce(values)
    return values / env['world_size']


def grad_accum_steps(batch_size, micro_batch_size, world_size):
    """The global batch is fixed; micro-batches per optimizer step follow from it and the world size."""
    per_step = micro_batch_size * world_size
    if batch_size % per_step:
        die(f"batch_size={batch_size} is not a multiple of micro_batch_size*world_size={per_step}")
    return batch_size // per_step


def batch_indices(step, micro_step, rank, micro_batch_size, accum, world_size, n, seed):
    """
    The example indices of one micro-batch, computed from the step number alone (no loader state), so
    that a resumed run sees exactly the batches it would have seen. The global batch of step s is
    positions [s*B, (s+1)*B) of an endless stream of epochs, each a fresh permutation seeded by (seed,
    epoch); rank r's micro-step m takes its slice of that global batch.
    """
    B = micro_batch_size * accum * world_size
    start = step * B + (micro_step * world_size + rank) * micro_batch_size
    pos = torch.arange(start, start + micro_batch_size)
    epochs = pos // n
    out = torch.empty_like(pos)
    for e in epochs.unique().tolist():  # a micro-batch spans at most two epochs
        sel = epochs == e
        out[sel] = epoch_permutation(n, seed, e)[pos[sel] % n]
    return out


@functools.lru_cache(maxsize=2)
def epoch_permutation(n, seed, epoch):
    """The order of epoch `epoch`, kept: rebuilding a permutation of millions every micro-step costs ~0.1 s."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def lr_at(step, lr, warmup, min_lr=None, max_steps=0):
    """
    Linear warm-up over `warmup` steps, then constant (Table 7: the paper's schedule, min_lr=None). With a
    min_lr, a cosine decay from lr at the end of the warm-up to min_lr at max_steps (our option, not the
    paper's: the tiny CPU configs use it, since a short run ends better annealed, README "Quickstart").
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if min_lr is None or max_steps <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / (max_steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model, lr, betas, weight_decay):
    """AdamW; weight decay only on matrices (norm gains, biases and embeddings-as-vectors are left alone)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


# -----------------------------------------------------------------------------
# checkpoints: tensors and plain values only, written atomically, loaded with weights_only=True


def rng_state():
    state = dict(cpu=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def gather_rng_states(env):
    """Every rank's RNG state (a list, rank order), so that each rank resumes its own random stream."""
    if not env['ddp']:
        return [rng_state()]
    states = [None] * env['world_size']
    dist.all_gather_object(states, rng_state())
    return states


def restore_rng_states(states, env):
    """The inverse of gather_rng_states. A run resumed on more processes than it was saved from gives the
    extra ranks rank 0's stream, so their augmentations repeat rank 0's (exact resume holds
    only for the same world size)."""
    set_rng_state(states[env['rank']] if env['rank'] < len(states) else states[0])


# The layout of what a checkpoint holds. Raise it whenever that changes, so that an old file is refused in
# one line instead of failing deep inside load_state_dict. 1 (no 'format' key): up to 2026-11-25;
# 2: the token head padded to a multiple of 64 rows.
CHECKPOINT_FORMAT = 2


def save_checkpoint(obj, path):
    """
    Write to a temporary file in the same folder, flush it to the disk, and rename: a crash never leaves a
    half-written file, and a write that fails (disk full) removes its temporary file and stops in one line,
    the previous checkpoint untouched.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, 'wb') as f:
            torch.save(dict(obj, format=CHECKPOINT_FORMAT), f)
            f.flush()
            os.fsync(f.fileno())  # the bytes on the disk before the name points at them
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        if os.path.exists(tmp):
            os.remove(tmp)
        kept = 'the previous one is kept' if os.path.exists(path) else 'there is no previous one'
        die(f"could not write checkpoint '{path}' ({type(e).__name__}: {str(e).splitlines()[0][:150]}); {kept}")
    # the rename itself is durable once the folder's entry is on the disk
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path, stage):
    """Load a checkpoint and check its format and that it comes from `stage` ('autoencoder' or 'diffusion')."""
    if not os.path.isfile(path):
        die(f"checkpoint '{path}' not found")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
        die(f"checkpoint '{path}' could not be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    if not isinstance(ckpt, dict) or ckpt.get('stage') != stage:
        got = ckpt.get('stage') if isinstance(ckpt, dict) else type(ckpt).__name__
        die(f"checkpoint '{path}' is from stage '{got}', expected a '{stage}' checkpoint")
    version = ckpt.get('format', 1)
    if version != CHECKPOINT_FORMAT:
        how = 'older: retrain it, or use the commit that wrote it' if version < CHECKPOINT_FORMAT else 'newer: update this code'
        die(f"checkpoint '{path}' has format {version}, this code reads format {CHECKPOINT_FORMAT} ({how})")
    return ckpt


def load_state(module, state_dict, path):
    """load_state_dict that reports a shape or key mismatch in one line."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        die(f"checkpoint '{path}' does not fit the model it describes: {lines[1] if len(lines) > 1 else lines[0]}")


def keep_copy(path, step, keep_every):
    """Besides the latest checkpoint at `path`, keep ckpt_{step}.pt beside it every keep_every steps (0 = never).
    A hard link where the file system has them: the latest is replaced by rename, never rewritten in place,
    so the kept name goes on holding this step's bytes without a second copy on disk."""
    if not keep_every or step % keep_every:
        return None
    kept = os.path.join(os.path.dirname(path), f"ckpt_{step}.pt")
    tmp = f"{kept}.tmp.{os.getpid()}"
    try:
        os.link(path, tmp)
    except OSError:
        import shutil
        shutil.copyfile(path, tmp)
    os.replace(tmp, kept)
    return kept


# -----------------------------------------------------------------------------
# the output folder: one run at a time, nothing trained overwritten, no stale temporary files

_held = {}  # realpath of out_dir -> the open .lock file this process holds


def claim_out_dir(out_dir, env, init_from='scratch', overwrite=False):
    """
    Make out_dir ready for a run before any work: a folder we can write; an exclusive lock (out_dir/.lock,
    fcntl.flock, released by the kernel when the process dies) so that a second run there stops in one
    line naming the holder; stale temporary checkpoints of killed runs removed; and a fresh run
    (init_from other than 'resume') refused if out_dir/ckpt.pt exists, unless overwrite=True. Only the
    master rank locks and cleans; every rank checks.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        die(f"out_dir '{out_dir}' is a file, not a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        die(f"out_dir '{out_dir}' cannot be created ({e.strerror})")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        die(f"out_dir '{out_dir}' is not writable")
    ckpt = os.path.join(out_dir, 'ckpt.pt')
    if init_from != 'resume' and os.path.exists(ckpt) and not overwrite:
        die(f"'{ckpt}' already exists; a new run (init_from='{init_from}') would overwrite it: resume it with "
            f"--init_from=resume, choose another --out_dir, or pass --overwrite=True")
    if not env['master']:
        return
    key = os.path.realpath(out_dir)
    if key not in _held:  # re-entrant within one process (the tests run several mains in one)
        path = os.path.join(out_dir, '.lock')
        try:
            f = open(path, 'a+')
        except OSError as e:
            die(f"out_dir '{out_dir}' is not writable ({e.strerror})")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'another process'
            f.close()
            die(f"out_dir '{out_dir}' is in use by {holder}; wait for it, stop it, or choose another --out_dir")
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        _held[key] = f
    for tmp in glob.glob(os.path.join(glob.escape(out_dir), '*.pt.tmp.*')):  # we hold the lock: nobody writes them
        os.remove(tmp)


def release_out_dir():
    for f in _held.values():
        f.close()  # closing the file releases the flock
    _held.clear()


def check_writable_file(path, what):
    """An output file we are about to write: its folder exists and is writable, and it is not a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        die(f"{what} '{path}' is a folder, not a file")
    if not os.path.isdir(folder):
        die(f"{what} '{path}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        die(f"{what} '{path}' is not writable")


# -----------------------------------------------------------------------------
# stopping on a signal: SIGINT (Ctrl-C) and SIGTERM (schedulers, kill) finish the optimizer step, save, exit

_signal = dict(received=0, previous={}, armed=False)


def install_signals():
    """
    Until arm_stop() (before the first training step: loading, preparing data, encoding a latent cache),
    SIGINT or SIGTERM ends the run at once in one line: there is nothing to save. After it, the first
    SIGINT or SIGTERM only sets a flag: the loop finishes the current optimizer step, saves a
    checkpoint and exits (stop_requested). A second one of the same kind exits at once, leaving the last
    checkpoint as it is. One of the other kind is the same request: on Ctrl-C under torchrun a worker gets
    SIGINT from the terminal and SIGTERM from torchrun, and must still save.
    """
    def handler(signum, frame):
        if not _signal['armed']:
            raise SystemExit(f"error: stopped by {signal.Signals(signum).name} before the first training step; "
                             f"nothing to save")
        if _signal['received'] == signum:
            print(f"error: second {signal.Signals(signum).name}: exiting now, without a checkpoint",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        _signal['received'] = _signal['received'] or signum
    _signal['received'], _signal['armed'] = 0, False
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.signal(sig, handler)
        _signal['previous'].setdefault(sig, previous)  # a run that died without teardown left ours there


def arm_stop():
    """From here on a signal stops the loop after the current optimizer step, with a checkpoint."""
    _signal['armed'] = True


def restore_signals():
    for sig, previous in _signal['previous'].items():
        signal.signal(sig, previous)
    _signal['previous'].clear()
    _signal['armed'] = False


def stop_requested(env):
    """
    The signal number if any rank got SIGINT/SIGTERM, else 0. Under DDP the ranks agree (all_reduce of the
    flag, every step, on a CPU group) so that they all stop after the same optimizer step.
    """
    flag = _signal['received']
    if env['ddp']:
        t = torch.tensor([flag], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env['cpu_group'])
        flag = int(t.item())
    return flag


def stop(signum, step, ckpt_path, env, log):
    """After the checkpoint of a stop: one line, and the exit status a signal death would give."""
    log(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint '{ckpt_path}' saved, "
        f"continue with --init_from=resume")
    teardown(env)
    raise SystemExit(128 + signum)


# -----------------------------------------------------------------------------
# logging


class Logger:
    """One fixed-format line per interval on the master rank, to stdout and appended to out_dir/log.txt."""

    def __init__(self, out_dir, master):
        self.path = os.path.join(out_dir, 'log.txt') if master else None

    def __call__(self, msg):
        if self.path is None:
            return
        print(msg, flush=True)
        with open(self.path, 'a') as f:
            f.write(msg + '\n')


def check_finite(value, what, step, master=True):
    """Stop on a NaN/inf. Under DDP `value` is the same on every rank, so all stop together; one speaks."""
    if not math.isfinite(value):
        if not master:
            raise SystemExit(1)
        die(f"{what} is {value} at step {step}; stopping before it reaches a checkpoint "
            f"(lower lr, check the data, or resume from the last checkpoint)")


def start_run(cfg, master):
    """What every training run does first, besides its own setup: check keep_every, write the resolved config
    as out_dir/config.json (rank 0), and return the tracker's log function (see tracker)."""
    if cfg['keep_every'] and cfg['keep_every'] % cfg['eval_interval']:
        die(f"keep_every={cfg['keep_every']} must be a multiple of eval_interval={cfg['eval_interval']} "
            f"(checkpoints are written at evaluations)")
    if master:
        write_config_json(cfg, cfg['out_dir'])
    return tracker(cfg, master)


def tracker(cfg, master):
    """
    The optional experiment tracker, nanoGPT's way: with wandb_log=True, rank 0 logs each interval's numbers to
    Weights & Biases (project wandb_project, run wandb_run_name, the resolved config attached). wandb is
    imported only then: off (the default), nothing is imported and the returned function does nothing.
    """
    if not (cfg.get('wandb_log') and master):
        return lambda metrics, step: None
    try:
        import wandb
    except ImportError:
        die("wandb_log=True needs the wandb package: pip install wandb")
    wandb.init(project=cfg['wandb_project'], name=cfg['wandb_run_name'] or None, config=cfg)
    return lambda metrics, step: wandb.log(metrics, step=step)
