# Table 3's autoencoder with N=128 latents for 128-token rows (no length compression), on the same prepared
# Wikipedia rows as config/ae_wiki_n16.py (its comment has the prepare command).
#   torchrun --standalone --nproc_per_node=8 train_ae.py config/ae_wiki_n128.py
out_dir = 'out/ae_wiki_n128'
data = 'data/wiki_l128'
max_len = 128
n_latents = 128
micro_batch_size = 128   # per GPU: 8 GPUs x 128 = 1024, no accumulation
encoder = 'bert-base-uncased'
n_layers = 12
batch_size = 1024
max_steps = 500000
eval_interval = 5000
