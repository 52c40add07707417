# The paper's unconditional diffusion on ROCStories over the N=16 autoencoder (Table 7: schedule d = 5,
# 200k steps, batch 1024, AdamW 2e-4, EMA 0.9999, 200 Euler steps). The denoiser is 'base' (12 x 768 x 12).
# Table 7 lists a max sequence length of 80 for ROCStories; the autoencoder's L (128) applies here, and
# stories are far shorter than either.
out_dir = 'out/diff_roc_n16'
ae_ckpt = 'out/ae_wiki_n16/ckpt.pt'
# a hub copy with train/validation/test splits (~98k stories); its name and text column were not checked
# here (no network): if your copy differs, export it to .jsonl and point data/val_data at the files
data = 'hf:Ximing/ROCStories'
val_data = 'hf:Ximing/ROCStories'        # its 'validation' split
text_field = 'text'
size = 'base'
schedule_d = 5.0
batch_size = 1024
micro_batch_size = 128
max_steps = 200000
ema_decay = 0.9999
eval_interval = 5000
