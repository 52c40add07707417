# Long text on the CPU: a block model over the tiny autoencoder's latents (config/tiny_ae.py), trained on
# documents of 4 chained stories (data='chained': story k+1's giver is story k's receiver, the object carries
# over), prepared on first use into out_dir/data/ with one story a row (block), windows of 4 blocks with the
# end marker between documents. 15 min 6 s on this project's 2-core CPU with nothing else running
# (2026-11-26; 31 min 29 s earlier the same day on the loaded machine). Results: README, "Long text".
out_dir = 'out/tiny_long'
ae_ckpt = 'out/tiny_ae/ckpt.pt'
task = 'blocks'
data = 'chained'
n_blocks = 4
n_stories = 16000                # 4,000 documents
val_size = 1024                  # validation rows (stories): 256 documents
size = 'mini'                    # 4 x 128
schedule_d = 5.0
cond_drop = 0.1
batch_size = 64
micro_batch_size = 64
max_steps = 3000
lr = 1e-3
warmup = 100
ema_decay = 0.995
eval_interval = 500
eval_size = 256
eval_samples = 2
sample_steps = 50
log_interval = 100
device = 'cpu'
compile = False
