# A 512-token autoencoder with N=128 latents on Wikipedia (Table 7's Wikipedia column: max length 512), the
# autoencoder of the conditional tasks (config/cond_xsum.py, config/cond_squad.py) and of Table 7's diffusion
# on Wikipedia (config/diff_wiki_l512_n128.py). Prepare the rows at L=512 once:
#   python data/prepare.py --data=hf:wikimedia/wikipedia:20231101.en --out_dir=data/wiki_l512 \
#       --encoder=bert-base-uncased --max_len=512 --val_size=50000 --num_proc=32
#   torchrun --standalone --nproc_per_node=8 train_ae.py config/ae_wiki_l512_n128.py
out_dir = 'out/ae_wiki_l512_n128'
data = 'data/wiki_l512'
max_len = 512
n_latents = 128
micro_batch_size = 32    # per GPU, accumulated to 1024 over 8 GPUs x 4 micro-steps
encoder = 'bert-base-uncased'
n_layers = 12
batch_size = 1024
max_steps = 500000
eval_interval = 5000
