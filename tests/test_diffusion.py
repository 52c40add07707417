"""
diffusion.py against known answers: the schedule's shape, the forward process's statistics, the sampler
on Gaussian data with the exact x0-predictor (where the answer is the data distribution itself), the
per-example self-conditioning of the loss, and the EMA arithmetic. No trained network anywhere: CPU,
a few seconds in all.
"""
import math

import pytest
import torch
import torch.nn as nn

from diffusion import GRIDS, alpha_bar, diffusion_loss, ema_update, log_snr, q_sample, sample, time_grid



# -----------------------------------------------------------------------------
# schedule and forward process


def test_schedule_shape():
    d = 5.0
    assert alpha_bar(torch.tensor([0.0]), d).item() == 1.0
    assert alpha_bar(torch.tensor([1.0]), d).item() < 1e-6
    grid = torch.linspace(0, 1, 1001)
    a = alpha_bar(grid, d)
    assert torch.all(a[1:] < a[:-1]), "alpha_bar must be strictly decreasing in t"
    assert torch.all((a >= 0) & (a <= 1))
    # a larger d is noisier sooner: smaller alpha at every interior t
    inner = grid[1:-1]
    for d_lo, d_hi in [(3.0, 5.0), (5.0, 9.0), (1.0, 1.5)]:
        assert torch.all(alpha_bar(inner, d_hi) < alpha_bar(inner, d_lo))
    # the formula at one point by hand: t = 1/2 -> tan(pi/4) = 1 -> alpha = 1 / (1 + d^2)
    assert math.isclose(alpha_bar(torch.tensor([0.5]), d).item(), 1 / 26, rel_tol=1e-6)


def test_q_sample_statistics():
    d = 5.0
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.99])
    a = alpha_bar(t, d)
    g = torch.Generator().manual_seed(0)
    # z0 = 0: z_t is pure noise of std sqrt(1 - alpha_t), per example
    eps = torch.randn(5, 64, 64, generator=g)
    z_t = q_sample(torch.zeros(5, 64, 64), t, eps, d)
    torch.testing.assert_close(z_t.std(dim=(1, 2)), (1 - a).sqrt(), rtol=0.03, atol=0)
    # eps = 0: z_t = sqrt(alpha_t) z0 exactly
    z0 = torch.randn(5, 4, 8, generator=g)
    z_t = q_sample(z0, t, torch.zeros_like(z0), d)
    torch.testing.assert_close(z_t, a.sqrt()[:, None, None] * z0, rtol=1e-6, atol=0)
    # total variance is preserved for unit-variance z0 (the process is variance-preserving)
    z0 = torch.randn(5, 64, 64, generator=g)
    z_t = q_sample(z0, t, torch.randn(5, 64, 64, generator=g), d)
    torch.testing.assert_close(z_t.var(dim=(1, 2)), torch.ones(5), rtol=0.05, atol=0)


# -----------------------------------------------------------------------------
# the sampler on Gaussian data with the exact x0-predictor


def gaussian_x0_predictor(m, s, d):
    """
    For data z0 ~ N(m, s^2 I), z_t = sqrt(a) z0 + sqrt(1 - a) eps:
    E[z0 | z_t] = m + sqrt(a) s^2 / (a s^2 + 1 - a) (z_t - sqrt(a) m). It ignores the self-conditioning
    input (*rest: sc, and cond / cond_drop when given).
    """
    def model(z_t, t, sc, *rest):
        assert torch.all(t == t[0])  # one time for the whole batch in the sampler
        a = alpha_bar(t[:1], d)
        return m + a.sqrt() * s ** 2 / (a * s ** 2 + 1 - a) * (z_t - a.sqrt() * m)
    return model


SHAPE = (4000, 4, 8)  # 128,000 independent samples: standard error of the mean s/358, of the std s/506


def _sample_stats(m, s, steps, sampler, d=5.0, t_min=1e-3, seed=0, grid='uniform'):
    x = sample(gaussian_x0_predictor(m, s, d), SHAPE, steps, d, t_min, sampler,
               generator=torch.Generator().manual_seed(seed), grid=grid)
    assert x.shape == SHAPE and torch.isfinite(x).all()
    return x.mean().item(), x.std().item()


def test_ddim_reproduces_gaussian_data():
    # Measured on this code (200 steps, d = 5, t_min = 1e-3): mean 1.4985, std 0.4848 for N(1.5, 0.5^2);
    # std 1.984 for N(0, 2^2). The std is a little low because the Euler (DDIM) step is first order:
    # the error halves with every doubling of the steps (0.060, 0.030, 0.015 at 50, 100, 200 steps).
    # Tolerances: mean within 0.01 (7 standard errors at s = 0.5), std within 5% of s.
    mean, std = _sample_stats(1.5, 0.5, 200, 'ddim')
    assert abs(mean - 1.5) < 0.01
    assert abs(std - 0.5) < 0.05 * 0.5
    mean, std = _sample_stats(0.0, 2.0, 200, 'ddim')
    assert abs(mean) < 0.03  # 5 standard errors at s = 2
    assert abs(std - 2.0) < 0.05 * 2.0


def test_ancestral_reproduces_gaussian_data():
    # The posterior-sampling (ancestral) step is first order too, with a larger constant: measured std
    # 0.401, 0.440, 0.464 at 50, 100, 200 steps for s = 0.5. Tolerance: std within 10% of s at 200 steps
    # (7% measured), mean within 0.01.
    mean, std = _sample_stats(1.5, 0.5, 200, 'ancestral')
    assert abs(mean - 1.5) < 0.01
    assert abs(std - 0.5) < 0.10 * 0.5


def test_heun_passes_the_gaussian_test_with_fewer_steps():
    # Heun (second order) passes the test Euler passes at 200 steps with 50 (99 network passes): measured
    # std 0.4825 at 50 steps and 0.4993 at 200, against Euler's 0.4404 at 50 and 0.4848 at 200. Asserted:
    # at 50 steps within the 5% the Euler test allows at 200, and within 0.005 of Euler at 200 (the
    # std's own standard error here is 0.5 / sqrt(2 * 128000) = 0.001).
    mean, std = _sample_stats(1.5, 0.5, 50, 'heun')
    assert abs(mean - 1.5) < 0.01
    assert abs(std - 0.5) < 0.05 * 0.5
    assert abs(std - _sample_stats(1.5, 0.5, 200, 'ddim')[1]) < 0.005
    # second order: doubling the steps from 50 to 100 cuts the error by well over the first-order 2x
    err50, err100 = abs(std - 0.5), abs(_sample_stats(1.5, 0.5, 100, 'heun')[1] - 0.5)
    assert err100 < 0.35 * err50, (err50, err100)


def test_dpm2m_passes_the_gaussian_test_with_ten_steps():
    # DPM-Solver++(2M) on the log-SNR grid, one network pass per step: measured std 0.4320, 0.5139, 0.5067,
    # 0.5016, 0.5004 at 5, 10, 20, 50, 200 steps for N(1.5, 0.5^2), against Euler's (uniform grid) 0.2542 at
    # 10 and 0.4848 at 200. Asserted: at 10 steps within the 5% the Euler test allows at 200 steps, and at
    # 20 steps closer to the answer than Euler at 200.
    mean, std = _sample_stats(1.5, 0.5, 10, 'dpm2m', grid='logsnr')
    assert abs(mean - 1.5) < 0.01
    assert abs(std - 0.5) < 0.05 * 0.5
    err20 = abs(_sample_stats(1.5, 0.5, 20, 'dpm2m', grid='logsnr')[1] - 0.5)
    assert err20 < abs(_sample_stats(1.5, 0.5, 200, 'ddim')[1] - 0.5), err20
    mean, std = _sample_stats(0.0, 2.0, 20, 'dpm2m', grid='logsnr')
    assert abs(mean) < 0.03 and abs(std - 2.0) < 0.05 * 2.0
    # second order on the uniform grid too (its last step is first order, see diffusion.sample): the error
    # falls from 0.0149 at 50 steps to 0.0027 at 200 (5.5x; a first-order method: 4x)
    err50 = abs(_sample_stats(1.5, 0.5, 50, 'dpm2m')[1] - 0.5)
    err200 = abs(_sample_stats(1.5, 0.5, 200, 'dpm2m')[1] - 0.5)
    assert err200 < 0.25 * err50, (err50, err200)


def test_time_grids_are_monotone_and_hit_both_ends():
    for grid in GRIDS:
        for steps in (1, 2, 5, 10, 200):
            for d, t_min in ((5.0, 1e-3), (1.0, 0.05), (9.0, 1e-4)):
                ts = time_grid(steps, t_min, d, grid)
                assert ts.dtype == torch.float32 and ts.shape == (steps + 1,)
                assert ts[0].item() == 1.0 and ts[-1].item() == torch.tensor(t_min).item(), (grid, steps, ts)
                assert torch.all(ts[1:] < ts[:-1]), (grid, steps, d, t_min, ts)
    torch.testing.assert_close(time_grid(10, 1e-3, 5.0, 'uniform'), torch.linspace(1.0, 1e-3, 11))
    # 'logsnr': after the first point, equal steps in lambda(t) = log(alpha / (1 - alpha)), starting where
    # the uniform grid's first step ends
    ts = time_grid(10, 1e-3, 5.0, 'logsnr')
    assert abs(ts[1].item() - (1 - (1 - 1e-3) / 10)) < 1e-6
    gaps = log_snr(ts[2:], 5.0) - log_snr(ts[1:-1], 5.0)
    torch.testing.assert_close(gaps, torch.full_like(gaps, gaps.mean().item()), rtol=1e-4, atol=0)
    torch.testing.assert_close(log_snr(torch.tensor([0.5]), 5.0), torch.tensor([-2 * math.log(5.0)], dtype=torch.float64))


def test_samplers_converge_with_steps():
    # The error in std must shrink from 50 to 200 steps (first order: by ~4x; asserted: at least 2x).
    for sampler in ('ddim', 'ancestral'):
        err50 = abs(_sample_stats(1.5, 0.5, 50, sampler)[1] - 0.5)
        err200 = abs(_sample_stats(1.5, 0.5, 200, sampler)[1] - 0.5)
        assert err200 < 0.5 * err50, (sampler, err50, err200)


def test_sample_returns_the_x0_estimate_and_carries_self_conditioning():
    # a predictor returning a constant c: the output must be c exactly (the final x0 estimate, never
    # the last noisy z, which would carry noise and the sqrt(alpha) factor)
    c = torch.full((3, 2, 5), 0.37)
    for sampler in ('ddim', 'ancestral'):
        out = sample(lambda z, t, sc, *rest: c.clone(), c.shape, 7, 5.0, 1e-3, sampler,
                     generator=torch.Generator().manual_seed(0))
        assert torch.equal(out, c)
    # 'dpm2m' returns its final state over sqrt(alpha(t_min)): for a constant predictor the exponential
    # integrator is exact, z(t_min) = sqrt(a) c + sigma z(1), so the output is c + (sigma / sqrt(a)) z(1)
    for grid in GRIDS:
        out = sample(lambda z, t, sc, *rest: c.clone(), c.shape, 7, 5.0, 1e-3, 'dpm2m',
                     generator=torch.Generator().manual_seed(0), grid=grid)
        a = alpha_bar(torch.tensor(1e-3), 5.0)
        z1 = torch.randn(c.shape, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, c + ((1 - a) / a).sqrt() * z1, rtol=0, atol=2e-4)  # float32 rounding

    # the self-conditioning input of step i is the x0 estimate of step i - 1 (0 at the first step),
    # and time runs from t = 1 downwards
    calls = []

    def model(z, t, sc, *rest):
        out = 0.5 * z + t[:, None, None]
        calls.append((t.clone(), sc.clone(), out.clone()))
        return out

    steps = 6
    sample(model, (2, 3, 4), steps, 5.0, 1e-3, 'ddim', generator=torch.Generator().manual_seed(0))
    assert len(calls) == steps
    assert calls[0][0][0].item() == 1.0 and torch.all(calls[0][1] == 0)
    for (t_prev, _, out_prev), (t, sc, _) in zip(calls, calls[1:]):
        assert torch.equal(sc, out_prev)
        assert t[0] < t_prev[0]


def test_autoguidance_known_answers():
    # constant predictors c (the model) and g (the guide): every step's x0 is c + (w - 1)(c - g), and
    # the sampler returns the last one exactly
    c, g = torch.full((3, 2, 5), 0.37), torch.full((3, 2, 5), -0.2)
    seen = []

    def guide(z, t, sc, *rest):
        seen.append((z.clone(), t.clone(), sc.clone()))
        return g.clone()
    for w in (0.0, 2.0, 3.5):
        out = sample(lambda z, t, sc, *rest: c.clone(), c.shape, 5, 5.0, 1e-3, 'ddim', guidance=w, guide=guide,
                     generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, c + (w - 1) * (c - g), rtol=0, atol=1e-6)
    # the guide reads the model's state, time and self-conditioning estimate (the guided x0 of the last step)
    torch.testing.assert_close(seen[-1][2], c + 2.5 * (c - g), rtol=0, atol=1e-6)  # w = 3.5
    assert seen[-5][2].eq(0).all()
    # w = 1 never calls the guide, and a guide equal to the model changes nothing at any w
    gauss, n = gaussian_x0_predictor(1.5, 0.5, 5.0), len(seen)
    plain = sample(gauss, (64, 4, 8), 10, 5.0, 1e-3, 'ddim', generator=torch.Generator().manual_seed(1))
    one = sample(gauss, (64, 4, 8), 10, 5.0, 1e-3, 'ddim', guidance=1.0, guide=guide,
                 generator=torch.Generator().manual_seed(1))
    same = sample(gauss, (64, 4, 8), 10, 5.0, 1e-3, 'ddim', guidance=2.0, guide=gauss,
                  generator=torch.Generator().manual_seed(1))
    assert torch.equal(one, plain) and len(seen) == n
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-6)
    # a guide that believes the data wider (s = 1) pushes the samples narrower than s = 0.5, more so with w
    # (measured: std 0.485, 0.339, 0.236 at w = 1, 1.5, 2)
    wide = gaussian_x0_predictor(1.5, 1.0, 5.0)
    stds = [sample(gauss, SHAPE, 200, 5.0, 1e-3, 'ddim', guidance=w, guide=wide,
                   generator=torch.Generator().manual_seed(0)).std().item() for w in (1.0, 1.5, 2.0)]
    assert 0.45 < stds[0] and stds[0] > stds[1] + 0.02 > stds[2] + 0.04
    with pytest.raises(ValueError, match='unconditional'):
        sample(gauss, c.shape, 2, 5.0, 1e-3, guidance=2.0, guide=gauss, cond=torch.zeros(3, 1, 5))


def test_autoguidance_interval():
    # guide_t_min: the guide is called at exactly the steps with t >= guide_t_min (the uniform grid of 10 steps
    # visits t = 1, 0.9, ..., 0.1 up to t_min), and the steps below sample plainly
    gauss, wide = gaussian_x0_predictor(1.5, 0.5, 5.0), gaussian_x0_predictor(1.5, 1.0, 5.0)
    times = []

    def guide(z, t, sc, *rest):
        times.append(float(t[0]))
        return wide(z, t, sc)
    run = lambda lo: sample(gauss, (64, 4, 8), 10, 5.0, 1e-3, 'ddim', guidance=2.0, guide=guide,  # noqa: E731
                            guide_t_min=lo, generator=torch.Generator().manual_seed(1))
    full, plain = run(0.0), sample(gauss, (64, 4, 8), 10, 5.0, 1e-3, 'ddim', generator=torch.Generator().manual_seed(1))
    assert len(times) == 10
    times.clear()
    half = run(0.55)
    assert times == pytest.approx([1.0, 0.9001, 0.8002, 0.7003, 0.6004], abs=1e-3)  # t >= 0.55 only
    times.clear()
    torch.testing.assert_close(run(1.5), plain, rtol=0, atol=0)  # above t = 1: never guided, the plain run
    assert times == []
    # guided early only: neither the plain nor the fully guided answer
    assert (half - plain).abs().max() > 1e-3 and (half - full).abs().max() > 1e-3


# -----------------------------------------------------------------------------
# the loss: self-conditioning per example


class RecordingModel:
    """A stand-in x0-predictor that records the self-conditioning input of every call."""

    def __init__(self):
        self.sc = []
        self.outputs = []

    def __call__(self, z_t, t, sc, *rest):
        self.sc.append(sc.clone())
        out = 1.0 + t[:, None, None] + 0.0 * z_t  # non-zero for every example
        self.outputs.append(out.clone())
        return out


def test_self_conditioning_is_per_example():
    torch.manual_seed(0)
    rec = RecordingModel()
    z0 = torch.randn(64, 4, 8)
    diffusion_loss(rec, z0, 5.0, 1e-3, self_cond_prob=0.5)
    assert len(rec.sc) == 2
    assert torch.all(rec.sc[0] == 0)  # the first pass reads sc = 0
    sc = rec.sc[1]
    zero_rows = (sc == 0).flatten(1).all(1)
    first_rows = (sc == rec.outputs[0]).flatten(1).all(1)
    # each example reads either 0 or the (whole) first-pass estimate ...
    assert torch.all(zero_rows ^ first_rows)
    # ... and within one batch both happen (per example, not per batch; P(all one kind) = 2^-63)
    assert 10 < int(first_rows.sum()) < 54


def test_no_self_conditioning_means_one_pass_with_zero():
    torch.manual_seed(0)
    rec = RecordingModel()
    z0 = torch.randn(16, 4, 8)
    loss = diffusion_loss(rec, z0, 5.0, 1e-3, self_cond_prob=0.0)
    assert len(rec.sc) == 1 and torch.all(rec.sc[0] == 0)
    # and the loss is the plain MSE between the prediction and z0
    torch.testing.assert_close(loss, ((rec.outputs[0] - z0) ** 2).mean())


# -----------------------------------------------------------------------------
# EMA


def test_ema_update_arithmetic():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        for p in ema.parameters():
            p.normal_()  # every parameter differs from the model's (BatchNorm's weight starts at 1 in both)
    model.train()(torch.randn(8, 4))  # non-trivial BatchNorm running statistics in the model
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, model, 0.9)
    for e, e0, p in zip(ema.parameters(), before, model.parameters()):
        assert not torch.equal(e0, p)  # the check below could fail
        torch.testing.assert_close(e, 0.9 * e0 + 0.1 * p, rtol=1e-6, atol=1e-7)
    for eb, b in zip(ema.buffers(), model.buffers()):  # buffers are copied, not averaged
        assert torch.equal(eb, b)
