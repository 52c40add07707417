# Table 2-4's autoencoder: Wikipedia, 128-token rows -> N=16 latents (Cosmos_{N=16}), BERT-base (Sec. 6.2,
# Table 7: AdamW 2e-4, betas (0.9, 0.98), wd 0.01, 1000 warm-up steps then constant, clip 1, batch 1024, 500k
# steps, 14 h on 8 A100). Articles are split into rows at sentence boundaries (the paper: 8.6M sequences, 50,000
# held out). Prepare once (the ROOTS Wikipedia the paper used is not on the hub; this is the current dump):
#   python data/prepare.py --data=hf:wikimedia/wikipedia:20231101.en --out_dir=data/wiki_l128 \
#       --encoder=bert-base-uncased --max_len=128 --val_size=50000 --num_proc=32
# then: torchrun --standalone --nproc_per_node=8 train_ae.py config/ae_wiki_n16.py
out_dir = 'out/ae_wiki_n16'
data = 'data/wiki_l128'
max_len = 128
n_latents = 16
micro_batch_size = 128   # per GPU: 8 GPUs x 128 = 1024, no accumulation
encoder = 'bert-base-uncased'
n_layers = 12
batch_size = 1024
max_steps = 500000
eval_interval = 5000
