# ParaDetox detoxification: toxic (40 tokens) -> neutral (paper Sec. 7, Table 7: schedule d = 9.0,
# 10000 steps, batch 1024, AdamW 2e-4, EMA 0.9999). Pairs are prepared into rows that are not chunked.
# The target length is the autoencoder's max_len; the source is cut at src_max_len (both counted).
# start from an unconditional model trained on the same autoencoder, as the paper does:
# init_from = 'pretrained'; pretrained_ckpt = 'out/diff_.../ckpt.pt'
# Pairs: python data/prepare_pairs.py paradetox   (needs the network), then, with the autoencoder's tokenizer and L:
#   python data/prepare.py --data=data/paradetox/train.jsonl --val_data=data/paradetox/validation.jsonl --pairs=True \
#       --src_max_len=40 --max_len=128 --encoder=bert-base-uncased --out_dir=data/paradetox_l128
out_dir = 'out/cond_paradetox'
task = 'conditional'
ae_ckpt = 'out/ae_wiki_n128/ckpt.pt'
data = 'data/paradetox_l128'
src_max_len = 40
cond_layers = 12
cond_drop = 0.1
size = 'base'
schedule_d = 9.0
batch_size = 1024
micro_batch_size = 128
max_steps = 10000
ema_decay = 0.9999
eval_interval = 5000
