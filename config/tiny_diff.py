# The offline CPU diffusion model on the tiny autoencoder's latents (config/tiny_ae.py).
out_dir = 'out/tiny_diff'
ae_ckpt = 'out/tiny_ae/ckpt.pt'
data = 'stories'
n_stories = 5000
size = 'tiny'
schedule_d = 5.0
batch_size = 64
micro_batch_size = 64
max_steps = 2000
lr = 1e-3
warmup = 100
ema_decay = 0.995
eval_interval = 500
eval_size = 256
log_interval = 100
device = 'cpu'
compile = False
