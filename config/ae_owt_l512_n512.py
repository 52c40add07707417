# Table 6's autoencoder: OpenWebText, 512-token rows -> N=512 latents (no compression).
# OpenWebText (Sec. 8). The paper does not give its OWT autoencoder's schedule: Table 7's Wikipedia one is used.
# Prepare once (hub name from its card, not checked here: no network):
#   python data/prepare.py --data=hf:Skylion007/openwebtext --out_dir=data/owt_l512 --encoder=bert-base-uncased \
#       --max_len=512 --val_size=50000 --num_proc=32
#   torchrun --standalone --nproc_per_node=8 train_ae.py config/ae_owt_l512_n512.py
out_dir = 'out/ae_owt_l512_n512'
data = 'data/owt_l512'
max_len = 512
n_latents = 512
micro_batch_size = 16    # per GPU, accumulated to 1024 over 8 GPUs x 8 micro-steps
encoder = 'bert-base-uncased'
n_layers = 12
batch_size = 1024
max_steps = 500000
eval_interval = 5000
