# Table 5's autoencoder: OpenWebText, 128-token rows -> N=128 latents ("the largest latent space of 128 vectors
# for 128-token sequences"), shared by the three denoisers of config/diff_owt_n128_l{12,24,48}.py.
# OpenWebText (Sec. 8). The paper does not give its OWT autoencoder's schedule: Table 7's Wikipedia one is used.
# Prepare once (hub name from its card, not checked here: no network):
#   python data/prepare.py --data=hf:Skylion007/openwebtext --out_dir=data/owt_l128 --encoder=bert-base-uncased \
#       --max_len=128 --val_size=50000 --num_proc=32
#   torchrun --standalone --nproc_per_node=8 train_ae.py config/ae_owt_n128.py
out_dir = 'out/ae_owt_n128'
data = 'data/owt_l128'
max_len = 128
n_latents = 128
micro_batch_size = 128
encoder = 'bert-base-uncased'
n_layers = 12
batch_size = 1024
max_steps = 500000
eval_interval = 5000
