# Table 5: diffusion on OpenWebText over the N=128, L=128 autoencoder (config/ae_owt_n128.py), denoiser of
# 12 layers x 768 ('base'; the paper: 0.12B parameters, ours 108.8M).
# The paper gives no OWT schedule: d = 3 (Table 7's Wikipedia value) and Table 7's optimisation.
#   torchrun --standalone --nproc_per_node=8 train_diff.py config/diff_owt_n128_l12.py
out_dir = 'out/diff_owt_n128_l12'
ae_ckpt = 'out/ae_owt_n128/ckpt.pt'
data = 'data/owt_l128'
cache_latents = False    # 50M+ rows x 128 x 768 in fp16 is ~10 TB: encode on the fly (README: disk per setup)
schedule_d = 3.0
size = 'base'
batch_size = 1024
micro_batch_size = 128
max_steps = 500000
ema_decay = 0.9999
eval_interval = 5000
