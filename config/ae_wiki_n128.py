# The paper's autoencoder for 128-token texts -> N=128 latents (Cosmos_{N=128}), trained on Wikipedia with
# BERT-base (Sec. 6.2, Table 7: AdamW 2e-4, betas (0.9, 0.98), wd 0.01, 1000 warm-up steps then constant,
# clip 1, batch 1024, 500k steps). 8 GPUs: torchrun --standalone --nproc_per_node=8 train_ae.py config/ae_wiki_n128.py
# Wikipedia articles are longer than 128 tokens: each is cut to its first 128 (counted in the eval line).
out_dir = 'out/ae_wiki_n128'
data = 'hf:wikimedia/wikipedia:20231101.en'
val_size = 2000
encoder = 'bert-base-uncased'
max_len = 128
n_latents = 128
n_layers = 12
batch_size = 1024
micro_batch_size = 128   # per GPU: 8 GPUs x 128 = 1024, no accumulation
max_steps = 500000
eval_interval = 5000
