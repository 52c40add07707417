"""
bench.py: it runs on the CPU at tiny sizes and prints its table; its FLOP formulas match a count by hand and
torch's FLOP counter; torch.compile of the denoiser computes what eager does (CPU: the compile path's logic
with a backend that needs no C compiler; CUDA: inductor in bf16, skipped without a GPU).
"""
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bench
import flops
from autoencoder import Autoencoder
from diffusion import SAMPLERS
from model import DENOISER_SIZES, BlockDenoiser, Denoiser


def test_bench_runs_on_cpu_and_prints_its_table(capsys):
    cfg = bench.get_config(['--device=cpu'])
    assert cfg['size'] == 'tiny' and cfg['batch_size'] == 4  # no CUDA: tiny sizes without asking
    assert bench.get_config(['--device=cpu', '--steps=2'])['steps'] == 2  # flags still beat the tiny defaults
    rows = bench.main(cfg)
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:4] == ['task', 'sampler', 'N', 'batch'])
    assert 'MFU' in out[header] and 'cpu' in out[header - 2]  # the device name is in the table's title
    table = out[header + 1:]
    assert len(table) == len(SAMPLERS) + 4 == len(rows)  # the table is the last thing printed
    for sampler in SAMPLERS:
        assert any(re.match(rf"sample\s+{sampler}\s+4\s+4\s", line) for line in table), sampler
    assert any(line.startswith('train-diff') for line in table) and any(line.startswith('train-ae') for line in table)
    # the block model: a training step over windows of K = 3 blocks (tokens = windows x K x L), a cached block
    blocks = {r['task']: r for r in rows if 'block' in r['task']}
    assert set(blocks) == {'train-blocks', 'sample-block'} and blocks['train-blocks']['tokens'] == 2 * 3 * 16
    assert blocks['sample-block']['tokens'] == 2 * 16 and blocks['sample-block']['batch'] == 2
    assert len([line for line in table if 'block' in line]) == 2
    assert len(bench.main(dict(cfg, n_blocks=0))) == len(SAMPLERS) + 2  # n_blocks=0 skips the block model
    for line in table:
        assert line.split()[-2:] == ['-', '-']  # CPU: no known peak (MFU '-') and no CUDA memory stats
        assert float(line.split()[4]) > 0


def test_denoiser_flops_match_a_hand_count_and_the_flop_counter():
    args = dict(latent_dim=4, dim=8, n_layers=2, n_heads=2)  # c = 4, D = 8, H = 2 heads of 4
    B, N = 1, 3
    # multiply-adds of each Linear: (rows) x in x out; rows = B*N positions, or B examples for the time path
    macs = (
        B * N * 4 * 8                      # in_proj         c -> D
        + 2 * B * 8 * 8                    # time_mlp        two D -> D, once per example
        + 2 * B * 8 * 8                    # time_proj[0:2]  D -> D per example, before each block
        + 2 * B * N * 4 * 8                # sc_proj[0:2]    c -> D per position, before each block
        + 1 * B * N * 16 * 8               # skip_proj[0]    2D -> D, second half (n_layers // 2 = 1)
        + 2 * B * N * (8 * 8               # per block: q    D -> D
                       + 8 * 16            #            kv   D -> 2D
                       + 8 * 8             #            out  D -> D
                       + 8 * 32 + 32 * 8)  #            MLP  D -> 4D -> D
        + 2 * 2 * B * 2 * N * N * 4        # per block: QK^T and AV, B*H*N*N*head_dim each
        + B * N * 8 * 4                    # out_proj        D -> c
    )
    assert macs == 5920
    assert flops.denoiser_flops(args, B, N) == 2 * macs
    assert flops.sampling_flops(args, B, N, 5, 'heun') == 9 * 2 * macs  # 2 * steps - 1 passes
    assert flops.sampling_flops(args, B, N, 5, 'ddim') == 5 * 2 * macs

    # torch's FLOP counter on a real forward pass. On the CPU the default SDPA kernel
    # (aten._scaled_dot_product_flash_attention_for_cpu) is not in the counter's registry, so it would count
    # the Linears alone (11264 = 2 * 5632) and miss exactly the attention term (2 * 288). The math backend
    # runs attention as two bmm's, which it does count: then the two agree exactly.
    model = Denoiser(n_latents=N, **args)
    z = torch.randn(B, N, 4)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(z, torch.rand(B), z)
    assert counter.get_total_flops() == 2 * macs


def test_flop_formulas_at_the_paper_sizes():
    """The same cross-check at 'base' and the paper's autoencoder, on the meta device (shapes, no compute)."""
    B, N, L, d = 2, 16, 128, 768
    with torch.device('meta'), sdpa_kernel(SDPBackend.MATH):
        args = dict(latent_dim=d, **DENOISER_SIZES['base'])
        model, z = Denoiser(n_latents=N, **args), torch.randn(B, N, d)
        with FlopCounterMode(display=False) as counter:
            model(z, torch.rand(B), z)
        assert counter.get_total_flops() == flops.denoiser_flops(args, B, N)
        ae_args = dict(encoder='none', dim=d, vocab_size=30522, max_len=L, n_latents=N, n_layers=12, n_heads=12,
                       kl_beta=0.0)
        ae, h, mask = Autoencoder(ae_args), torch.randn(B, L, d), torch.ones(B, L, dtype=torch.bool)
        with FlopCounterMode(display=False) as counter:
            ae.logits(ae.decompress(ae.compress(h, mask)))
        assert 3 * counter.get_total_flops() == flops.ae_train_flops(ae_args, B)


def test_block_flops_match_the_flop_counter():
    """The block model: a training window's forward over 2KN positions (per-position time, every masked
    product computed) and a cached step at block k, counted by torch's FLOP counter, at 'base' on the meta device
    (config/long_wiki_n16.py's K = 8, N = 16) and at a small size with real tensors for the step's cache."""
    B, K, N, c = 2, 8, 16, 768
    args = dict(latent_dim=c, **DENOISER_SIZES['base'])
    with torch.device('meta'), sdpa_kernel(SDPBackend.MATH):
        model, z = BlockDenoiser(n_latents=N, max_blocks=K, **args), torch.randn(B, K, N, c)
        with FlopCounterMode(display=False) as counter:
            model(z, z, torch.rand(B, K), z)
        assert counter.get_total_flops() == flops.block_forward_flops(args, B, N, K)
    assert flops.block_train_flops(args, B, N, K, 0.5) == 4 * flops.block_forward_flops(args, B, N, K)
    args = dict(latent_dim=4, dim=8, n_layers=3, n_heads=2)
    model, N = BlockDenoiser(n_latents=3, max_blocks=4, **args).eval(), 3
    caches, z, zero = [dict() for _ in model.blocks], torch.randn(B, N, 4), torch.zeros(B)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for k in range(4):
            with FlopCounterMode(display=False) as counter:
                model.step(z, zero, z, k, caches, store=True)  # block k against the k blocks before it
            assert counter.get_total_flops() == flops.block_step_flops(args, B, N, k), k
    assert flops.block_step_flops(args, B, N, 3) > flops.block_step_flops(args, B, N, 0)


def _random_denoiser(device, **size):
    torch.manual_seed(0)
    model = Denoiser(latent_dim=16, n_latents=8, **size).to(device).eval()
    torch.nn.init.normal_(model.out_proj.weight, std=0.1)  # the zero-init output would make any two models agree
    g = torch.Generator(device).manual_seed(1)
    z, sc = (torch.randn(4, 8, 16, generator=g, device=device) for _ in range(2))
    return model, (z, torch.rand(4, generator=g, device=device), sc)


def test_compiled_denoiser_equals_eager_on_cpu():
    """The compile path's logic on the CPU: dynamo's graph capture (fullgraph: no graph breaks, which would
    cost speed on a GPU) and AOT autograd, executed eagerly. Inductor's kernels are checked on CUDA below."""
    model, inputs = _random_denoiser('cpu', **DENOISER_SIZES['tiny'])
    torch.compiler.reset()
    with torch.no_grad():
        eager = model(*inputs)
        compiled = torch.compile(model, backend='aot_eager', fullgraph=True, dynamic=False)(*inputs)
    assert eager.abs().max() > 1e-3
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    torch.compiler.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (inductor kernels in bf16)")
def test_compiled_denoiser_equals_eager_on_gpu():
    model, inputs = _random_denoiser('cuda', **DENOISER_SIZES['small'])
    torch.compiler.reset()
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        eager = model(*inputs).float()
        compiled = torch.compile(model, dynamic=False)(*inputs).float()
    # bf16 keeps 8 bits of mantissa; fused kernels round in other places than eager does
    torch.testing.assert_close(compiled, eager, atol=2e-2 * eager.abs().max().item(), rtol=2e-2)
    torch.compiler.reset()


def test_quickstart_is_timed_stage_by_stage(tmp_path, tiny_encoder_path, capsys):
    # the README line's three scripts, as subprocesses, on tiny configs: a line per stage, the total against the
    # budget (over it: exit 1), the models kept in quickstart_dir, which is never reused
    ae, diff, work = tmp_path / 'ae.py', tmp_path / 'diff.py', tmp_path / 'qs'
    small = ("data = 'stories'\nn_stories = 200\nval_size = 64\neval_size = 64\nbatch_size = 8\n"
             "micro_batch_size = 8\nmax_steps = 2\neval_interval = 2\nlog_interval = 2\ndevice = 'cpu'\n"
             "compile = False\n")
    ae.write_text(small + f"encoder = {tiny_encoder_path!r}\nmax_len = 28\nn_latents = 4\nn_layers = 1\n"
                          "head_dim = 16\nstats_size = 64\n")
    diff.write_text(small + "size = 'tiny'\neval_samples = 1\nsample_steps = 2\n")
    cfg = dict(bench.config, quickstart=True, quickstart_configs=f'{ae},{diff}', quickstart_dir=str(work),
               quickstart_budget=0.001)
    with pytest.raises(SystemExit) as stop:
        bench.main(cfg)
    assert stop.value.code == 1
    out = capsys.readouterr().out.splitlines()
    secs = {line.split()[0]: float(line.split()[1]) for line in out if line.split()[:1] in
            (['train_ae'], ['train_diff'], ['sample'], ['total'])}
    assert set(secs) == {'train_ae', 'train_diff', 'sample', 'total'} and all(v > 0 for v in secs.values())
    assert secs['total'] == pytest.approx(secs['train_ae'] + secs['train_diff'] + secs['sample'], abs=0.25)  # printed to 0.1 s
    assert 'OVER the budget of 0.001 s' in out[-1] and 'printed stories valid' in out[-1]
    assert (work / 'ae' / 'ckpt.pt').is_file() and (work / 'diff' / 'ckpt.pt').is_file()
    with pytest.raises(SystemExit, match="already exists"):
        bench.main(cfg)
    with pytest.raises(SystemExit, match="quickstart config .* not found"):
        bench.main(dict(cfg, quickstart_dir='', quickstart_configs=f'{ae},{tmp_path / "none.py"}'))
