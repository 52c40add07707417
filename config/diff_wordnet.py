# The diffusion model on WordNet text, laid over another config (see config/ae_wordnet.py):
#     python train_diff.py config/tiny_diff.py config/diff_wordnet.py
out_dir = 'out/diff_wordnet'
ae_ckpt = 'out/ae_wordnet/ckpt.pt'
data = 'data/wordnet/train.txt'
val_data = 'data/wordnet/validation.txt'
schedule_d = 3.0   # the paper's value for Wikipedia-like text (ROCStories: 5)
device = 'auto'
