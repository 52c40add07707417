# Long text over the Wikipedia N=16 autoencoder (config/ae_wiki_n16.py): a block-causal 'base' denoiser over
# windows of K=8 chunks of at most 128 tokens (1,024 tokens), 8 GPUs:
#   python data/prepare.py --data=hf:wikimedia/wikipedia:20231101.en --out_dir=data/wiki_l128 \
#       --encoder=bert-base-uncased --max_len=128 --val_size=50000 --num_proc=32    # the autoencoder's rows
#   torchrun --standalone --nproc_per_node=8 train_diff.py config/long_wiki_n16.py
#   # held-out articles: the first 2 chunks as the prompt, 6 blocks continued, the rest as the reference, 3 seeds;
#   # the same prompts with the prefix dropped (w = 0), and independent windows of a single-window model on the
#   # same autoencoder (config/diff_roc_n16.py's), then one table (GPT-2-large for MAUVE features and ppl@k)
#   python sample.py --ckpt=out/long_wiki_n16/ckpt.pt --prompts=data/wiki_l128 --prompt_blocks=2 --n_blocks=6 \
#       --num_samples=1000 --num_seeds=3 --out=out/long_wiki_n16/cont.jsonl       # + --guidance=0: cont_w0.jsonl
#   python sample.py --ckpt=out/diff_roc_n16/ckpt.pt --prompts=data/wiki_l128 --prompt_blocks=2 --n_blocks=6 \
#       --num_samples=1000 --num_seeds=3 --out=out/long_wiki_n16/windows.jsonl
#   python evaluate.py --mode=long --samples=out/long_wiki_n16/cont.jsonl,no-prefix=out/long_wiki_n16/cont_w0.jsonl,\
#       windows=out/long_wiki_n16/windows.jsonl --mauve_features=lm --mauve_model=gpt2-large --ppl_model=gpt2-large
# The same prepared rows as the autoencoder's data (articles chunked at sentence boundaries, rows of an
# article consecutive); a block is a row. The latent cache of all of Wikipedia (~45M rows x 16 x 768 fp16,
# ~1.1 TB) will not fit most disks: hence cache_latents = False, each batch encoded on the fly (about doubles
# the FLOPs of a step); prepare a smaller source to cache it. Nothing here has been run or timed.
# FLOPs (flops.block_train_flops / block_step_flops, which tests/test_bench.py checks against torch.utils.flop_counter;
# matrix products and attention, training as 3x forward + the self-conditioning pass): a training step costs
# 231.9 GFLOP per window (2 x 8 x 16 positions), so 59.4 TFLOP per step of 256 windows; one cached sampling step
# at block 7 costs 3.51 GFLOP, so a 1,024-token document (8 blocks x (200 steps + commit), w = 1) about 5.6 TFLOP,
# about twice that with guidance (w != 1). python bench.py times both on a GPU (train-blocks, sample-block).
out_dir = 'out/long_wiki_n16'
ae_ckpt = 'out/ae_wiki_n16/ckpt.pt'
task = 'blocks'
data = 'data/wiki_l128'          # the prepared folder (data/prepare.py above)
n_blocks = 8
size = 'base'                    # 12 x 768 x 12; + 8 x 768 block embeddings
# init_from = 'pretrained'; pretrained_ckpt = 'out/diff_roc_n16/ckpt.pt'   # same autoencoder: a warm start
schedule_d = 3.0                 # COSMOS's Wikipedia value
self_cond_prob = 0.5
cond_drop = 0.1                  # share of blocks that lose their prefix (guidance)
batch_size = 256                 # windows = 2,048 blocks per step
micro_batch_size = 32            # per GPU: 8 x 32, no accumulation
max_steps = 200000
lr = 2e-4
ema_decay = 0.9999
eval_interval = 5000
eval_size = 1024
cache_latents = False
sample_steps = 200
