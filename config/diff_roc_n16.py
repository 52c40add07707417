# Table 3-4's unconditional diffusion on ROCStories over the N=16 autoencoder (Table 7: schedule d = 5, 200k
# steps, batch 1024, AdamW 2e-4, EMA 0.9999, 200 Euler steps; 1 d 5 h on 8 A100). The denoiser is 'base'
# (12 x 768 x 12). Table 7 lists a max length of 80 for ROCStories; the autoencoder's L (128) applies here.
# ROCStories (App. A: 98,161 stories, 10,000 held out). From the official CSVs (columns sentence1..sentence5,
# joined into one story), concatenated, prepared with the autoencoder's tokenizer and L:
#   (cat ROCStories__spring2016.csv; tail -n +2 ROCStories_winter2017.csv) > data/rocstories.csv
#   python data/prepare.py --data=data/rocstories.csv --out_dir=data/roc_l128 --encoder=bert-base-uncased \
#       --max_len=128 --val_size=10000
# (a hub copy works too if it has a text column: --data=hf:NAME --text_field=...; not checked here, no network)
#   torchrun --standalone --nproc_per_node=8 train_diff.py config/diff_roc_n16.py
out_dir = 'out/diff_roc_n16'
ae_ckpt = 'out/ae_wiki_n16/ckpt.pt'
data = 'data/roc_l128'
schedule_d = 5.0
size = 'base'
batch_size = 1024
micro_batch_size = 128
max_steps = 200000
ema_decay = 0.9999
eval_interval = 5000
