# Real English offline: WordNet glosses and examples (data/prepare_wordnet.py), laid over another config:
#     python train_ae.py config/tiny_ae.py config/ae_wordnet.py
# keeps tiny_ae.py's model and optimisation (MiniLM from PyPI, 8 latents, 2 blocks, 600 steps of 16 texts)
# and changes the data. Real English needs far more than 600 steps: on the 2-core development machine
# (2026-11-24, 6 min 41 s) the CE-only variant (Table 1's first row) reached val token accuracy 0.163.
# On a GPU raise max_steps, batch_size and micro_batch_size with flags, and add --compile=True.
out_dir = 'out/ae_wordnet'
data = 'data/wordnet/train.txt'
val_data = 'data/wordnet/validation.txt'
max_len = 32       # 95% of the texts fit (MiniLM tokens, [CLS]/[SEP] included); longer ones are cut and counted
device = 'auto'
