# The offline CPU diffusion model of the quickstart, on the tiny autoencoder's latents (config/tiny_ae.py).
# Measured on 2 CPU cores on 2026-11-26 (README, "Quickstart"); the samples are the bottleneck of the
# quickstart once the autoencoder reconstructs 95% of held-out stories validly.
out_dir = 'out/tiny_diff'
ae_ckpt = 'out/tiny_ae/ckpt.pt'
data = 'stories'
n_stories = 5000
size = 'tiny'
schedule_d = 5.0
batch_size = 64
micro_batch_size = 64
# 6000 steps, not 2000: on the 1500-step autoencoder, 2000 steps gave 7.5% valid samples (3 seeds x 500,
# 20 dpm2m steps) and 6000 gave 25.3%; the validation loss was still falling at 6000 (0.384 at 2000, 0.328).
# A step of this denoiser costs about a quarter of an autoencoder step, so this is where spare minutes go.
max_steps = 6000
lr = 1e-3
warmup = 100
ema_decay = 0.995
eval_interval = 3000        # each evaluation samples with 200 Euler steps: two of them, not twelve
eval_size = 256
log_interval = 100
device = 'cpu'
compile = False
