# Table 7's diffusion on Wikipedia: schedule d = 3, 500k steps, max length 512 (2 d 12 h on 8 A100), over the
# L=512, N=128 autoencoder, on its own prepared rows (config/ae_wiki_l512_n128.py has the prepare command).
#   torchrun --standalone --nproc_per_node=8 train_diff.py config/diff_wiki_l512_n128.py
out_dir = 'out/diff_wiki_l512_n128'
ae_ckpt = 'out/ae_wiki_l512_n128/ckpt.pt'
data = 'data/wiki_l512'
cache_latents = False    # ~20M rows x 128 x 768 in fp16 is ~4 TB: encode on the fly
schedule_d = 3.0
size = 'base'
batch_size = 1024
micro_batch_size = 128
max_steps = 500000
ema_decay = 0.9999
eval_interval = 5000
