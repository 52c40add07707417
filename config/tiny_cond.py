# The offline CPU conditional task: story -> the same story with giver and receiver swapped (corpus.swap_story),
# on the tiny autoencoder (config/tiny_ae.py), starting from the tiny unconditional model (config/tiny_diff.py).
out_dir = 'out/tiny_cond'
task = 'conditional'
init_from = 'pretrained'
pretrained_ckpt = 'out/tiny_diff/ckpt.pt'
ae_ckpt = 'out/tiny_ae/ckpt.pt'
data = 'stories'
n_stories = 5000
src_max_len = 28
cond_layers = 2
cond_drop = 0.1
size = 'tiny'
schedule_d = 7.0
batch_size = 64
micro_batch_size = 64
max_steps = 2000
lr = 1e-3
warmup = 100
ema_decay = 0.995
eval_interval = 500
eval_size = 256
eval_samples = 64
sample_steps = 50
log_interval = 100
device = 'cpu'
compile = False
