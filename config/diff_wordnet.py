# The diffusion model on an autoencoder from config/ae_wordnet.py (pass --ae_ckpt and --out_dir per variant).
out_dir = 'out/diff_wordnet'
ae_ckpt = 'out/ae_wordnet/ckpt.pt'
data = 'data/wordnet/train.txt'
val_data = 'data/wordnet/validation.txt'
size = 'tiny'
schedule_d = 3.0   # the paper's value for Wikipedia-like text (ROCStories: 5)
batch_size = 64
micro_batch_size = 64
max_steps = 2000
lr = 1e-3
warmup = 100
ema_decay = 0.995
eval_interval = 1000
eval_size = 256
log_interval = 100
device = 'auto'
compile = False
